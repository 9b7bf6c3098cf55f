"""REST API of anomalies (cloud/anomalies), under ``/api/v1`` (OpenAPI tag anomalies):

- ``GET /api/v1/anomalies`` ?status (repeatable or comma-separated), kind, machine_id,
  since_ts, until_ts (epoch ms, on the anomaly's ``ts``), open_first (default true),
  limit (1..500, default 50), offset -> ``Page[AnomalyOut]`` ``{items, total, limit,
  offset}``
- ``GET /api/v1/anomalies/stats`` ?since_ts, until_ts (default: the last 30 days)
  -> ``AnomalyStatsOut``
- ``GET /api/v1/anomalies/{id}`` -> ``AnomalyDetailOut`` (with ``history``, its audit
  trail); every action below answers the same
- ``POST /api/v1/anomalies`` {kind: material|operator|quality, title, severity?,
  machine_id?, work_order?, material?, ts?, detail?} -> 201 (planner)
- ``POST /api/v1/anomalies/{id}/acknowledge`` {assignee?, note?},
  ``/resolve`` {cause, action}, ``/close`` {}, ``/reopen`` {note?}, ``/assign`` {assignee}
  (planner)
- ``POST /api/v1/anomalies/bulk`` {action: acknowledge|close, ids: [..] (1..500),
  assignee?, cause?, action_taken?} -> 200 ``BulkOut`` (planner). Per id, not
  all-or-nothing: each anomaly is acted on by itself and ``results`` says per id ``ok``
  (with the new ``status``) or the refusal one action would get (``error``, ``detail``,
  e.g. ``invalid_state`` for one already acknowledged, ``not_found``); ``done`` and
  ``failed`` count them. ``close`` with a cause and an action taken resolves the ones
  not yet resolved first. The request itself is refused (422) only when malformed.

Language: ``title`` and each history entry's ``text`` are in the caller's
``Accept-Language`` (zh-CN or en, default en); ``title_code`` and ``title_params`` are the
stored message (cloud/core/anomaly_text.py; null for a person's own title and for rows
from before codes, whose ``title`` is the stored English text).
- thresholds and severity rules: ``/api/v1/settings/anomalies`` (cloud/api/routes/settings.py)

Access: every person reads; planners and admins act; gateway tokens get 403. Errors
(cloud/api/errors.py): 404 ``not_found``, 409 ``invalid_state`` (+ ``current``,
``allowed``), 422 ``invalid`` (+ ``field``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from pydantic import BaseModel, Field

from cloud import anomalies as an
from cloud.api.deps import MAX_LIMIT, Db, Offset, Planner, Viewer
from cloud.api.schemas import EpochMs, EpochMsIn, Int32, Out, Page, Timestamp
from cloud.core import anomaly_text, clock
from cloud.core.clock import DAY_MS

router = APIRouter(prefix="/api/v1", tags=["anomalies"])

# The values the database allows (cloud/core/models.py check constraints), so that the
# OpenAPI document lists them; tests/integration/test_api_answers_anomalies.py keeps the
# two in step.
AnomalyKind = Literal["alarm", "limit", "offline", "stop", "scrap_rate", "stock_low",
                      "maintenance", "material", "operator", "quality"]
AnomalyStatus = Literal["open", "acknowledged", "resolved", "closed"]
Severity = Literal["info", "minor", "major", "critical"]
Action = Literal["acknowledge", "resolve", "close", "reopen", "assign"]


# -- answers ----------------------------------------------------------------------------

class AnomalyLinkOut(Out):
    """An order the anomaly hits: the operation dispatched on its machine at its ``ts``,
    or (a material anomaly) an open order whose components use the material."""

    work_order: str = Field(description="work order number")
    step: int | None = Field(description="the operation's step (null: the order alone)")
    operation: str | None = Field(description="the operation's name")
    customer: str | None
    work_order_id: int
    wo_operation_id: int | None


class AnomalyOut(Out):
    """An anomaly as every list and answer shows it."""

    id: int
    kind: AnomalyKind
    code: str | None = Field(description="alarm code or limit tag")
    severity: Severity
    status: AnomalyStatus
    title: str = Field(description="in the caller's Accept-Language (zh-CN or en)")
    title_code: str | None = Field(description="the title's message code (null: the title "
                                   "is a person's own or from before codes)")
    title_params: dict[str, Any] | None = Field(description="the message's parameters")
    occurrences: int = Field(description="times it happened: repeats within the fold "
                             "window are counted here instead of new anomalies")
    last_seen_ts: EpochMs = Field(description="when it last began (the record's time)")
    detail: dict[str, Any] = Field(description="what was measured (depends on the kind)")
    machine_id: int | None
    machine: str | None = Field(description="the machine's name")
    material: str | None = Field(description="material code")
    gateway_id: str | None
    device: str | None
    ts: EpochMs = Field(description="when it happened (the record's time)")
    cleared_ts: EpochMs | None = Field(description="when its condition ended")
    created: Timestamp
    created_by: str
    acknowledged_at: Timestamp | None
    acknowledged_by: str | None
    resolved_at: Timestamp | None
    resolved_by: str | None
    closed_at: Timestamp | None
    closed_by: str | None
    assignee: str | None
    cause: str | None
    action: str | None = Field(description="the action taken (set when resolved)")
    escalation_level: int
    escalated_at: Timestamp | None
    repeat_of: int | None = Field(description="the earlier anomaly this one repeats")
    held_operations: list[int] = Field(description="operations a severe quality anomaly "
                                       "put on hold")
    response_s: float | None = Field(description="acknowledged - created, seconds")
    closure_s: float | None = Field(description="closed (else resolved) - created, seconds")
    age_s: float | None = Field(description="now - ts, seconds (null once closed)")
    allowed_actions: list[Action]
    links: list[AnomalyLinkOut]


class HistoryEntryOut(Out):
    """One step of an anomaly's audit trail."""

    at: Timestamp
    actor: str
    action: str = Field(description="e.g. anomaly.acknowledge, anomaly.escalate")
    detail: dict[str, Any] = Field(description="what was given (assignee, note, cause, ...)")
    text: str = Field(description="the entry as a sentence in the caller's language")


