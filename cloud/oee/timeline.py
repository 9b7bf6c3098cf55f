"""The timeline of one machine: what it was doing from moment to moment, cut into
segments and stops, read from its ``state`` and ``link`` events (cloud/oee/events.py)
with the ``oee`` settings (``OeeSettings``, as the timeline uses them ``StopRules``).
Reports (cloud/oee/report.py), a machine's stops (cloud/oee/machine_stops.py), the board
(cloud/oee/board.py) and run-hour counters (cloud/oee/maintenance.py) are all computed
from it, at query time.

- The machine's **status** at any moment: ``offline`` while its last link record says
  offline, else its last device state (``unknown`` before any). Only the status whose
  category is ``running`` (see ``category``) is running.
- A **stop** is a maximal stretch of not running (its states may change inside it, e.g.
  idle then alarm; it is keyed by the ts it began, which is where a reason is stored).
  A stop shorter than ``micro_stop_s`` (setting, default 120 s) is a **micro-stop**; the
  rest are **downtime**. The length that decides is the stop's whole length on the
  timeline, not only its part inside planned time (or inside a report's window). A stop
  with a state in the categories down or setup (``ALWAYS_DOWNTIME``: the machine itself
  said it was in alarm or being set up) is downtime however short.
- A stop's **cause**: the text (else ``alarm <code>``) of the first active ``alarm``
  record of the device from ``ALARM_LEAD_MS`` before the stop began to its end (None:
  no alarm). Reports name downtime in a ``down`` state by the assigned reason, else this
  cause, else the state.
- Before a machine was first heard from (``first_seen``: its first state or link
  record) there is no data, which is not downtime and not a stop: the timeline begins
  at the first event it knows of.

Device states map to the board's categories (``current_states``, ``stops``): running
(running, run, producing, production, in_cycle, cycle); idle (idle, waiting, wait,
ready, standby, stopped, stop, paused, hold, feed_hold, and any state not listed);
setup (setup, changeover, tool_change, adjusting, mold change / mold_change, as the map
library's molding machines say); down (alarm, fault, error, down, off,
emergency, estop, e_stop, breakdown, maintenance); offline (link offline, or never heard
from). The setting ``oee.state_map`` ({"auto": "running"}) adds to or overrides this.

Errors: ``NotFound`` (an unknown machine, ``field`` machine_id), ``Invalid`` (a query
window that is empty or too long, ``field`` end), from cloud/core/errors.py.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import settings
from cloud.core.errors import Invalid, NotFound
from cloud.core.models import machine_events, machines, records, stop_reasons
from cloud.oee.events import Event, events

SETTINGS_KEY: Final = "oee"

CATEGORIES: Final = ("running", "idle", "setup", "down", "offline")
Category = Literal["running", "idle", "setup", "down", "offline"]
#: A stop with a state in these categories is downtime however short: the machine said
#: it was in alarm or being set up (``oee.state_map`` can move a state out of them).
ALWAYS_DOWNTIME: Final = frozenset(("down", "setup"))
#: The longest window a report or a stop list covers.
MAX_WINDOW_MS: Final = 400 * 86_400_000

DEFAULT_STATE_MAP: Final[dict[str, str]] = {
    **dict.fromkeys(("running", "run", "producing", "production", "in_cycle", "cycle"),
                    "running"),
    **dict.fromkeys(("idle", "waiting", "wait", "ready", "standby", "stopped", "stop",
                     "paused", "hold", "feed_hold"), "idle"),
    **dict.fromkeys(("setup", "changeover", "tool_change", "adjusting", "mold change",
                     "mold_change", "mould change", "mould_change"), "setup"),
    **dict.fromkeys(("alarm", "fault", "error", "down", "off", "emergency", "estop",
                     "e_stop", "breakdown", "maintenance"), "down"),
    "offline": "offline",
}


def category(status: str, state_map: dict[str, str] | None = None) -> str:
    """The board category of a timeline status (a device state, ``offline``, ``unknown``)."""
    key = status.lower()
    if state_map and key in state_map:
        return state_map[key]
    if key == "unknown":
        return "idle"
    return DEFAULT_STATE_MAP.get(key, "idle")


# -- settings -----------------------------------------------------------------------------

class OeeSettings(settings.SettingsModel):
    """How stops count (``/api/v1/settings/oee``)."""

    micro_stop_s: float = Field(120, ge=0, description="a stop shorter than this is a "
                                "micro-stop (speed loss), not downtime")
    state_map: dict[str, Category] = Field(
        default_factory=dict, description="a device state -> the category it counts as "
        "(e.g. {\"setup\": \"running\"})")


settings.register(SETTINGS_KEY, OeeSettings)


@dataclass(frozen=True, slots=True)
class StopRules:
    """The ``oee`` settings as the timeline uses them."""

    micro_stop_ms: int
    state_map: dict[str, str]
    #: a stop with a state in these categories is downtime however short
    always_downtime: frozenset[str] = ALWAYS_DOWNTIME


async def load_settings(session: AsyncSession) -> StopRules:
    """The ``oee`` settings in effect, as ``StopRules``."""
    doc = await settings.get(session, SETTINGS_KEY)
    state_map = {str(k).lower(): str(v) for k, v in (doc.get("state_map") or {}).items()
                 if v in CATEGORIES}
    return StopRules(int(float(doc["micro_stop_s"]) * 1000), state_map)


# -- machines and windows -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MachineRef:
    """A machine and the key of its timeline (``gateway_id``, ``device``)."""

    id: int
    name: str
    gateway_id: str
    device: str


_MACHINE_COLUMNS = (machines.c.id, machines.c.name, machines.c.gateway_id, machines.c.device)


async def machine_row(session: AsyncSession, machine_id: int) -> MachineRef:
    """A machine's id, name, gateway_id and device; NotFound when there is no such
    machine."""
    row = (await session.execute(select(*_MACHINE_COLUMNS)
                                 .where(machines.c.id == machine_id))).first()
    if row is None:
        raise NotFound(f"machine {machine_id} unknown", "machine_id")
    return MachineRef(*row)


async def machine_rows(session: AsyncSession,
                       machine_ids: Iterable[int] | None) -> list[MachineRef]:
    """The machines ``machine_ids`` (None: every machine), by id; NotFound names the
    first unknown id."""
    stmt = select(*_MACHINE_COLUMNS).order_by(machines.c.id)
    ids = None if machine_ids is None else sorted(set(machine_ids))
    if ids is not None:
        stmt = stmt.where(machines.c.id.in_(ids))
    rows = [MachineRef(*r) for r in (await session.execute(stmt)).all()]
    if ids is not None and len(rows) != len(ids):
        missing = sorted(set(ids) - {r.id for r in rows})
        raise NotFound(f"machine {missing[0]} unknown", "machine_id")
    return rows


def check_window(start_ms: int, end_ms: int) -> None:
    """Invalid (``end``) unless [start_ms, end_ms) is non-empty and at most
    ``MAX_WINDOW_MS`` long."""
    if end_ms <= start_ms:
        raise Invalid("end: must be after start", "end")
    if end_ms - start_ms > MAX_WINDOW_MS:
        raise Invalid(f"end: a report covers at most {MAX_WINDOW_MS // 86_400_000} days",
                      "end")


async def first_seen(session: AsyncSession, gateway_id: str, device: str) -> int | None:
    """The ts of a device's first state or link record (None: never heard from)."""
    ev = machine_events.c
    found = (await session.execute(select(func.min(ev.ts)).where(
        ev.gateway_id == gateway_id, ev.device == device))).scalar()
    return None if found is None else int(found)


