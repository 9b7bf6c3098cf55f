"""Why a work order or an operation changed status: every status rule, in one place.

Work order states (docs/ARCHITECTURE.md, "Cloud model")::

    draft --release--> released --(first attributed count)--> in_progress
    released/in_progress --complete (manual, or automatic)--> completed --close--> closed
    draft/released --cancel--> cancelled

- ``WORK_ORDER_ACTIONS`` / ``OPERATION_ACTIONS``: what a planner may do in each state
  (a 409 answer lists them); ``check_action`` refuses the rest.
- ``transition``: every change of an order's status goes through it (stamped, audited).
- ``on_operation_progress``: the statuses that follow from counts. Attribution calls it
  after every change of an operation's good/scrap; it is the only place that derives
  statuses from counts (completion modes ``auto`` and ``confirm``).
- ``due_status``: the due-date colour (on time / at risk / late) the pages, the exports
  and the API all show; ``order_due_status`` applies it to a work order row (good = the
  last operation's good pieces, the straight line starts at release, else creation).
- ``completion_status``: made more than ordered (``over_produced``) or finished with
  fewer (``short_closed``), shown beside the due colour, which says only *when*.

Planner actions themselves (release, cancel, complete, close, stop, resume) are in
cloud/production/orders.py; they check and transition through this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import structlog
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import Actor
from cloud.core import clock
from cloud.core.audit import actor_name, audit
from cloud.core.errors import NotFound, StateConflict
from cloud.core.models import WoOperation, WorkOrder, attributions

log = structlog.get_logger(__name__)

SYSTEM: Final = "system"  # the audit actor of transitions derived from counts

# What a planner may do to a work order in each state (the 409 answer lists these).
WORK_ORDER_ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "draft": ("update", "release", "cancel"),
    "released": ("update", "cancel", "complete"),
    "in_progress": ("update", "complete"),
    "completed": ("close",),
    "closed": (),
    "cancelled": (),
}
OPERATION_ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "pending": ("stop", "complete"),
    "in_progress": ("stop", "complete"),
    "on_hold": ("resume", "complete"),
    "completed": (),
}
OPEN_ORDER: Final = ("released", "in_progress")


def check_action(order: WorkOrder, action: str) -> None:
    """Raise StateConflict (with the allowed actions) unless ``action`` is allowed in the
    order's state."""
    allowed = WORK_ORDER_ACTIONS[order.status]
    if action not in allowed:
        raise StateConflict("work order", order.number, action, order.status, allowed)


_STAMP: Final = {"released": "released_at", "in_progress": "started_at",
                 "completed": "completed_at", "closed": "closed_at",
                 "cancelled": "cancelled_at"}


async def transition(session: AsyncSession, actor: Actor | str, order: WorkOrder,
                     action: str, to: str, *, reason: str | None = None,
                     at: datetime | None = None, check: bool = True,
                     detail: dict[str, Any] | None = None) -> WorkOrder:
    """Move ``order`` to ``to`` by ``action`` (checked unless ``check`` is False: the
    count-derived transitions), stamp the state's time (``at``, default now) and audit it."""
    if check:
        check_action(order, action)
    before = order.status
    stamp = clock.now()
    order.status, order.updated = to, stamp
    setattr(order, _STAMP[to], at or stamp)
    if to == "completed":
        order.completed_by = actor_name(actor)
    elif before == "completed" and to in OPEN_ORDER:
        # reopened (counts taken away): not completed any more. A close keeps when and
        # by whom it was completed: the due status of a closed order is judged by it.
        order.completed_at = order.completed_by = None
    await session.flush()
    await audit(session, actor, f"work_order.{action}", "work_order", order.number,
                {"from": before, "to": to, **({"reason": reason} if reason else {}),
                 **(detail or {})})
    log.info("work_order_transition", number=order.number, action=action, before=before,
             to=to)
    return order


async def is_last_operation(session: AsyncSession, op: WoOperation) -> bool:
    """``op`` is its order's last operation (the highest step)."""
    last = await session.scalar(select(func.max(WoOperation.step)).where(
        WoOperation.work_order_id == op.work_order_id))
    return bool(op.step == last)


@dataclass(slots=True)
class Progress:
    """What ``on_operation_progress`` changed: (entity, from, to) per transition."""

    transitions: list[tuple[str, str, str]] = field(default_factory=list)