class AnomalyDetailOut(AnomalyOut):
    """One anomaly with its history (oldest first)."""

    history: list[HistoryEntryOut]


class AnomalyStatsOut(Out):
    """Figures over the anomalies with ``since_ts <= ts < until_ts``."""

    since_ts: EpochMs
    until_ts: EpochMs
    total: int
    open: int = Field(description="not yet resolved (open or acknowledged)")
    unacknowledged: int = Field(description="status open")
    closure_rate: float | None = Field(description="resolved or closed / total, 0..1 "
                                       "(null when total is 0)")
    repeat_rate: float | None = Field(description="repeats / total, 0..1 (null when total "
                                      "is 0)")
    mean_response_s: float | None
    mean_closure_s: float | None
    by_kind: dict[str, int]
    by_severity: dict[str, int]
    by_status: dict[str, int]


class BulkResultOut(Out):
    """What happened to one anomaly of a bulk action."""

    id: int
    ok: bool
    status: AnomalyStatus | None = Field(description="its status after (null: refused)")
    error: str | None = Field(description="the refusal's code, e.g. invalid_state")
    detail: str | None


class BulkOut(Out):
    """A bulk action's result per anomaly (in the order given)."""

    results: list[BulkResultOut]
    done: int
    failed: int


# -- requests ---------------------------------------------------------------------------


class BulkIn(BaseModel):
    action: Literal["acknowledge", "close"]
    ids: list[int] = Field(min_length=1, max_length=an.MAX_BULK)
    assignee: str | None = Field(None, description="acknowledge: who handles them")
    cause: str | None = Field(None, description="close: resolve those not yet resolved "
                              "with this cause (with action_taken)")
    action_taken: str | None = None


class ManualIn(BaseModel):
    kind: str = Field(description="material, operator or quality")
    title: str
    severity: str | None = Field(None, description="info, minor, major, critical; "
                                 "default from the rules")
    machine_id: Int32 | None = None
    work_order: str | None = Field(None, description="work order number")
    material: str | None = Field(None, description="material code")
    ts: EpochMsIn | None = Field(None, description="when it happened, epoch ms (default now)")
    detail: dict[str, Any] | None = None


DoneAt = Annotated[datetime | None, Field(
    description="when it was done, if recorded afterwards (with zone; not before the "
                "anomaly or its previous step, not in the future); default now")]


class AcknowledgeIn(BaseModel):
    assignee: str | None = None
    note: str | None = None
    at: DoneAt = None


class ResolveIn(BaseModel):
    cause: str | None = None
    action: str | None = None
    at: DoneAt = None


class CloseIn(BaseModel):
    at: DoneAt = None


class AssignIn(BaseModel):
    assignee: str | None = None


class NoteIn(BaseModel):
    note: str | None = None


AcceptLanguage = Annotated[str | None, Header(description="zh-CN or en (default en)")]


