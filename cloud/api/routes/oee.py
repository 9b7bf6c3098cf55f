"""HTTP API of OEE, stops and downtime, shift calendars and maintenance counters, under
``/api/v1``. Every answer is a response model below, so ``/openapi.json`` describes it.

Reads (every person, viewer and up):

- ``GET /oee?start=&end=&group_by=machine&machine_id=`` -> ``OeeReport`` (cloud/oee/report.py
  ``oee_report``; ``group_by`` one or more of machine, shift, day, order, product, comma-
  separated; ``machine_id`` repeatable)
- ``GET /oee/trend?start=&end=&machine_id=`` -> ``OeeTrend``: per day
- ``GET /downtime/pareto?start=&end=&machine_id=`` -> ``DowntimePareto``
- ``GET /machines/states`` -> ``MachineStates`` {now, items}: what every machine is doing
- ``GET /machines/{id}/stops?start=&end=`` -> ``MachineStops``
- ``GET /calendars`` (a page), ``GET /calendars/{id}``, ``GET /calendars/{id}/planned?start=&end=``
- ``GET /maintenance-counters?machine_id=`` (a page), ``GET /maintenance-counters/{id}``
- ``/settings/oee`` {micro_stop_s?, state_map?}: cloud/api/routes/settings.py

Actions (planners and admins; viewers and gateway tokens 403), each audited:

- ``PUT /machines/{id}/stops/{start_ts}/reason`` {reason, note?}
- ``POST /calendars`` ``CalendarIn`` {name, timezone, definition} -> 201;
  ``PUT /calendars/{id}`` (same body); ``DELETE /calendars/{id}`` -> 204 (409 while
  machines use it)
- ``PUT /machines/{id}/calendar`` {calendar_id | null (back to the default)}
- ``POST /maintenance-counters`` {machine_id, name, metric, threshold | threshold_hours,
  since_ts?} -> 201; ``PATCH /maintenance-counters/{id}`` {name?, threshold?,
  threshold_hours?}; ``DELETE`` -> 204; ``POST /maintenance-counters/{id}/reset``

Record times (``start``, ``end``, ``*_ts``) are epoch milliseconds (``start`` inclusive,
``end`` exclusive), durations (``*_ms``) milliseconds; cloud times (``last_reset_at``)
are ``Timestamp``. Errors are JSON ``{error, detail, field?}``: 404 ``not_found``, 422
``invalid`` (+ ``field``), 409 ``conflict``.

A calendar's body is checked by the domain (cloud/oee/calendars.py ``CalendarIn``), not
by FastAPI, so that a refusal is 422 ``invalid`` naming the input the way people read it
(``shifts[1].breaks[0]``); the model is only written into the OpenAPI document here.
Answers whose keys depend on the question (an OEE row has the key fields of its
grouping; only run-hour counters have ``*_hours``) leave out what the domain left out
(``response_model_exclude_unset``).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Query, Response
from pydantic import BaseModel, Field

from cloud import oee
from cloud.api.deps import Db, Limit, Offset, Planner, Read, Viewer
from cloud.api.paging import page_of_list
from cloud.api.schemas import EpochMs, EpochMsIn, Int32, Out, Page, Timestamp, documented_body
from cloud.core import clock
from cloud.core.errors import Invalid
from cloud.oee import Category, calendars, maintenance

#: Include this router before others with ``/machines/{id}``: ``/machines/states`` must
#: match first.
router = APIRouter(prefix="/api/v1")
Start = Annotated[EpochMsIn, Query( description="epoch ms, inclusive")]
End = Annotated[EpochMsIn, Query( description="epoch ms, exclusive")]
MachineIds = Annotated[list[Int32] | None, Query(alias="machine_id")]
Ms = Annotated[int, Field(description="a duration in milliseconds")]
Ratio = Annotated[float | None, Field(description="null when undefined (see cloud/oee/"
                                                  "report.py)")]

# -- request bodies -------------------------------------------------------------------


class ReasonIn(BaseModel):
    reason: str
    note: str | None = None


class MachineCalendarIn(BaseModel):
    calendar_id: Int32 | None


class CounterIn(BaseModel):
    machine_id: Int32
    name: Any = None
    metric: Any = None
    threshold: Any = None
    threshold_hours: float | None = Field(None, gt=0, description="run_hours counters")
    since_ts: EpochMsIn | None = Field(None, ge=0)


class CounterPatch(BaseModel):
    name: Any = None
    threshold: Any = None
    threshold_hours: float | None = Field(None, gt=0)


#: The calendar body as OpenAPI shows it (checked by the domain, see the docstring).
CALENDAR_BODY: Final[dict[str, Any]] = documented_body(calendars.CalendarIn)
CalendarBody = Annotated[dict[str, Any], Body()]


def _threshold(threshold: Any, hours: float | None, metric: str | None) -> Any:
    if hours is None:
        return threshold
    if threshold is not None:
        raise Invalid("threshold_hours: give threshold or threshold_hours, not both",
                      "threshold_hours")
    if metric != "run_hours":
        raise Invalid("threshold_hours: only for run_hours counters", "threshold_hours")
    return round(hours * maintenance.HOUR_MS)

# -- answers --------------------------------------------------------------------------


class Losses(Out):
    downtime_by_state: dict[str, Ms] = Field(description="downtime by the device's own "
                                             "state name (and offline, unknown)")
    downtime_by_reason: dict[str, Ms] = Field(description="downtime by the stop's reason, "
                                              "else the state of that part of the stop")
    speed_loss_ms: Ms = Field(description="run_ms - ideal_ms: micro-stops and slow cycles")
    scrap_loss_ms: Ms = Field(description="ideal time of the scrap pieces")


class QualityFlag(Out):
    """A data-quality flag beside a report row's figures."""

    code: str = Field(description="performance_over_100")
    performance_measured: float | None = Field(
        None, description="ideal_ms / run_ms before the cap")
    ideal_ms_per_piece: int | None = Field(
        None, description="the routing's ideal cycle / cavities, per rated piece")
    measured_ms_per_piece: int | None = Field(
        None, description="run time per rated piece")