async def on_operation_progress(session: AsyncSession, wo_operation_id: int, *,
                                at: datetime | None = None,
                                first_ts: int | None = None) -> Progress:
    """Derive statuses from an operation's counts; call after every change of its
    ``good``/``scrap`` (attribution, re-attribution). The only place these rules live:

    - first count on a pending operation -> operation in_progress; on a released order
      -> order in_progress;
    - ``auto`` mode: good >= order quantity -> operation completed; the last operation
      completed -> order completed (from released or in_progress);
    - the times are the records' own, as if every record had arrived on time: started_at
      is the ts of the operation's first attributed count, completed_at the ts of the
      count that brought its good pieces (in ts order) to the quantity; the order takes
      its operation's. ``first_ts`` (epoch ms): the earliest of the counts that just
      joined the operation; a late count from before its started_at moves the
      operation's and the order's started_at back to it. ``at`` (default now) only where
      no record says;
    - ``auto`` mode: good < quantity on an operation the counts completed (counts taken
      away by re-attribution) -> operation back to in_progress, and if it is the last
      operation and the counts completed the order, the order back to in_progress; what
      a planner completed stays completed (``completed_by``);
    - an operation on hold keeps its status (its order still starts); closed and
      cancelled orders keep theirs.

    Idempotent (a second call with unchanged counts changes nothing). Locks the order row
    (PostgreSQL) so concurrent attributions to one order serialise their status rules.
    Audited as actor ``system``. Works in the caller's transaction; never commits."""
    op = await session.get(WoOperation, wo_operation_id, populate_existing=True)
    if op is None:
        raise NotFound(f"work order operation {wo_operation_id} unknown")
    order = await session.scalar(select(WorkOrder).where(WorkOrder.id == op.work_order_id)
                                 .with_for_update().execution_options(populate_existing=True))
    assert order is not None
    result = Progress()
    if order.status not in (*OPEN_ORDER, "completed"):
        return result
    when = at or clock.now()
    counted = op.good + op.scrap > 0
    auto = order.completion_mode == "auto"

    async def op_to(to: str) -> None:
        before = op.status
        op.status = to
        if to == "in_progress" and op.started_at is None:
            op.started_at = await _first_count_at(session, op.id) or when
        op.completed_at = (await _crossing_at(session, op.id, order.quantity) or when
                           if to == "completed" else None)
        op.completed_by = SYSTEM if to == "completed" else None
        result.transitions.append((f"operation {op.step}", before, to))
        await audit(session, SYSTEM, f"operation.{'reopen' if before == 'completed' else to}",
                    "work_order", order.number,
                    {"step": op.step, "from": before, "to": to, "good": op.good,
                     "scrap": op.scrap, "quantity": order.quantity})

    if op.status == "pending" and counted:
        await op_to("in_progress")
    if auto and op.status in ("pending", "in_progress") and op.good >= order.quantity:
        await op_to("completed")
    reopened_last = False
    if (auto and op.status == "completed" and op.completed_by == SYSTEM
            and op.good < order.quantity):
        await op_to("in_progress")
        reopened_last = await is_last_operation(session, op)

    if order.status == "released" and counted:
        started = op.started_at or await _first_count_at(session, op.id) or when
        await transition(session, SYSTEM, order, "start", "in_progress", at=started,
                         check=False, detail={"by_operation": op.step})
        result.transitions.append(("work order", "released", "in_progress"))
    if (auto and order.status in OPEN_ORDER and op.status == "completed"
            and await is_last_operation(session, op)):
        before = order.status
        await transition(session, SYSTEM, order, "complete", "completed",
                         at=op.completed_at or when, check=False,
                         detail={"by_operation": op.step, "auto": True})
        result.transitions.append(("work order", before, "completed"))
    elif reopened_last and order.status == "completed" and order.completed_by == SYSTEM:
        await transition(session, SYSTEM, order, "reopen", "in_progress", check=False,
                         detail={"by_operation": op.step, "good": op.good,
                                 "quantity": order.quantity})
        result.transitions.append(("work order", "completed", "in_progress"))
    await _follow_counts(session, op, order, first_ts)
    await session.flush()
    return result


async def _follow_counts(session: AsyncSession, op: WoOperation, order: WorkOrder,
                         first_ts: int | None) -> None:
    """The times as if every record had arrived on time, whenever the counts changed: a
    late batch or a re-attribution (dispatch edit) moves which count is the first, or
    which reached the quantity, so started_at and a count-derived completed_at are read
    again from the operation's own attributions (never kept from an earlier arrival,
    never another operation's count). ``first_ts``: the earliest count that just joined
    (None: counts may have left too)."""
    early = _ms_to_dt(first_ts)
    # counts that only joined after a time cannot move it: an on-time batch costs no
    # read-back (``first_ts`` None: counts may have left, so read it again)
    if op.started_at is not None and (early is None or early < op.started_at):
        first = await _first_count_at(session, op.id) or early
        if first is not None and first != op.started_at:
            op.started_at = first
    if (op.status == "completed" and op.completed_by == SYSTEM
            and (early is None or op.completed_at is None or early <= op.completed_at)):
        crossing = await _crossing_at(session, op.id, order.quantity)
        if crossing is not None and crossing != op.completed_at:
            op.completed_at = crossing
            if (order.status in DONE and order.completed_by == SYSTEM
                    and await is_last_operation(session, op)):
                order.completed_at = crossing
    if order.started_at is not None and order.status != "cancelled":
        earliest = await session.scalar(
            select(func.min(WoOperation.started_at)).where(
                WoOperation.work_order_id == order.id))
        if earliest is not None and earliest != order.started_at:
            order.started_at = earliest


