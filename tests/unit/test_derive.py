"""Deriving records from tag values: counters (rollover, reset, first read), state, alarm,
limit with hysteresis, sample with deadband and heartbeat, link; and the rule that
nothing changes until ``apply``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.derive import DeviceDeriver, TagRule, counter_delta
from protocols import DriverTimeout, TagReading

U16 = 0xFFFF
U32 = 0xFFFF_FFFF


def r(name: str, value: object) -> TagReading:
    return TagReading(name=name, raw=b"", value=value)  # type: ignore[arg-type]


def poll(d: DeviceDeriver, ts: int, mono: float, **values: object):
    out = d.derive([r(k, v) for k, v in values.items()], ts=ts, mono=mono)
    d.apply(out)
    return out


def kinds(out) -> list[str]:
    return [rec.kind for rec in out.records]


def counter(max_raw: int = U32, counts: str = "good") -> TagRule:
    return TagRule("parts", "counter", counts=counts, max_raw=max_raw)


def test_first_read_counts_nothing_but_stores_a_baseline() -> None:
    d = DeviceDeriver("cnc-1", [counter()])
    out = poll(d, 1000, 0.0, parts=500)
    assert kinds(out) == ["link"]
    assert out.baselines == {("cnc-1", "parts"): 500}


def test_counter_forward_and_continuity() -> None:
    d = DeviceDeriver("cnc-1", [counter()], persisted={"parts": 500})
    a = poll(d, 1000, 0.0, parts=503)
    b = poll(d, 2000, 1.0, parts=510)
    c1 = [x for x in a.records if x.kind == "count"][0].body
    c2 = [x for x in b.records if x.kind == "count"][0].body
    assert (c1["delta"], c1["raw_before"], c1["raw_after"], c1["reset"]) == (3, 500, 503, False)
    assert c2["raw_before"] == c1["raw_after"] and c2["delta"] == 7
    assert b.baselines == {("cnc-1", "parts"): 510}


def test_unchanged_counter_writes_nothing() -> None:
    d = DeviceDeriver("cnc-1", [counter()], persisted={"parts": 5})
    poll(d, 1000, 0.0, parts=5)
    out = poll(d, 2000, 1.0, parts=5)
    assert out.records == () and out.baselines == {}


def test_rollover_at_type_maximum() -> None:
    d = DeviceDeriver("cnc-1", [counter(U16)], persisted={"parts": U16 - 2})
    out = poll(d, 1000, 0.0, parts=4)
    body = [x for x in out.records if x.kind == "count"][0].body
    assert body["delta"] == 7 and body["reset"] is False


def test_reset_counts_from_zero() -> None:
    d = DeviceDeriver("cnc-1", [counter(U16)], persisted={"parts": 1000})
    out = poll(d, 1000, 0.0, parts=3)
    body = [x for x in out.records if x.kind == "count"][0].body
    assert (body["delta"], body["reset"], body["raw_before"], body["raw_after"]) == (3, True, 1000, 3)


def test_reset_to_zero_writes_a_reset_record_with_zero_delta() -> None:
    d = DeviceDeriver("cnc-1", [counter()], persisted={"parts": 1000})
    out = poll(d, 1000, 0.0, parts=0)
    body = [x for x in out.records if x.kind == "count"][0].body
    assert body["delta"] == 0 and body["reset"] is True


def test_nothing_changes_until_apply() -> None:
    """A failed buffer commit must leave the deriver where it was, so a retry of the same
    readings yields the same count (nothing lost, nothing twice)."""
    d = DeviceDeriver("cnc-1", [counter()], persisted={"parts": 10})
    first = d.derive([r("parts", 15)], ts=1, mono=0.0)  # commit failed: not applied
    again = d.derive([r("parts", 15)], ts=1, mono=0.0)
    assert first.records == again.records
    d.apply(again)
    assert d.derive([r("parts", 15)], ts=2, mono=1.0).records == ()


def test_bad_reading_keeps_state() -> None:
    d = DeviceDeriver("cnc-1", [counter()], persisted={"parts": 10})
    bad = TagReading("parts", b"", None, DriverTimeout("x"))
    out = d.derive([bad], ts=1, mono=0.0)
    assert "count" not in kinds(out)
    assert out.next_state.persisted["parts"] == 10


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=60),
       st.integers(min_value=0, max_value=U16))
def test_deltas_sum_to_true_movement_through_wraps(steps: list[int], start: int) -> None:
    """A uint16 counter advancing by steps smaller than a quarter of its range, wrapping
    as it goes: the deltas add up to exactly the true movement, and no step is a reset."""
    d = DeviceDeriver("m", [counter(U16)], persisted={"parts": start})
    raw, total = start, 0
    for i, step in enumerate(steps):
        raw = (raw + step) % (U16 + 1)
        out = poll(d, i, float(i), parts=raw)
        for rec in out.records:
            if rec.kind == "count":
                assert rec.body["reset"] is False
                total += rec.body["delta"]
    assert total == sum(steps)


def test_counter_delta_table() -> None:
    assert counter_delta(10, 15, U16) == (5, False)
    assert counter_delta(U16, 0, U16) == (1, False)
    assert counter_delta(40000, 100, U16) == (100, True)   # not in the top quarter: reset
    assert counter_delta(60000, 30000, U16) == (30000, True)  # not in the bottom quarter
    assert counter_delta(10, 5, None) == (5, True)


def test_state_changes_with_names_and_survive_restart() -> None:
    rule = TagRule("mode", "state", states={1: "idle", 2: "running"})
    d = DeviceDeriver("cnc-1", [rule])
    out = poll(d, 1, 0.0, mode=1)
    st_ = [x for x in out.records if x.kind == "state"][0].body
    assert st_ == {"state": "idle", "prev": None, "code": 1}
    assert poll(d, 2, 1.0, mode=1).records == ()
    out = poll(d, 3, 2.0, mode=7)
    assert [x.body for x in out.records if x.kind == "state"] == [
        {"state": "unknown(7)", "prev": "idle", "code": 7}]
    # After a restart with persisted state, an unchanged state writes nothing.
    d2 = DeviceDeriver("cnc-1", [rule], persisted=dict(d.state.persisted))
    assert kinds(poll(d2, 4, 0.0, mode=7)) == ["link"]


def test_alarm_raise_switch_clear() -> None:
    rule = TagRule("alarm_code", "alarm", alarms={1001: "Spindle overload", 2002: "Coolant low"})
    d = DeviceDeriver("cnc-1", [rule])
    assert kinds(poll(d, 1, 0.0, alarm_code=0)) == ["link"]
    out = poll(d, 2, 1.0, alarm_code=1001)
    assert [x.body for x in out.records] == [{"code": 1001, "text": "Spindle overload", "active": True}]
    out = poll(d, 3, 2.0, alarm_code=2002)
    assert [(x.body["code"], x.body["active"]) for x in out.records] == [(1001, False), (2002, True)]
    out = poll(d, 4, 3.0, alarm_code=0)
    assert [(x.body["code"], x.body["active"]) for x in out.records] == [(2002, False)]


def test_bool_alarm_tag() -> None:
    d = DeviceDeriver("imm", [TagRule("door", "alarm", alarms={1: "Safety gate open"})])
    poll(d, 1, 0.0, door=False)
    out = poll(d, 2, 1.0, door=True)
    assert [x.body for x in out.records] == [{"code": 1, "text": "Safety gate open", "active": True}]


def test_limit_breach_and_hysteresis() -> None:
    rule = TagRule("temp", "parameter", limits=(10.0, 65.0), deadband=0.5)
    d = DeviceDeriver("cnc-1", [rule], heartbeat_s=1e9)
    poll(d, 1, 0.0, temp=60.0)
    out = poll(d, 2, 1.0, temp=65.2)
    assert [x.body for x in out.records if x.kind == "limit"] == [
        {"tag": "temp", "value": 65.2, "lo": 10.0, "hi": 65.0, "active": True}]
    assert [x for x in poll(d, 3, 2.0, temp=64.8).records if x.kind == "limit"] == []  # within deadband
    out = poll(d, 4, 3.0, temp=64.0)
    assert [x.body["active"] for x in out.records if x.kind == "limit"] == [False]


def test_sample_deadband_and_heartbeat() -> None:
    rule = TagRule("load", "parameter", deadband=1.0)
    d = DeviceDeriver("cnc-1", [rule, TagRule("program", "sample")], heartbeat_s=60)
    out = poll(d, 1, 0.0, load=50.0, program="O1000")
    assert [x.body for x in out.records if x.kind == "sample"] == [{"values": {"load": 50.0, "program": "O1000"}}]
    assert poll(d, 2, 1.0, load=50.6, program="O1000").records == ()   # inside deadband
    out = poll(d, 3, 2.0, load=51.5, program="O1000")
    assert [x.body for x in out.records] == [{"values": {"load": 51.5}}]
    out = poll(d, 4000, 61.0, load=51.5, program="O1000")   # heartbeat: steady values still seen
    assert [(x.ts, x.body) for x in out.records] == [(4000, {"values": {"load": 51.5, "program": "O1000"}})]


def test_link_records_on_transitions_only() -> None:
    d = DeviceDeriver("cnc-1", [counter()])
    assert kinds(poll(d, 1, 0.0, parts=1)) == ["link"]
    off = d.offline("timeout after 1000 ms", ts=2)
    d.apply(off)
    assert [x.body for x in off.records] == [{"online": False, "error": "timeout after 1000 ms"}]
    again = d.offline("timeout after 1000 ms", ts=3)
    d.apply(again)
    assert again.records == ()
    back = poll(d, 4, 3.0, parts=1)
    assert [x.body for x in back.records] == [{"online": True, "error": None}]


def test_records_are_valid_wire_records() -> None:
    from buffer.records import validate_body
    d = DeviceDeriver("cnc-1", [counter(), TagRule("mode", "state", states={1: "idle"}),
                                TagRule("t", "parameter", limits=(0, 1))], persisted={"parts": 1})
    out = poll(d, 1, 0.0, parts=2, mode=1, t=5.0)
    for rec in out.records:
        validate_body(rec.kind, rec.body)