# -- the timeline of one machine ----------------------------------------------------------

@dataclass(slots=True)
class Segment:
    start: int
    end: int
    status: str           # device state, "offline" or "unknown"
    running: bool
    stop: int = -1        # index into Timeline.stops, -1 while running


@dataclass(slots=True)
class Stop:
    start: int
    end: int              # end of what the timeline saw
    ended: bool           # False: still stopped at the end of the timeline
    state: str            # the status it began with
    micro: bool = False
    reason: str | None = None
    note: str | None = None
    cause: str | None = None  # the alarm that stopped it (module docstring)
    segments: list[Segment] = field(default_factory=list)

    @property
    def duration(self) -> int:
        return self.end - self.start


@dataclass(slots=True)
class Timeline:
    segments: list[Segment]
    stops: list[Stop]


async def machine_timeline(session: AsyncSession, machine_id: int, gateway_id: str,
                            device: str, lo: int, hi: int, cfg: StopRules, *,
                            finish_last_stop: bool = False) -> Timeline:
    """Segments and stops of a machine covering at least [lo, hi). Reads back to the last
    ``running`` state before ``lo`` so a stop in progress at ``lo`` has its true start
    (that is where its reason is keyed); with ``finish_last_stop`` keeps reading after
    ``hi`` until a stop open there ends (or the data does)."""
    ev = machine_events.c
    last_run = (await session.execute(
        select(func.max(ev.ts)).where(ev.gateway_id == gateway_id, ev.device == device,
                                      ev.kind == "state", ev.ts < lo,
                                      ev.state.in_(_running_names(cfg))))).scalar()
    begin = int(last_run) if last_run is not None else lo
    evs = await events(session, gateway_id, device, begin, hi)
    end = hi
    if finish_last_stop:
        while True:
            tl = _build(evs, begin, end, cfg)
            if not tl.stops or tl.stops[-1].ended:
                break
            more = await _events_after(session, gateway_id, device, end, 500)
            if not more:
                break
            evs.extend(more)
            end = more[-1].ts + 1
    timeline = _build(evs, begin, end, cfg)
    if timeline.stops:
        # a reason belongs to the stop that contains its start_ts: a late record that
        # shows a stop began earlier (or joins two stops) keeps the reason on it
        starts = [s.start for s in timeline.stops]
        sr = stop_reasons.c
        for ts, reason, note in (await session.execute(
                select(sr.start_ts, sr.reason, sr.note)
                .where(sr.machine_id == machine_id, sr.start_ts >= starts[0],
                       sr.start_ts < timeline.stops[-1].end)
                .order_by(sr.start_ts))).tuples():
            idx = bisect.bisect_right(starts, ts) - 1
            stop = timeline.stops[idx] if idx >= 0 else None
            if stop is not None and ts < stop.end and stop.reason is None:
                stop.reason, stop.note = reason, note
        await _alarm_causes(session, gateway_id, device, timeline.stops)
    return timeline