def _ms_to_dt(ts: int | None) -> datetime | None:
    return None if ts is None else clock.from_ms(ts)


async def _first_count_at(session: AsyncSession, wo_operation_id: int) -> datetime | None:
    """The ts of the operation's first attributed count with pieces (None: none)."""
    return _ms_to_dt(await session.scalar(
        select(func.min(attributions.c.ts)).where(
            attributions.c.wo_operation_id == wo_operation_id,
            or_(attributions.c.good != 0, attributions.c.scrap != 0))))


async def _crossing_at(session: AsyncSession, wo_operation_id: int,
                       quantity: int) -> datetime | None:
    """The ts of the attributed count that, in ts order, brought the operation's good
    pieces to ``quantity`` (None: they never reached it)."""
    running = (select(attributions.c.ts, func.sum(attributions.c.good).over(
        order_by=(attributions.c.ts, attributions.c.gateway_id, attributions.c.seq))
        .label("cum")).where(attributions.c.wo_operation_id == wo_operation_id,
                             attributions.c.good != 0).subquery())
    return _ms_to_dt(await session.scalar(
        select(running.c.ts).where(running.c.cum >= quantity)
        .order_by(running.c.ts).limit(1)))


# -- due dates ---------------------------------------------------------------------------
#
# The due-date colour of a work order, the rule the pages, exports and API share:
# - no due date, or cancelled: none;
# - completed/closed: ``on_time`` if it completed by its due date, else ``late``;
# - otherwise ``late`` once the due date has passed;
# - ``at_risk`` (yellow) when it is due within ``AT_RISK_WITHIN`` (24 h) with pieces still
#   to make, or when it is more than ``BEHIND_BY`` (25 percentage points) behind a
#   straight line from release (or creation) to due: the share still to make exceeds the
#   share of time left by more than that;
# - else ``on_time`` (green).

AT_RISK_WITHIN: Final = timedelta(hours=24)
BEHIND_BY: Final = 0.25
DONE: Final = ("completed", "closed")
DUE_STATUSES: Final = ("on_time", "at_risk", "late")
DueStatus = Literal["on_time", "at_risk", "late"]


def due_status(*, status: str, due: datetime | None, quantity: int, good: int,
               now: datetime, started: datetime | None = None,
               completed_at: datetime | None = None) -> DueStatus | None:
    """``on_time`` / ``at_risk`` / ``late`` / None by the rule above. ``started``: the
    order's release (or creation) time, the start of its straight line."""
    if due is None or status == "cancelled":
        return None
    if status in DONE:
        return "late" if completed_at is not None and completed_at > due else "on_time"
    if now > due:
        return "late"
    remaining = max(0.0, 1.0 - good / quantity) if quantity > 0 else 0.0
    if remaining <= 0:
        return "on_time"
    if due - now <= AT_RISK_WITHIN:
        return "at_risk"
    if started is not None and due > started:
        time_left = (due - now) / (due - started)
        if remaining - time_left > BEHIND_BY:
            return "at_risk"
    return "on_time"


CompletionStatus = Literal["over_produced", "short_closed"]
COMPLETION_STATUSES: Final = ("over_produced", "short_closed")


def completion_status(*, status: str, quantity: int, good: int) -> CompletionStatus | None:
    """What the due colour does not say: ``over_produced`` when more good pieces were made
    than ordered (in any state: the machine kept running past the quantity),
    ``short_closed`` when a completed or closed order has fewer good pieces than ordered
    (a planner finished it short), else None. ``good``: the last operation's good
    pieces, as for ``order_due_status``."""
    if quantity > 0 and good > quantity:
        return "over_produced"
    if status in DONE and good < quantity:
        return "short_closed"
    return None


def order_completion_status(order: WorkOrder, good: int) -> CompletionStatus | None:
    """``completion_status`` of ``order`` given its last operation's good pieces."""
    return completion_status(status=order.status, quantity=order.quantity, good=good)


def order_due_status(order: WorkOrder, good: int, now: datetime) -> DueStatus | None:
    """``due_status`` of ``order`` at ``now``, given ``good``, its last operation's good
    pieces (0 before release): the line starts at its release, or its creation when it
    was never released. The API's work-order answers use this; the pages apply the same
    arguments."""
    return due_status(status=order.status, due=order.due, quantity=order.quantity, good=good,
                      now=now, started=order.released_at or order.created,
                      completed_at=order.completed_at)