class OeeRow(Out):
    """One group of an OEE report. Only the key fields of the grouping are present:
    machine_id and machine (machine); shift; day; work_order, customer and product
    (order); product (product)."""

    machine_id: int | None = None
    machine: str | None = None
    shift: str | None = Field(None, description="the shift's name, ``24/7`` without a "
                              "calendar")
    day: str | None = Field(None, description="the shift day, ISO date in the calendar's "
                            "timezone")
    work_order: str | None = Field(None, description="null: time without a dispatch")
    customer: str | None = None
    product: str | None = None
    planned_ms: Ms
    run_ms: Ms
    downtime_ms: Ms
    micro_stop_ms: Ms
    ideal_ms: Ms
    good: int
    scrap: int
    unrated_pieces: int = Field(description="pieces without an ideal cycle (not in "
                                "performance)")
    availability: Ratio
    performance: Ratio
    quality: Ratio
    oee: Ratio
    quality_flags: list[QualityFlag] = Field(
        default_factory=list, description="what makes a figure doubtful; "
        "``performance_over_100``: the pieces took less time than the routing allows "
        "(its ideal cycle or cavities are wrong), performance is capped at 1")
    losses: Losses


class OeeReport(Out):
    start: EpochMs
    end: EpochMs
    group_by: str
    items: list[OeeRow]


class OeeTrend(Out):
    start: EpochMs
    end: EpochMs
    items: list[OeeRow] = Field(description="one row per day, oldest first")


class ParetoItem(Out):
    reason: str
    duration_ms: Ms
    count: int = Field(description="stops")


class DowntimePareto(Out):
    start: EpochMs
    end: EpochMs
    items: list[ParetoItem] = Field(description="longest first")


class RunningDispatch(Out):
    work_order: str
    step: int
    operation: str
    customer: str | None
    good: int
    quantity: int
    since_ts: EpochMs


class MachineState(Out):
    machine_id: int
    machine: str
    state: Category
    device_state: str | None = Field(description="the device's own word")
    since_ts: EpochMs | None = Field(description="when this state began (null: never "
                                     "heard from)")
    online: bool
    code: int | None
    dispatch: RunningDispatch | None


class MachineStates(Out):
    now: EpochMs
    items: list[MachineState]


class StopOut(Out):
    start_ts: EpochMs = Field(description="where its reason is keyed")
    end_ts: EpochMs | None = Field(description="null: still stopped")
    duration_ms: Ms
    state: str = Field(description="the state it began with")
    category: Category
    states: dict[str, Ms]
    micro: bool
    planned_ms: Ms = Field(description="its part in planned time")
    reason: str | None
    note: str | None
    reason_set: bool
    cause: str | None = Field(None, description="the alarm that stopped it (its text, "
                              "else ``alarm <code>``); null: no alarm record")


class MachineStops(Out):
    items: list[StopOut]


class StopReasonOut(Out):
    machine_id: int
    start_ts: EpochMs
    reason: str
    note: str | None
    set_by: str


class ShiftOut(Out):
    name: str
    start: str = Field(description="local HH:MM")
    end: str = Field(description="local HH:MM")
    days: list[int] = Field(description="ISO weekdays of the shift day")
    breaks: list[list[str]] = Field(description="local [HH:MM, HH:MM] pairs")


