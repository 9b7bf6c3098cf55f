"""Machine models: deterministic with a seed, counters advance, states and alarms come
and go, faults act on counter registers but never on the true totals."""

from __future__ import annotations

import pytest

from protocols.driver import Endpoint
from protocols.sim import Fault, SimulatedPlant, demo_points, make_machine


def _history(seed: int, kind: str = "cnc") -> list[tuple[str, int, int, float]]:
    m = make_machine(kind, "m1", demo_points(kind, "modbus-tcp"), seed=seed)
    temp = next(p for p in m.points if p.role == "parameter")
    out = []
    for _ in range(240):
        m.step(30)
        out.append((m.state, m.good, m.scrap, float(m.value_of(temp))))
    return out


def test_same_seed_same_history() -> None:
    assert _history(5) == _history(5)
    assert _history(5) != _history(6)


@pytest.mark.parametrize("kind", ["cnc", "imm"])
def test_counters_advance_at_a_realistic_rate(kind: str) -> None:
    m = make_machine(kind, "m1", demo_points(kind, "modbus-tcp"), seed=1)
    m.step(8 * 3600)
    # cycles of 15..40 s with interruptions: hundreds of parts a shift, some scrap
    assert 300 < m.total < 8 * 3600 / 15
    assert m.good > m.scrap


def test_states_and_alarms_come_and_go() -> None:
    m = make_machine("cnc", "m1", demo_points("cnc", "modbus-tcp"), seed=2)
    alarm = next(p for p in m.points if p.role == "alarm")
    seen_states, seen_alarms = set(), set()
    for _ in range(24 * 360):
        m.step(10)
        seen_states.add(m.state)
        seen_alarms.add(m.value_of(alarm))
    assert {"idle", "running", "alarm", "setup"} <= seen_states
    assert 0 in seen_alarms and len(seen_alarms - {0}) >= 2
    assert seen_alarms - {0} <= set(alarm.alarms or {})


@pytest.mark.parametrize("kind", ["cnc", "imm"])
def test_setups_change_the_program_and_make_no_parts(kind: str) -> None:
    m = make_machine(kind, "m1", demo_points(kind, "modbus-tcp"), seed=3)
    setups = 0
    for _ in range(48 * 360):
        before = (m.state, m.program, m.good, m.scrap)
        m.step(10)
        if m.state == "setup" and before[0] != "setup":
            setups += 1
            assert m.program != before[1]           # a setup is a changeover
        elif m.state == "setup":
            assert (m.program, m.good, m.scrap) == before[1:]   # nothing made meanwhile
    assert setups >= 2


def test_parameters_drift_and_sometimes_leave_limits() -> None:
    m = make_machine("imm", "m1", demo_points("imm", "modbus-tcp"), seed=4)
    zone = next(p for p in m.points if p.name == "zone1_temp")
    assert zone.limits is not None
    lo, hi = zone.limits
    values = []
    for _ in range(48 * 360):
        m.step(10)
        if m.state == "running":
            values.append(float(m.value_of(zone)))
    inside = [v for v in values if lo <= v <= hi]
    assert len(inside) > 0.5 * len(values)
    assert len(inside) < len(values)
    assert len({round(v, 3) for v in values}) > 100


def test_state_codes_follow_the_map_table() -> None:
    m = make_machine("cnc", "m1", demo_points("cnc", "modbus-tcp"), seed=1)
    state = next(p for p in m.points if p.role == "state")
    m.step(600)
    assert state.states is not None
    assert state.states[int(m.value_of(state))] == m.state


def test_faults_move_registers_not_totals() -> None:
    plant = SimulatedPlant(seed=9)
    plant.add("cnc", "cnc", demo_points("cnc", "modbus-tcp"),
              Endpoint("modbus-tcp", "cnc", port=1, unit=1))
    plant.step(3600)
    before = plant.state()["cnc"]
    assert before["counters"]["part_count"] == before["good"] > 0
    plant.inject("cnc", "reset")
    assert plant.state()["cnc"]["counters"]["part_count"] == 0
    plant.step(3600)
    after = plant.state()["cnc"]
    assert after["good"] > before["good"]
    assert after["counters"]["part_count"] == after["good"] - before["good"]
    plant.inject("cnc", Fault("wrap", tag="part_count", margin=0))
    assert plant.state()["cnc"]["counters"]["part_count"] == 2**32 - 1
    plant.step(3600)
    wrapped = plant.state()["cnc"]
    assert wrapped["counters"]["part_count"] == wrapped["good"] - after["good"] - 1


def test_control_commands() -> None:
    plant = SimulatedPlant(seed=9)
    plant.add("imm", "imm", demo_points("imm", "s7"), Endpoint("s7", "imm", port=1))
    assert plant.handle_command(b'{"cmd": "step", "seconds": 600}')["ok"]
    answer = plant.handle_command('{"cmd": "fault", "device": "imm", "fault": "reset"}')
    assert answer["ok"] and answer["fault"]["kind"] == "reset"
    state = plant.handle_command({"cmd": "state"})
    assert state["devices"]["imm"]["counters"]["good_parts"] == 0
    assert not plant.handle_command({"cmd": "fault", "device": "nope", "fault": "reset"})["ok"]
    assert not plant.handle_command({"cmd": "fault", "device": "imm", "fault": "melt"})["ok"]
    assert not plant.handle_command(b"not json")["ok"]
