"""HTTP API of OEE, stops and downtime, shift calendars and maintenance counters, under
``/api/v1``; ``install_oee_api(app)`` adds the routes and their error answers.

Reads (every person, viewer and up):

- ``GET /oee?start=&end=&group_by=machine&machine_id=`` -> {items} (cloud/oee.py
  ``oee_report``; ``group_by`` one or more of machine, shift, day, order, product, comma-
  separated; ``machine_id`` repeatable)
- ``GET /oee/trend?start=&end=&machine_id=`` -> {items} per day
- ``GET /downtime/pareto?start=&end=&machine_id=`` -> {items}
- ``GET /machines/states`` -> {now, items}: what every machine is doing now
- ``GET /machines/{id}/stops?start=&end=`` -> {items}
- ``GET /calendars``, ``GET /calendars/{id}``, ``GET /calendars/{id}/planned?start=&end=``
- ``GET /maintenance-counters?machine_id=``, ``GET /maintenance-counters/{id}``
- ``/settings/oee`` {micro_stop_s?, state_map?}: cloud/api_settings.py

Actions (planners and admins; viewers and gateway tokens 403), each audited:

- ``PUT /machines/{id}/stops/{start_ts}/reason`` {reason, note?}
- ``POST /calendars`` {name, timezone, definition} -> 201; ``PUT /calendars/{id}`` (same
  body); ``DELETE /calendars/{id}`` -> 204 (409 while machines use it)
- ``PUT /machines/{id}/calendar`` {calendar_id | null (back to the default)}
- ``POST /maintenance-counters`` {machine_id, name, metric, threshold | threshold_hours,
  since_ts?} -> 201; ``PATCH /maintenance-counters/{id}`` {name?, threshold?,
  threshold_hours?}; ``DELETE`` -> 204; ``POST /maintenance-counters/{id}/reset``

Times are epoch milliseconds (``start`` inclusive, ``end`` exclusive). Errors are JSON
``{error, detail}``: 404 ``not_found``, 422 ``invalid`` (+ ``field``), 409 ``conflict``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from cloud import oee
from cloud.api.deps import Db, Limit, Offset, Planner, Read, Viewer
from cloud.api.paging import page_of_list
from cloud.core.clock import now_ms
from cloud.core.errors import Invalid
from cloud.oee import calendars, maintenance

#: Include this router before others with ``/machines/{id}``: ``/machines/states`` must
#: match first.
router = APIRouter(prefix="/api/v1")
Start = Annotated[int, Query(ge=0, description="epoch ms, inclusive")]
End = Annotated[int, Query(ge=0, description="epoch ms, exclusive")]
MachineIds = Annotated[list[int] | None, Query(alias="machine_id")]


class ReasonIn(BaseModel):
    reason: str
    note: str | None = None


class CalendarIn(BaseModel):
    name: Any = None
    timezone: Any = None
    definition: Any = None


class MachineCalendarIn(BaseModel):
    calendar_id: int | None


class CounterIn(BaseModel):
    machine_id: int
    name: Any = None
    metric: Any = None
    threshold: Any = None
    threshold_hours: float | None = Field(None, gt=0, description="run_hours counters")
    since_ts: int | None = Field(None, ge=0)


class CounterPatch(BaseModel):
    name: Any = None
    threshold: Any = None
    threshold_hours: float | None = Field(None, gt=0)


def _threshold(threshold: Any, hours: float | None, metric: str | None) -> Any:
    if hours is None:
        return threshold
    if threshold is not None:
        raise Invalid("threshold_hours: give threshold or threshold_hours, not both",
                      "threshold_hours")
    if metric != "run_hours":
        raise Invalid("threshold_hours: only for run_hours counters", "threshold_hours")
    return round(hours * maintenance.HOUR_MS)


# -- OEE and downtime --------------------------------------------------------------

@router.get("/oee", tags=["oee"])
async def report(_: Viewer, session: Read, start: Start, end: End,
                 group_by: str = "machine",
                 machine_ids: MachineIds = None) -> dict[str, Any]:
    """OEE with losses per group over [start, end)."""
    items = await oee.oee_report(session, start_ms=start, end_ms=end, group_by=group_by,
                                 machine_ids=machine_ids)
    return {"start": start, "end": end, "group_by": group_by, "items": items}


@router.get("/oee/trend", tags=["oee"])
async def trend(_: Viewer, session: Read, start: Start, end: End,
                machine_ids: MachineIds = None) -> dict[str, Any]:
    """OEE per day."""
    return {"start": start, "end": end,
            "items": await oee.oee_trend(session, start_ms=start, end_ms=end,
                                         machine_ids=machine_ids)}


@router.get("/downtime/pareto", tags=["oee"])
async def pareto(_: Viewer, session: Read, start: Start, end: End,
                 machine_ids: MachineIds = None) -> dict[str, Any]:
    """Downtime by reason, longest first."""
    return {"start": start, "end": end,
            "items": await oee.downtime_pareto(session, start_ms=start, end_ms=end,
                                               machine_ids=machine_ids)}


@router.get("/machines/states", tags=["oee"])
async def states(_: Viewer, session: Read) -> dict[str, Any]:
    """What every machine is doing now, with its running dispatch."""
    now = now_ms()
    found = await oee.current_states(session, now)
    return {"now": now, "items": [found[k] for k in sorted(found)]}


@router.get("/machines/{machine_id}/stops", tags=["oee"])
async def machine_stops(machine_id: int, _: Viewer, session: Read, start: Start,
                        end: End) -> dict[str, Any]:
    """The machine's stops (micro-stops too) overlapping [start, end)."""
    return {"items": await oee.stops(session, machine_id=machine_id, start_ms=start,
                                     end_ms=end)}


