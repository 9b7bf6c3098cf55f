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


def test_a_garbage_uint64_jump_is_a_zero_reset_the_cloud_can_store() -> None:
    """A uint64 counter read as 2^63 + 20 after 10: no delta the record could carry (and
    no machine makes that many parts). A reset of zero keeps continuity; the record is
    valid, and the next movement counts from the new value."""
    from buffer.records import validate_record

    d = DeviceDeriver("cnc-1", [counter(2**64 - 1)], persisted={"parts": 10})
    out = poll(d, 1000, 0.0, parts=2**63 + 20)
    [rec] = [x for x in out.records if x.kind == "count"]
    assert (rec.body["delta"], rec.body["reset"], rec.body["raw_before"],
            rec.body["raw_after"]) == (0, True, 10, 2**63 + 20)
    validate_record({"seq": 1, "ts": rec.ts, "device": rec.device, "kind": rec.kind,
                     "body": rec.body})
    nxt = poll(d, 2000, 1.0, parts=2**63 + 23)
    [rec] = [x for x in nxt.records if x.kind == "count"]
    assert (rec.body["delta"], rec.body["reset"]) == (3, False)


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
    assert counter_delta(40000, 100, U16) == (100, True)   # wrap of 25,636 > range/4: reset
    assert counter_delta(60000, 30000, U16) == (30000, True)  # wrap of 35,536: reset
    assert counter_delta(U16 - 16383, 0, U16) == (16384, False)  # exactly range/4: a wrap
    assert counter_delta(U16 - 16383, 1, U16) == (1, True)       # one more: a reset
    assert counter_delta(10, 5, None) == (5, True)
    # Not watched (the device was unreachable in between): every decrease is a reset.
    assert counter_delta(U16, 0, U16, watched=False) == (0, True)
    assert counter_delta(60000, 3, U16, watched=False) == (3, True)
    assert counter_delta(10, 15, U16, watched=False) == (5, False)   # forward is forward


def _count_bodies(out) -> list[dict]:
    return [x.body for x in out.records if x.kind == "count"]


def test_reboot_in_top_quarter_across_offline_period_is_a_reset() -> None:
    """Issue: a uint16 counter high in its range whose PLC reboots and reads a small value
    must not count tens of thousands of phantom parts. The reboot took the PLC off the
    network (a failed poll, link offline), so the decrease is a reset: delta = new raw."""
    for before in (50000, 60000, U16 - 2):
        d = DeviceDeriver("cnc-1", [counter(U16)], persisted={"parts": before - 5})
        poll(d, 1, 0.0, parts=before)                       # online, watched
        d.apply(d.offline("connection refused", ts=2))      # rebooting
        out = poll(d, 3, 2.0, parts=3)                      # back, counter zeroed + 3
        assert kinds(out) == ["link", "count"]
        assert _count_bodies(out) == [{"tag": "parts", "counts": "good", "delta": 3,
                                       "raw_before": before, "raw_after": 3, "reset": True}]
        # The next poll is watched again: a forward move is plain production.
        assert _count_bodies(poll(d, 4, 3.0, parts=5)) == [
            {"tag": "parts", "counts": "good", "delta": 2, "raw_before": 3, "raw_after": 5,
             "reset": False}]


def test_genuine_wrap_while_watched_is_a_rollover() -> None:
    d = DeviceDeriver("cnc-1", [counter(U16)], persisted={"parts": U16 - 10})
    poll(d, 1, 0.0, parts=U16 - 2)
    out = poll(d, 2, 1.0, parts=4)
    assert _count_bodies(out) == [{"tag": "parts", "counts": "good", "delta": 7,
                                   "raw_before": U16 - 2, "raw_after": 4, "reset": False}]


def test_counter_unreadable_after_reconnect_stays_unwatched() -> None:
    """The device came back but the counter's read failed: its next good read still
    follows an unobserved stretch, so a decrease is still a reset."""
    d = DeviceDeriver("cnc-1", [counter(U16)], persisted={"parts": 60000})
    poll(d, 1, 0.0, parts=60000)
    d.apply(d.offline("timeout after 1000 ms", ts=2))
    d.apply(d.derive([TagReading("parts", b"", None, DriverTimeout("x"))], ts=3, mono=2.0))
    out = poll(d, 4, 3.0, parts=3)
    assert [(b["delta"], b["reset"]) for b in _count_bodies(out)] == [(3, True)]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=3000), st.booleans(), st.booleans()),
                min_size=1, max_size=60),
       st.integers(min_value=0, max_value=U16))
def test_continuity_and_resets_through_offline_periods(
        steps: list[tuple[int, bool, bool]], start: int) -> None:
    """Production steps, some read after an offline period and some after a reboot
    (counter zeroed, then the step made from zero) while offline: every count record
    starts where the last one ended (the cloud's continuity check), a decrease after an
    offline period is always a reset with delta = the new raw value, and a watched step
    (wraps included) counts exactly its movement."""
    d = DeviceDeriver("m", [counter(U16)], persisted={"parts": start})
    raw = last_raw = start
    for i, (step, offline, reboot) in enumerate(steps):
        before = raw
        if offline:
            d.apply(d.offline("refused", ts=i))
        raw = step if offline and reboot else (raw + step) % (U16 + 1)
        bodies = _count_bodies(poll(d, i, float(i), parts=raw))
        assert len(bodies) == (raw != before)
        for b in bodies:
            assert (b["raw_before"], b["raw_after"]) == (last_raw, raw)
            if raw < before:
                expected = (raw, True) if offline else (step, False)
            else:
                expected = (raw - before, False)
            assert (b["delta"], b["reset"]) == expected
            last_raw = raw


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
