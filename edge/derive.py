"""Deriving records from one device's tag values (pure; no I/O, no clock reads).

``DeviceDeriver.derive`` computes the records of one poll and the device's next state
*without* changing anything; the poller calls ``apply`` only after the buffer committed
the cycle. So a failed commit (full disk) leaves the deriver where it was, and the same
readings retried later produce the same records: nothing lost, nothing twice.

Persistent state (counter baselines, the last state code, active alarm code, active limit
flags) is kept as integers under ``(device, key)`` in the buffer's baselines table, in
the same transaction as the records. After a restart the first read therefore continues
from the stored baseline; a counter never seen before records nothing until it has a
baseline to prove a movement from.

Counter rules (ARCHITECTURE.md): wrap-around at the type's maximum is a rollover; any
other decrease is a reset (PLC reboot, operator reset) and the delta is the new raw value.
A decrease is taken for a rollover (delta = max - before + after + 1) only when both hold:

- the device stayed reachable between the two reads. A decrease across a link
  offline -> online transition is a reset: a reboot nearly always takes the PLC off the
  network for longer than a poll, and a counter at 50000 that reboots and reads 3 must
  not become 15,539 phantom parts;
- the wrapped movement is plausible between two reads: at most a quarter of the type's
  range (16,384 for a uint16). A larger "rollover" (40000 -> 100) is a reset.

A reboot the gateway never saw (faster than one poll period, or while the gateway itself
was down) that leaves the counter within a quarter of the range past the old value cannot
be told from a wrap and counts as one. Either way the record carries ``raw_before`` (the
previous ``raw_after``) and ``raw_after``, so the cloud's continuity check holds, and
``reset`` says which rule applied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from buffer.records import INT64_MAX, Record
from protocols import TagReading

Scalar = bool | int | float | str


@dataclass(frozen=True, slots=True)
class TagRule:
    """What derivation needs to know about one tag (compiled from the register map)."""

    name: str
    role: str                                   # counter | state | alarm | parameter | sample
    counts: str | None = None                   # counter: good | scrap | total
    max_raw: int | None = None                  # counter: the type's maximum (rollover point)
    states: Mapping[int, str] | None = None     # state: code -> name
    alarms: Mapping[int, str] | None = None     # alarm: code -> text
    limits: tuple[float, float] | None = None   # parameter: lo, hi
    deadband: float = 0.0                        # parameter/sample: change that counts


def _key(role: str, tag: str) -> str:
    """Baseline key: counters use the bare tag name (the buffer contract), the other
    persisted flags a role prefix."""
    return tag if role == "counter" else f"{role}:{tag}"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Everything the deriver remembers about one device between polls."""

    persisted: Mapping[str, int] = field(default_factory=dict)   # baselines table rows
    sent_values: Mapping[str, Scalar] = field(default_factory=dict)  # last values sampled
    last_sample_mono: float | None = None
    online: bool | None = None
    # Counters not read since the device was last unreachable: a decrease is a reset.
    unwatched: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Derived:
    """The outcome of one poll of one device: records to store, baseline rows to write
    with them, and the state to adopt once they are stored."""

    records: tuple[Record, ...]
    baselines: Mapping[tuple[str, str], int]
    next_state: DeviceState


