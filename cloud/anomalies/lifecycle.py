"""What people do with an anomaly, and a person's own report (``create_manual``).

Lifecycle (every step audited, ``anomaly.<action>``)
----------------------------------------------------
``acknowledge`` open -> acknowledged; ``resolve`` (cause and action required) acknowledged
-> resolved, and from open it acknowledges implicitly (same time and person: the response
time is then the resolution time); ``close`` resolved -> closed; ``reopen`` resolved or
closed -> acknowledged; ``assign`` in any state but closed. Anything else raises
``StateConflict`` (409) with the allowed actions. Response time = acknowledged - created;
closure time = closed (else resolved) - created (the cloud's clock, when people act).
Resolving releases a quality hold (raising.py) and notifies (``resolved``). An anomaly
whose cause cleared may close itself (``auto_close``, raising.py; audited
``anomaly.auto_close`` by ``system``).

In bulk (``act_in_bulk``)
-------------------------
``acknowledge`` or ``close`` a list of anomalies in the caller's transaction, each on its
own: the answer says per id whether it was done (``ok``, the new ``status``) or why not
(``error``, ``detail``: the same refusal one action would get), so one anomaly acted on
meanwhile by someone else does not undo the others. ``close`` takes an anomaly not yet
resolved through ``resolve`` first when a cause and an action are given (the same two
for all), else refuses it (``invalid_state``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.anomalies.queries import get_anomaly
from cloud.anomalies.raising import raise_full, release_hold
from cloud.anomalies.rules import ACTIONS, UNRESOLVED
from cloud.auth import Actor
from cloud.core import clock, fields
from cloud.core.audit import actor_name, audit
from cloud.core.errors import DomainError, Invalid, NotFound, StateConflict
from cloud.core.fields import text, whole
from cloud.core.models import MANUAL_ANOMALY_KINDS, SEVERITIES, anomalies, machines, materials, work_orders
from cloud.notify import enqueue


async def _transition(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                      action: str, from_: Sequence[str], values: dict[str, Any],
                      detail: dict[str, Any]) -> Any:
    """Move the anomaly with one conditional UPDATE (atomic on both backends: a
    concurrent action makes this one a 409, never a lost update), then audit."""
    a = anomalies.c
    row = (await session.execute(
        update(anomalies).where(a.id == anomaly_id, a.status.in_(from_)).values(**values)
        .returning(a.id, a.status, a.kind, a.held_operations))).first()
    if row is None:
        current = (await session.execute(select(a.status).where(a.id == anomaly_id))).scalar()
        if current is None:
            raise NotFound(f"anomaly {anomaly_id} unknown")
        raise StateConflict("anomaly", str(anomaly_id), action, current, ACTIONS[current])
    await audit(session, actor, f"anomaly.{action}", "anomaly", anomaly_id, detail)
    return row


#: A time a person gives for an action (``at``) may be this far ahead of the cloud's clock
#: (a tablet's clock a little fast), never more.
AT_AHEAD_S = 60


async def _when(session: AsyncSession, anomaly_id: int, at: datetime | None,
                after: Sequence[str] = ()) -> datetime:
    """The time an action took place: now, or ``at`` when a person records it afterwards
    (from a shift log, or a tablet that was offline). ``at`` must carry a zone, lie no
    later than now and no earlier than the anomaly happened or than the steps named in
    ``after`` (``acknowledged_at``, ``resolved_at``). Raises Invalid (field ``at``),
    NotFound."""
    now = clock.now()
    if at is None:
        return now
    if at.tzinfo is None:
        raise Invalid("at must carry a time zone (UTC: ...Z)", "at")
    a = anomalies.c
    row = (await session.execute(select(a.ts, *(a[c] for c in after))
                                 .where(a.id == anomaly_id))).first()
    if row is None:
        raise NotFound(f"anomaly {anomaly_id} unknown")
    if (at - now).total_seconds() > AT_AHEAD_S:
        raise Invalid(f"at {clock.iso(at)} is in the future", "at")
    earliest = max([clock.from_ms(row[0]), *(t for t in row[1:] if t is not None)])
    if at < earliest:
        raise Invalid(f"at {clock.iso(at)} is before {clock.iso(earliest)}, when the anomaly "
                      "happened or its previous step was recorded", "at")
    return min(at, now)


def _person(value: Any, what: str, max_len: int = 96) -> str:
    name = text(value, what, max_len=max_len)
    assert name is not None
    return name


async def acknowledge(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                      assignee: str | None = None, note: str | None = None, *,
                      now: datetime | None = None,
                      at: datetime | None = None) -> dict[str, Any]:
    """open -> acknowledged (the response), optionally assigning it; the note is kept in
    the audit trail (``history`` of ``get_anomaly``). ``at``: when it happened, if
    recorded afterwards (see ``_when``). Raises NotFound, StateConflict, Invalid."""
    now = now or await _when(session, anomaly_id, at)
    values: dict[str, Any] = {"status": "acknowledged", "acknowledged_at": now,
                              "acknowledged_by": actor_name(actor)[:96]}
    if assignee is not None:
        values["assignee"] = _person(assignee, "assignee")
    note = text(note, "note", max_len=1000, required=False)
    await _transition(session, actor, anomaly_id, "acknowledge", ("open",), values,
                      {"assignee": values.get("assignee"), "note": note})
    return await get_anomaly(session, anomaly_id)


async def resolve(session: AsyncSession, actor: Actor | str, anomaly_id: int, cause: str,
                  action: str, *, now: datetime | None = None,
                  at: datetime | None = None) -> dict[str, Any]:
    """acknowledged (or open: acknowledged implicitly, same time and person) -> resolved
    with the cause and the action taken (both required). Releases a quality hold this
    anomaly put on operations. ``at`` as for ``acknowledge``. Raises NotFound,
    StateConflict, Invalid."""
    cause_t = text(cause, "cause", max_len=1000)
    action_t = text(action, "action", max_len=1000)
    when = now or await _when(session, anomaly_id, at, ("acknowledged_at",))
    who = actor_name(actor)[:96]
    a = anomalies.c
    values = {"status": "resolved", "resolved_at": when, "resolved_by": who,
              "cause": cause_t, "action": action_t,
              "acknowledged_at": func.coalesce(a.acknowledged_at, when),
              "acknowledged_by": func.coalesce(a.acknowledged_by, who)}
    row = await _transition(session, actor, anomaly_id, "resolve", UNRESOLVED, values,
                            {"cause": cause_t, "action": action_t})
    if row.held_operations:
        await release_hold(session, actor, anomaly_id, row.held_operations)
    await enqueue(session, anomaly_id, event="resolved")
    return await get_anomaly(session, anomaly_id)


async def close(session: AsyncSession, actor: Actor | str, anomaly_id: int, *,
                now: datetime | None = None, at: datetime | None = None) -> dict[str, Any]:
    """resolved -> closed (the loop is closed); ``at`` as for ``acknowledge``. Raises
    NotFound, StateConflict, Invalid."""
    when = now or await _when(session, anomaly_id, at, ("acknowledged_at", "resolved_at"))
    await _transition(session, actor, anomaly_id, "close", ("resolved",),
                      {"status": "closed", "closed_at": when,
                       "closed_by": actor_name(actor)[:96]}, {})
    return await get_anomaly(session, anomaly_id)


async def reopen(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                 note: str | None = None) -> dict[str, Any]:
    """resolved/closed -> acknowledged (the fix did not hold); resolution and closure are
    cleared, cause and action stay until the next resolve. A released hold is not put
    back (stop the operation by hand if needed)."""
    note = text(note, "note", max_len=1000, required=False)
    await _transition(session, actor, anomaly_id, "reopen", ("resolved", "closed"),
                      {"status": "acknowledged", "resolved_at": None, "resolved_by": None,
                       "closed_at": None, "closed_by": None}, {"note": note})
    return await get_anomaly(session, anomaly_id)


async def assign(session: AsyncSession, actor: Actor | str, anomaly_id: int,
                 assignee: str) -> dict[str, Any]:
    """Set who handles it (any state but closed); the status does not change."""
    who = _person(assignee, "assignee")
    await _transition(session, actor, anomaly_id, "assign", ("open", "acknowledged", "resolved"),
                      {"assignee": who}, {"assignee": who})
    return await get_anomaly(session, anomaly_id)


async def create_manual(session: AsyncSession, actor: Actor | str, kind: str, title: str,
                        severity: str | None = None, machine_id: int | None = None,
                        work_order: str | None = None, material: str | None = None,
                        ts: int | None = None, detail: dict[str, Any] | None = None, *,
                        now: datetime | None = None) -> dict[str, Any]:
    """A person reports a material, operator or quality anomaly, optionally on a machine,
    a work order (number) and/or a material (code); ``ts`` defaults to now (epoch ms).
    Severity from the rules when None. A critical quality anomaly holds the linked
    operations (raising.py). Audited. Raises Invalid naming the field."""
    if kind not in MANUAL_ANOMALY_KINDS:
        raise Invalid(f"kind {kind!r}: a person reports one of "
                      f"{', '.join(MANUAL_ANOMALY_KINDS)}", "kind")
    title_t = text(title, "title", max_len=255)
    assert title_t is not None
    if severity is not None and severity not in SEVERITIES:
        raise Invalid(f"severity {severity!r} is not one of "
                      f"{', '.join(SEVERITIES)}", "severity")
    if detail is not None and not isinstance(detail, dict):
        raise Invalid("detail must be an object", "detail")
    if machine_id is not None and (await session.execute(
            select(machines.c.id).where(machines.c.id == machine_id))).scalar() is None:
        raise Invalid(f"machine_id: no machine {machine_id}", "machine_id")
    wo_id = mat_id = None
    if work_order is not None:
        wo_id = (await session.execute(select(work_orders.c.id)
                                       .where(work_orders.c.number == work_order))).scalar()
        if wo_id is None:
            raise Invalid(f"work_order: no work order {work_order!r}", "work_order")
    if material is not None:
        mat_id = (await session.execute(select(materials.c.id)
                                        .where(materials.c.code == material))).scalar()
        if mat_id is None:
            raise Invalid(f"material: no material {material!r}", "material")
    when = now or clock.now()
    ts = clock.to_ms(when) if ts is None else whole(ts, "ts", maximum=fields.EPOCH_MS_MAX)
    full = {**(detail or {}), **({"work_order": work_order} if work_order else {})}
    new_id = await raise_full(session, kind=kind, ts=ts, title=title_t, severity=severity,
                              detail=full, machine_id=machine_id, material_id=mat_id,
                              created_by=actor_name(actor), work_order_id=wo_id, now=when)
    assert new_id is not None
    await audit(session, actor, "anomaly.create", "anomaly", new_id,
                {"kind": kind, "title": title_t, "severity": severity,
                 "machine_id": machine_id, "work_order": work_order, "material": material})
    return await get_anomaly(session, new_id)


BULK_ACTIONS = ("acknowledge", "close")
MAX_BULK = 500


async def act_in_bulk(session: AsyncSession, actor: Actor | str, action: str,
                      anomaly_ids: Sequence[int], *, assignee: str | None = None,
                      cause: str | None = None, action_taken: str | None = None,
                      now: datetime | None = None) -> dict[str, Any]:
    """``acknowledge`` or ``close`` each of ``anomaly_ids`` (at most ``MAX_BULK``, each
    once, in the order given); see the module docstring. Returns ``{"results": [{"id",
    "ok", "status", "error", "detail"}], "done": n, "failed": n}``. Raises Invalid for an
    unknown action, no ids or too many, or a cause without an action (or the reverse)."""
    if action not in BULK_ACTIONS:
        raise Invalid(f"action {action!r} is not one of {', '.join(BULK_ACTIONS)}", "action")
    ids = list(dict.fromkeys(int(i) for i in anomaly_ids))
    if not ids:
        raise Invalid("ids: choose at least one anomaly", "ids")
    if len(ids) > MAX_BULK:
        raise Invalid(f"ids: at most {MAX_BULK} anomalies at once", "ids")
    cause = text(cause, "cause", max_len=1000, required=False)
    action_taken = text(action_taken, "action", max_len=1000, required=False)
    if bool(cause) != bool(action_taken):
        raise Invalid("give both the cause and the action taken, or neither",
                      "cause" if not cause else "action")
    when = now or clock.now()
    results: list[dict[str, Any]] = []
    for anomaly_id in ids:
        try:
            if action == "acknowledge":
                doc = await acknowledge(session, actor, anomaly_id, assignee, now=when)
            else:
                status = (await session.execute(select(anomalies.c.status).where(
                    anomalies.c.id == anomaly_id))).scalar()
                if status in UNRESOLVED and cause and action_taken:
                    await resolve(session, actor, anomaly_id, cause, action_taken, now=when)
                doc = await close(session, actor, anomaly_id, now=when)
        except DomainError as exc:
            results.append({"id": anomaly_id, "ok": False, "status": None,
                            "error": exc.code, "detail": exc.detail})
            continue
        results.append({"id": anomaly_id, "ok": True, "status": doc["status"],
                        "error": None, "detail": None})
    done = sum(1 for r in results if r["ok"])
    return {"results": results, "done": done, "failed": len(results) - done}