@router.get("/anomalies")
async def list_anomalies(
        _: Viewer, session: Db, accept_language: AcceptLanguage = None,
        status: Annotated[list[str] | None, Query(
            description="repeatable or comma-separated: open, acknowledged, resolved, "
                        "closed")] = None,
        kind: str | None = None, machine_id: Int32 | None = None,
        since_ts: EpochMsIn | None = None, until_ts: EpochMsIn | None = None,
        open_first: bool = True,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Offset = 0) -> Page[AnomalyOut]:
    """Anomalies, not yet closed first (open, acknowledged, resolved), then newest."""
    page = await an.list_anomalies(session, status=status, kind=kind, machine_id=machine_id,
                                   since_ts=since_ts, until_ts=until_ts,
                                   open_first=open_first, limit=limit, offset=offset,
                                   locale=anomaly_text.locale_of(accept_language))
    return Page[AnomalyOut].model_validate({**page, "limit": limit, "offset": offset})


@router.get("/anomalies/stats")
async def stats(_: Viewer, session: Db, since_ts: EpochMsIn | None = None,
                until_ts: EpochMsIn | None = None) -> AnomalyStatsOut:
    """Totals, open, closure and repeat rates, mean response and closure times, counts by
    kind/severity/status over anomalies with since_ts <= ts < until_ts."""
    until = clock.now_ms() if until_ts is None else until_ts
    since = until - 30 * DAY_MS if since_ts is None else since_ts
    return AnomalyStatsOut.model_validate(
        await an.anomaly_stats(session, since_ts=since, until_ts=until))


@router.get("/anomalies/{anomaly_id}")
async def get_anomaly(anomaly_id: Int32, _: Viewer, session: Db,
                      accept_language: AcceptLanguage = None) -> AnomalyDetailOut:
    """One anomaly with its links and history."""
    return AnomalyDetailOut.model_validate(await an.get_anomaly(
        session, anomaly_id, locale=anomaly_text.locale_of(accept_language)))


@router.post("/anomalies/bulk")
async def bulk(body: BulkIn, actor: Planner, session: Db) -> BulkOut:
    """Acknowledge or close many anomalies; the result per id (not all-or-nothing)."""
    return BulkOut.model_validate(await an.act_in_bulk(
        session, actor, body.action, body.ids, assignee=body.assignee, cause=body.cause,
        action_taken=body.action_taken))


@router.post("/anomalies", status_code=201)
async def create(body: ManualIn, actor: Planner, session: Db) -> AnomalyDetailOut:
    """Report a material, operator or quality anomaly (a critical quality one holds the
    affected operations)."""
    doc = await an.create_manual(session, actor, body.kind, body.title, body.severity,
                                 machine_id=body.machine_id, work_order=body.work_order,
                                 material=body.material, ts=body.ts, detail=body.detail)
    return AnomalyDetailOut.model_validate(doc)


@router.post("/anomalies/{anomaly_id}/acknowledge")
async def acknowledge(anomaly_id: Int32, actor: Planner, session: Db,
                      body: AcknowledgeIn | None = None) -> AnomalyDetailOut:
    """open -> acknowledged (optionally assigning it)."""
    body = body or AcknowledgeIn()
    return AnomalyDetailOut.model_validate(
        await an.acknowledge(session, actor, anomaly_id, body.assignee, body.note,
                             at=body.at))


@router.post("/anomalies/{anomaly_id}/resolve")
async def resolve(anomaly_id: Int32, body: ResolveIn, actor: Planner,
                  session: Db) -> AnomalyDetailOut:
    """acknowledged (or open) -> resolved with cause and action; releases a quality hold."""
    return AnomalyDetailOut.model_validate(
        await an.resolve(session, actor, anomaly_id, body.cause or "", body.action or "",
                         at=body.at))


@router.post("/anomalies/{anomaly_id}/close")
async def close(anomaly_id: Int32, actor: Planner, session: Db,
                body: CloseIn | None = None) -> AnomalyDetailOut:
    """resolved -> closed."""
    return AnomalyDetailOut.model_validate(await an.close(
        session, actor, anomaly_id, at=body.at if body else None))


@router.post("/anomalies/{anomaly_id}/reopen")
async def reopen(anomaly_id: Int32, actor: Planner, session: Db,
                 body: NoteIn | None = None) -> AnomalyDetailOut:
    """resolved/closed -> acknowledged."""
    return AnomalyDetailOut.model_validate(
        await an.reopen(session, actor, anomaly_id, body.note if body else None))


@router.post("/anomalies/{anomaly_id}/assign")
async def assign(anomaly_id: Int32, body: AssignIn, actor: Planner,
                 session: Db) -> AnomalyDetailOut:
    """Set the assignee (any state but closed)."""
    return AnomalyDetailOut.model_validate(
        await an.assign(session, actor, anomaly_id, body.assignee or ""))