class DefinitionOut(Out):
    shifts: list[ShiftOut]
    non_working_dates: list[str]


class CalendarOut(Out):
    id: int
    name: str
    timezone: str
    definition: DefinitionOut
    machine_ids: list[int]


class PlannedOut(Out):
    start: EpochMs
    end: EpochMs
    shift: str
    day: str = Field(description="the shift day, ISO date in the calendar's timezone")


class PlannedIntervals(Out):
    items: list[PlannedOut]


class MachineCalendarOut(Out):
    machine_id: int
    calendar_id: int | None
    effective: str = Field(description="the calendar it works to (``24/7``: none)")


class CounterOut(Out):
    id: int
    machine_id: int
    machine: str
    name: str
    metric: maintenance.Metric
    threshold: int = Field(description="run_hours: ms of run time; cycles: cycles")
    since_ts: EpochMs
    value: int
    percent: float
    due: bool
    due_anomaly_id: int | None
    last_reset_at: Timestamp | None
    last_reset_by: str | None
    value_hours: float | None = Field(None, description="run_hours counters only")
    threshold_hours: float | None = Field(None, description="run_hours counters only")


# -- OEE and downtime -----------------------------------------------------------------

@router.get("/oee", tags=["oee"], response_model_exclude_unset=True)
async def report(_: Viewer, session: Read, start: Start, end: End,
                 group_by: str = "machine",
                 machine_ids: MachineIds = None) -> OeeReport:
    """OEE with losses per group over [start, end)."""
    items = await oee.oee_report(session, start_ms=start, end_ms=end, group_by=group_by,
                                 machine_ids=machine_ids)
    return OeeReport.model_validate({"start": start, "end": end, "group_by": group_by,
                                     "items": items})


@router.get("/oee/trend", tags=["oee"], response_model_exclude_unset=True)
async def trend(_: Viewer, session: Read, start: Start, end: End,
                machine_ids: MachineIds = None) -> OeeTrend:
    """OEE per day."""
    return OeeTrend.model_validate({
        "start": start, "end": end,
        "items": await oee.oee_trend(session, start_ms=start, end_ms=end,
                                     machine_ids=machine_ids)})


@router.get("/downtime/pareto", tags=["oee"])
async def pareto(_: Viewer, session: Read, start: Start, end: End,
                 machine_ids: MachineIds = None) -> DowntimePareto:
    """Downtime by reason, longest first."""
    return DowntimePareto.model_validate({
        "start": start, "end": end,
        "items": await oee.downtime_pareto(session, start_ms=start, end_ms=end,
                                           machine_ids=machine_ids)})


@router.get("/machines/states", tags=["oee"])
async def states(_: Viewer, session: Read) -> MachineStates:
    """What every machine is doing now, with its running dispatch."""
    now = clock.now_ms()
    found = await oee.current_states(session, now)
    return MachineStates.model_validate({"now": now,
                                         "items": [found[k] for k in sorted(found)]})


@router.get("/machines/{machine_id}/stops", tags=["oee"])
async def machine_stops(machine_id: Int32, _: Viewer, session: Read, start: Start,
                        end: End) -> MachineStops:
    """The machine's stops (micro-stops too) overlapping [start, end)."""
    return MachineStops.model_validate({
        "items": await oee.stops(session, machine_id=machine_id, start_ms=start,
                                 end_ms=end)})


@router.put("/machines/{machine_id}/stops/{start_ts}/reason", tags=["oee"])
async def stop_reason(machine_id: Int32, start_ts: EpochMsIn, body: ReasonIn, actor: Planner,
                      session: Db) -> StopReasonOut:
    """Give a stop (keyed by the ts it began) a reason."""
    return StopReasonOut.model_validate(await oee.set_stop_reason(
        session, actor, machine_id=machine_id, start_ts=start_ts, reason=body.reason,
        note=body.note))

# -- calendars ------------------------------------------------------------------------


@router.get("/calendars", tags=["calendars"])
async def list_calendars(_: Viewer, session: Read, limit: Limit = 50,
                         offset: Offset = 0) -> Page[CalendarOut]:
    return Page[CalendarOut].model_validate(
        page_of_list(await calendars.list_calendars(session), limit, offset))


@router.post("/calendars", tags=["calendars"], status_code=201, openapi_extra=CALENDAR_BODY)
async def create_calendar(body: CalendarBody, actor: Planner, session: Db) -> CalendarOut:
    return CalendarOut.model_validate(await calendars.create_calendar(
        session, actor, name=body.get("name"), timezone=body.get("timezone"),
        definition=body.get("definition")))


