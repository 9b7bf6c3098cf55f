"""The shape of every list answer, ``{items, total, limit, offset}``, and how a page is cut:
``paged`` for a query (the database counts and slices), ``page_of_list`` for a list
computed whole (short by nature: one item per machine, material or channel)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession


def page_of(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    """The answer of every list endpoint: ``{items, total, limit, offset}``."""
    return {"items": items, "total": total, "limit": limit, "offset": offset}


async def paged(session: AsyncSession, stmt: Any, order: Any, limit: int, offset: int,
                row: Callable[[Any], Any], *, scalars: bool = True) -> dict[str, Any]:
    """One page of ``stmt`` ordered by ``order`` (end it with a unique key so pages are
    stable), each row through ``row``, with the total of ``stmt``. ``scalars``: ``stmt``
    selects one entity (rows are its objects), else rows are tuples of its columns."""
    total = await session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = stmt.order_by(*order).limit(limit).offset(offset)
    rows = (await session.scalars(page) if scalars else await session.execute(page)).all()
    return page_of([row(r) for r in rows], int(total), limit, offset)


def page_of_list(items: list[Any], limit: int, offset: int) -> dict[str, Any]:
    """A page of a list computed whole, in the shape of ``page_of``."""
    return page_of(items[offset:offset + limit], len(items), limit, offset)