class DeviceDeriver:
    """Turns successive readings of one device into records."""

    def __init__(self, device: str, rules: Iterable[TagRule], *,
                 persisted: Mapping[str, int] | None = None,
                 heartbeat_s: float = 300.0) -> None:
        self.device = device
        self.rules = {r.name: r for r in rules}
        self.heartbeat_s = heartbeat_s
        known = {_key(r.role, r.name) for r in self.rules.values()}
        # Rows of tags no longer in the map are dropped: a renamed counter starts afresh.
        self.state = DeviceState(persisted={k: v for k, v in (persisted or {}).items()
                                            if k in known})

    def apply(self, derived: Derived) -> None:
        """Adopt the state of a derivation whose records the buffer has stored."""
        self.state = derived.next_state

    # -- one poll ------------------------------------------------------------------------

    def derive(self, readings: Iterable[TagReading], *, ts: int, mono: float) -> Derived:
        """Records for one successful poll. ``ts`` is the cycle's wall clock (epoch ms),
        ``mono`` the monotonic clock in seconds (heartbeats must not follow clock jumps).
        Tags whose reading has an error derive nothing and keep their state."""
        st = self.state
        persisted = dict(st.persisted)
        records: list[Record] = []
        changed: dict[tuple[str, str], int] = {}
        values: dict[str, Scalar] = {}
        read_counters: set[str] = set()

        if st.online is not True:
            records.append(self._record(ts, "link", {"online": True, "error": None}))

        for reading in readings:
            rule = self.rules.get(reading.name)
            if rule is None or not reading.good or reading.value is None:
                continue
            value = reading.value
            if rule.role == "counter":
                self._counter(rule, value, ts, persisted, changed, records,
                              watched=rule.name not in st.unwatched)
                read_counters.add(rule.name)
            elif rule.role == "state":
                self._state(rule, value, ts, persisted, changed, records)
            elif rule.role == "alarm":
                self._alarm(rule, value, ts, persisted, changed, records)
            else:  # parameter, sample
                values[rule.name] = value
                if rule.limits is not None and isinstance(value, int | float) \
                        and not isinstance(value, bool):
                    self._limit(rule, float(value), ts, persisted, changed, records)

        sent = dict(st.sent_values)
        last_sample = st.last_sample_mono
        if values:
            heartbeat = last_sample is None or mono - last_sample >= self.heartbeat_s
            moved = {k: v for k, v in values.items() if self._moved(k, v, sent.get(k))}
            if heartbeat or moved:
                body_values = dict(values) if heartbeat else moved
                records.append(self._record(ts, "sample", {"values": body_values}))
                sent.update(body_values)
                if heartbeat:
                    last_sample = mono

        next_state = replace(st, persisted=persisted, sent_values=sent,
                             last_sample_mono=last_sample, online=True,
                             unwatched=st.unwatched - read_counters)
        return Derived(tuple(records), changed, next_state)

    def offline(self, error: str, *, ts: int) -> Derived:
        """The poll failed (timeout, refused, garbage): a ``link`` record on the transition."""
        st = self.state
        records: tuple[Record, ...] = ()
        if st.online is not False:
            records = (self._record(ts, "link", {"online": False, "error": error}),)
        counters = frozenset(r.name for r in self.rules.values() if r.role == "counter")
        return Derived(records, {}, replace(st, online=False, unwatched=counters))

    # -- per role ------------------------------------------------------------------------

    def _counter(self, rule: TagRule, value: Scalar, ts: int, persisted: dict[str, int],
                 changed: dict[tuple[str, str], int], records: list[Record], *,
                 watched: bool) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return  # validation refuses non-unsigned counters; a scaled value is not a count
        key = _key("counter", rule.name)
        before = persisted.get(key)
        persisted[key] = value
        if before is None:
            changed[(self.device, key)] = value  # first sight: a baseline, no count
            return
        if value == before:
            return
        changed[(self.device, key)] = value
        delta, reset = counter_delta(before, value, rule.max_raw, watched=watched)
        if delta > INT64_MAX:
            # Only a uint64 counter can jump this far, and no machine makes 9.2e18 parts:
            # the PLC answered garbage. Record it as a reset of zero pieces, so continuity
            # (raw_before -> raw_after) holds and the next movement counts from here, rather
            # than a delta the cloud cannot store (the record would refuse the whole cycle).
            delta, reset = 0, True
        records.append(self._record(ts, "count", {
            "tag": rule.name, "counts": rule.counts or "total", "delta": delta,
            "raw_before": before, "raw_after": value, "reset": reset}))

    def _state(self, rule: TagRule, value: Scalar, ts: int, persisted: dict[str, int],
               changed: dict[tuple[str, str], int], records: list[Record]) -> None:
        code = _as_code(value)
        if code is None:
            return
        key = _key("state", rule.name)
        before = persisted.get(key)
        if before == code:
            return
        persisted[key] = code
        changed[(self.device, key)] = code
        table = rule.states or {}
        records.append(self._record(ts, "state", {
            "state": _state_name(table, code),
            "prev": None if before is None else _state_name(table, before),
            "code": code}))

    def _alarm(self, rule: TagRule, value: Scalar, ts: int, persisted: dict[str, int],
               changed: dict[tuple[str, str], int], records: list[Record]) -> None:
        code = _as_code(value)
        if code is None:
            return
        key = _key("alarm", rule.name)
        before = persisted.get(key, 0)
        if before == code:
            if key not in persisted:
                persisted[key] = code
                changed[(self.device, key)] = code
            return
        persisted[key] = code
        changed[(self.device, key)] = code
        table = rule.alarms or {}
        if before:
            records.append(self._record(ts, "alarm", {
                "code": before, "text": _alarm_text(table, before), "active": False}))
        if code:
            records.append(self._record(ts, "alarm", {
                "code": code, "text": _alarm_text(table, code), "active": True}))

    def _limit(self, rule: TagRule, value: float, ts: int, persisted: dict[str, int],
               changed: dict[tuple[str, str], int], records: list[Record]) -> None:
        assert rule.limits is not None
        lo, hi = rule.limits
        key = _key("limit", rule.name)
        active = bool(persisted.get(key, 0))
        if not math.isfinite(value):
            outside, inside = True, False
        else:
            outside = value < lo or value > hi
            # Hysteresis: re-entering needs the deadband's margin, so a value sitting on
            # the limit does not flap between breach and clear every poll.
            inside = lo + rule.deadband <= value <= hi - rule.deadband
        if not active and outside:
            new = True
        elif active and inside:
            new = False
        else:
            return
        persisted[key] = int(new)
        changed[(self.device, key)] = int(new)
        records.append(self._record(ts, "limit", {
            "tag": rule.name, "value": value, "lo": lo, "hi": hi, "active": new}))

    def _moved(self, tag: str, value: Scalar, before: Scalar | None) -> bool:
        if before is None:
            return True
        rule = self.rules[tag]
        if isinstance(value, bool) or isinstance(before, bool) \
                or not isinstance(value, int | float) or not isinstance(before, int | float):
            return value != before
        if not (math.isfinite(value) and math.isfinite(before)):
            return value != before
        return abs(value - before) > rule.deadband if rule.deadband > 0 else value != before

    def _record(self, ts: int, kind: str, body: dict[str, Any]) -> Record:
        return Record(seq=0, ts=ts, device=self.device, kind=kind, body=body)


def counter_delta(before: int, after: int, max_raw: int | None, *,
                  watched: bool = True) -> tuple[int, bool]:
    """``(delta, reset)`` for a counter that moved from ``before`` to ``after``.

    Forward: the difference. Backward: a rollover (``max_raw - before + after + 1``) only
    when ``watched`` (the device answered every poll between the two reads) and that
    wrapped movement is at most a quarter of ``0..max_raw``; otherwise a reset, counted
    from zero (delta = ``after``). See the module docstring for why.
    """
    if after >= before:
        return after - before, False
    if watched and max_raw is not None:
        wrapped = max_raw - before + after + 1
        if wrapped <= (max_raw + 1) // 4:
            return wrapped, False
    return after, True


def _as_code(value: Scalar) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _state_name(table: Mapping[int, str], code: int) -> str:
    return table.get(code, f"unknown({code})")


def _alarm_text(table: Mapping[int, str], code: int) -> str:
    return table.get(code, f"unknown alarm {code}")