@router.put("/machines/{machine_id}/stops/{start_ts}/reason", tags=["oee"])
async def stop_reason(machine_id: int, start_ts: int, body: ReasonIn, actor: Planner,
                      session: Db) -> dict[str, Any]:
    """Give a stop (keyed by the ts it began) a reason."""
    return await oee.set_stop_reason(session, actor, machine_id=machine_id,
                                     start_ts=start_ts, reason=body.reason,
                                     note=body.note)

# -- calendars ---------------------------------------------------------------------

@router.get("/calendars", tags=["calendars"])
async def list_calendars(_: Viewer, session: Read, limit: Limit = 50,
                         offset: Offset = 0) -> dict[str, Any]:
    return page_of_list(await calendars.list_calendars(session), limit, offset)


@router.post("/calendars", tags=["calendars"], status_code=201)
async def create_calendar(body: CalendarIn, actor: Planner,
                          session: Db) -> dict[str, Any]:
    return await calendars.create_calendar(session, actor, name=body.name,
                                           timezone=body.timezone,
                                           definition=body.definition)


@router.get("/calendars/{calendar_id}", tags=["calendars"])
async def get_calendar(calendar_id: int, _: Viewer, session: Read) -> dict[str, Any]:
    return await calendars.get_calendar(session, calendar_id)


@router.get("/calendars/{calendar_id}/planned", tags=["calendars"])
async def planned(calendar_id: int, _: Viewer, session: Read, start: Start,
                  end: End) -> dict[str, Any]:
    """The calendar's planned intervals in [start, end) (at most 62 days)."""
    if end <= start or end - start > 62 * 86_400_000:
        raise Invalid("end: must be after start, at most 62 days later", "end")
    doc = await calendars.get_calendar(session, calendar_id)
    cal = calendars.Calendar(doc["id"], doc["name"], doc["timezone"], doc["definition"])
    return {"items": [p._asdict() for p in calendars.planned_intervals(cal, start, end)]}


@router.put("/calendars/{calendar_id}", tags=["calendars"])
async def update_calendar(calendar_id: int, body: CalendarIn, actor: Planner,
                          session: Db) -> dict[str, Any]:
    return await calendars.update_calendar(session, actor, calendar_id, name=body.name,
                                           timezone=body.timezone,
                                           definition=body.definition)


@router.delete("/calendars/{calendar_id}", tags=["calendars"], status_code=204)
async def delete_calendar(calendar_id: int, actor: Planner, session: Db) -> Response:
    await calendars.delete_calendar(session, actor, calendar_id)
    return Response(status_code=204)


@router.put("/machines/{machine_id}/calendar", tags=["calendars"])
async def machine_calendar(machine_id: int, body: MachineCalendarIn, actor: Planner,
                           session: Db) -> dict[str, Any]:
    return await calendars.assign_calendar(session, actor, machine_id, body.calendar_id)

# -- maintenance counters ----------------------------------------------------------

@router.get("/maintenance-counters", tags=["maintenance"])
async def list_counters(_: Viewer, session: Read, machine_id: int | None = None,
                        limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    return page_of_list(await maintenance.list_counters(session, now_ms(),
                                                        machine_id=machine_id),
                        limit, offset)


@router.post("/maintenance-counters", tags=["maintenance"], status_code=201)
async def create_counter(body: CounterIn, actor: Planner,
                         session: Db) -> dict[str, Any]:
    return await maintenance.create_counter(
        session, actor, machine_id=body.machine_id, name=body.name, metric=body.metric,
        threshold=_threshold(body.threshold, body.threshold_hours, body.metric),
        since_ts=body.since_ts, now_ms=now_ms())


@router.get("/maintenance-counters/{counter_id}", tags=["maintenance"])
async def get_counter(counter_id: int, _: Viewer, session: Read) -> dict[str, Any]:
    return await maintenance.get_counter(session, counter_id, now_ms())


@router.patch("/maintenance-counters/{counter_id}", tags=["maintenance"])
async def patch_counter(counter_id: int, body: CounterPatch, actor: Planner,
                        session: Db) -> dict[str, Any]:
    metric = None
    if body.threshold_hours is not None:
        metric = (await maintenance.get_counter(session, counter_id, now_ms()))["metric"]
    return await maintenance.update_counter(
        session, actor, counter_id, now_ms=now_ms(), name=body.name,
        threshold=_threshold(body.threshold, body.threshold_hours, metric))


@router.delete("/maintenance-counters/{counter_id}", tags=["maintenance"],
               status_code=204)


async def delete_counter(counter_id: int, actor: Planner, session: Db) -> Response:
    await maintenance.delete_counter(session, actor, counter_id)
    return Response(status_code=204)


@router.post("/maintenance-counters/{counter_id}/reset", tags=["maintenance"])
async def reset_counter(counter_id: int, actor: Planner,
                        session: Db) -> dict[str, Any]:
    """Maintenance done: count again from now (audited)."""
    return await maintenance.reset_counter(session, actor, counter_id, now_ms())