@router.get("/calendars/{calendar_id}", tags=["calendars"])
async def get_calendar(calendar_id: Int32, _: Viewer, session: Read) -> CalendarOut:
    return CalendarOut.model_validate(await calendars.get_calendar(session, calendar_id))


@router.get("/calendars/{calendar_id}/planned", tags=["calendars"])
async def planned(calendar_id: Int32, _: Viewer, session: Read, start: Start,
                  end: End) -> PlannedIntervals:
    """The calendar's planned intervals in [start, end) (at most 62 days)."""
    if end <= start or end - start > 62 * 86_400_000:
        raise Invalid("end: must be after start, at most 62 days later", "end")
    doc = await calendars.get_calendar(session, calendar_id)
    cal = calendars.Calendar(doc["id"], doc["name"], doc["timezone"], doc["definition"])
    return PlannedIntervals.model_validate(
        {"items": [p._asdict() for p in calendars.planned_intervals(cal, start, end)]})


@router.put("/calendars/{calendar_id}", tags=["calendars"], openapi_extra=CALENDAR_BODY)
async def update_calendar(calendar_id: Int32, body: CalendarBody, actor: Planner,
                          session: Db) -> CalendarOut:
    return CalendarOut.model_validate(await calendars.update_calendar(
        session, actor, calendar_id, name=body.get("name"), timezone=body.get("timezone"),
        definition=body.get("definition")))


@router.delete("/calendars/{calendar_id}", tags=["calendars"], status_code=204,
               response_class=Response)
async def delete_calendar(calendar_id: Int32, actor: Planner, session: Db) -> None:
    await calendars.delete_calendar(session, actor, calendar_id)


@router.put("/machines/{machine_id}/calendar", tags=["calendars"])
async def machine_calendar(machine_id: Int32, body: MachineCalendarIn, actor: Planner,
                           session: Db) -> MachineCalendarOut:
    return MachineCalendarOut.model_validate(
        await calendars.assign_calendar(session, actor, machine_id, body.calendar_id))

# -- maintenance counters -------------------------------------------------------------


@router.get("/maintenance-counters", tags=["maintenance"],
            response_model_exclude_unset=True)
async def list_counters(_: Viewer, session: Read, machine_id: Int32 | None = None,
                        limit: Limit = 50, offset: Offset = 0) -> Page[CounterOut]:
    return Page[CounterOut].model_validate(page_of_list(
        await maintenance.list_counters(session, clock.now_ms(), machine_id=machine_id),
        limit, offset))


@router.post("/maintenance-counters", tags=["maintenance"], status_code=201,
             response_model_exclude_unset=True)
async def create_counter(body: CounterIn, actor: Planner, session: Db) -> CounterOut:
    return CounterOut.model_validate(await maintenance.create_counter(
        session, actor, machine_id=body.machine_id, name=body.name, metric=body.metric,
        threshold=_threshold(body.threshold, body.threshold_hours, body.metric),
        since_ts=body.since_ts, now_ms=clock.now_ms()))


@router.get("/maintenance-counters/{counter_id}", tags=["maintenance"],
            response_model_exclude_unset=True)
async def get_counter(counter_id: Int32, _: Viewer, session: Read) -> CounterOut:
    return CounterOut.model_validate(
        await maintenance.get_counter(session, counter_id, clock.now_ms()))


@router.patch("/maintenance-counters/{counter_id}", tags=["maintenance"],
              response_model_exclude_unset=True)
async def patch_counter(counter_id: Int32, body: CounterPatch, actor: Planner,
                        session: Db) -> CounterOut:
    metric = None
    if body.threshold_hours is not None:
        metric = (await maintenance.get_counter(session, counter_id,
                                                clock.now_ms()))["metric"]
    return CounterOut.model_validate(await maintenance.update_counter(
        session, actor, counter_id, now_ms=clock.now_ms(), name=body.name,
        threshold=_threshold(body.threshold, body.threshold_hours, metric)))


@router.delete("/maintenance-counters/{counter_id}", tags=["maintenance"],
               status_code=204, response_class=Response)
async def delete_counter(counter_id: Int32, actor: Planner, session: Db) -> None:
    await maintenance.delete_counter(session, actor, counter_id)


@router.post("/maintenance-counters/{counter_id}/reset", tags=["maintenance"],
             response_model_exclude_unset=True)
async def reset_counter(counter_id: Int32, actor: Planner, session: Db) -> CounterOut:
    """Maintenance done: count again from now (audited)."""
    return CounterOut.model_validate(
        await maintenance.reset_counter(session, actor, counter_id, clock.now_ms()))
