"""The audit trail: who did what, when. Every domain writes it through ``audit``.

``actor`` is anything with a ``name`` (``cloud.auth.Actor``: the user name, or
``gateway:<id>``) or a plain string (``"system"`` for what the cloud derives itself,
``"cli"`` for the command line). ``action`` is ``<entity>.<verb>``, e.g.
``work_order.release``.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from cloud.core import clock
from cloud.core.models import AuditEntry


class Named(Protocol):
    """Who acts: an authenticated caller (cloud.auth.Actor) has a name."""

    @property
    def name(self) -> str: ...


def actor_name(actor: Named | str) -> str:
    """The name an actor is recorded under."""
    return actor if isinstance(actor, str) else actor.name


async def audit(session: AsyncSession, actor: Named | str, action: str, entity: str,
                entity_id: str | int, detail: dict[str, Any]) -> None:
    """Record who did what in ``audit_log``, inside the caller's transaction: the entry
    commits (or rolls back) with the change it describes. ``detail`` must be JSON.
    Never flushes or commits."""
    session.add(AuditEntry(ts=clock.now(), actor=actor_name(actor), action=action, entity=entity,
                           entity_id=str(entity_id), detail=detail))