#: An alarm record up to this long before a stop began is its cause (the alarm tag and
#: the state tag are polled apart, so either may come first).
ALARM_LEAD_MS: Final = 10_000


async def _alarm_causes(session: AsyncSession, gateway_id: str, device: str,
                        stops: list[Stop]) -> None:
    """Set each stop's ``cause`` from the device's active alarm records (one query)."""
    r = records.c
    lo, hi = stops[0].start - ALARM_LEAD_MS, stops[-1].end
    alarms = sorted(((int(ts), body) for ts, body in (await session.execute(
        select(r.ts, r.body).where(r.gateway_id == gateway_id, r.device == device,
                                   r.kind == "alarm", r.ts >= lo, r.ts < hi))).tuples()
                     if isinstance(body, dict) and body.get("active")),
                    key=lambda a: a[0])
    if not alarms:
        return
    times = [ts for ts, _ in alarms]
    for stop in stops:
        i = bisect.bisect_left(times, stop.start - ALARM_LEAD_MS)
        if i < len(alarms) and alarms[i][0] < max(stop.end, stop.start + 1):
            body = alarms[i][1]
            text = body.get("text")
            stop.cause = (str(text) if text else f"alarm {body.get('code')}")[:128]


def _running_names(cfg: StopRules) -> list[str]:
    names = {k for k, v in DEFAULT_STATE_MAP.items() if v == "running"}
    names -= {k for k, v in cfg.state_map.items() if v != "running"}
    names |= {k for k, v in cfg.state_map.items() if v == "running"}
    return sorted(names | {n.upper() for n in names} | {n.capitalize() for n in names})


async def _events_after(session: AsyncSession, gateway_id: str, device: str, after: int,
                        limit: int) -> list[Event]:
    ev = machine_events.c
    rows = (await session.execute(
        select(ev.ts, ev.kind, ev.state, ev.code, ev.online, ev.error, ev.seq)
        .where(ev.gateway_id == gateway_id, ev.device == device, ev.ts >= after)
        .order_by(ev.ts, ev.seq).limit(limit))).all()
    return [Event(*r) for r in rows]


def _build(evs: Sequence[Event], begin: int, end: int, cfg: StopRules) -> Timeline:
    """Segments from ``min(begin, first event)`` to ``end`` and the stops among them."""
    state: str | None = None
    online: bool | None = None
    # before the first event there is no data: not a stop (nor anything else)
    t = evs[0].ts if evs else end
    raw: list[Segment] = []

    running: dict[str, bool] = {}

    def status() -> str:
        if online is False:
            return "offline"
        return state if state is not None else "unknown"

    def is_running(s: str) -> bool:
        found = running.get(s)
        if found is None:
            found = running[s] = category(s, cfg.state_map) == "running"
        return found

    for e in evs:
        if e.ts >= end:
            break
        if e.ts > t:
            s = status()
            raw.append(Segment(t, e.ts, s, is_running(s)))
            t = e.ts
        if e.kind == "state":
            state = e.state
        else:
            online = e.online
    if end > t:
        s = status()
        raw.append(Segment(t, end, s, is_running(s)))
    segments: list[Segment] = []
    for seg in raw:
        if segments and segments[-1].status == seg.status and segments[-1].end == seg.start:
            segments[-1].end = seg.end
        else:
            segments.append(seg)
    stops: list[Stop] = []
    for seg in segments:
        if seg.running:
            continue
        if stops and stops[-1].end == seg.start:
            cur = stops[-1]
            cur.end = seg.end
        else:
            cur = Stop(seg.start, seg.end, True, seg.status)
            stops.append(cur)
        cur.segments.append(seg)
        seg.stop = len(stops) - 1
    if stops and stops[-1].end >= end:
        stops[-1].ended = False
    for st in stops:
        st.micro = st.duration < cfg.micro_stop_ms and not any(
            category(seg.status, cfg.state_map) in cfg.always_downtime
            for seg in st.segments)
    return Timeline(segments, stops)
