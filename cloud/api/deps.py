"""What every route depends on: the caller and their role, the request's database
transaction, and the paging parameters. Route modules import these names; nothing else
in the API defines them again.

- ``Viewer``, ``Planner``, ``Admin``: the authenticated caller with at least that role
  (``require(role)``; gateway tokens get 403 unless a route allows them). A caller by
  session cookie who changes something (POST, PUT, PATCH, DELETE) must also send the
  session's ``X-CSRF-Token`` or come from a page of this origin (``caller``).
- ``Db``: one write transaction per request, committed *before* the answer is sent.
- ``Read``: a read-only session (no write lock on SQLite), for reports.
- ``Limit`` (1..500, default 50 where a route gives it) and ``Offset``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Final

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.auth import (
    CSRF_HEADER,
    ROLES,
    SESSION_COOKIE,
    Actor,
    authenticate,
    check_csrf,
    check_role,
)
from cloud.core.fields import INT32_MAX

MAX_LIMIT: Final = 500


def require(role: str, *, allow_gateway: bool = False
            ) -> Callable[[Request], Awaitable[Actor]]:
    """A FastAPI dependency: the caller, who must have at least ``role`` (``viewer``,
    ``planner``, ``admin``), or ``"gateway"`` for gateway-only routes. Gateways pass
    only with ``allow_gateway=True`` (the route then checks which gateway). Raises
    AuthError 401/403, answered as JSON ``{error, detail}``."""
    if role != "gateway" and role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)} or 'gateway'")

    async def dependency(request: Request) -> Actor:
        actor = await caller(request)
        check_role(actor, role, allow_gateway=allow_gateway)
        return actor

    dependency.__name__ = f"require_{role}"
    return dependency


async def caller(request: Request) -> Actor:
    """Whoever sent ``request`` (API token, gateway token or session cookie). Raises
    AuthError 401; 403 ``csrf_failed`` for a state-changing request by session cookie
    without the session's ``X-CSRF-Token`` from another site (``check_csrf``)."""
    secret = request.cookies.get(SESSION_COOKIE)
    async with request.app.state.db.sessions() as session:
        actor = await authenticate(session, request.headers.get("authorization"), secret)
    if actor.kind == "user" and secret:
        headers = request.headers
        check_csrf(request.method, secret, headers.get(CSRF_HEADER), headers.get("origin"),
                   headers.get("referer"), headers.get("host"))
    return actor


Viewer = Annotated[Actor, Depends(require("viewer"))]
Planner = Annotated[Actor, Depends(require("planner"))]
Admin = Annotated[Actor, Depends(require("admin"))]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]


async def _transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back when
    it raises."""
    async with request.app.state.db.sessions() as session, session.begin():
        yield session


async def _read(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.db.transaction(write=False) as session:
        yield session


#: The request's transaction. ``scope="function"`` commits it when the route function
#: returns, *before* the answer is sent: with the default scope FastAPI runs the code after
#: ``yield`` once the response is on its way, so a commit that fails (SQLite busy, a
#: PostgreSQL serialization error) would still have answered 200 for a change that was
#: rolled back.
Db = Annotated[AsyncSession, Depends(_transaction, scope="function")]
#: A read transaction for reports: on SQLite it neither waits for nor blocks the writers.
Read = Annotated[AsyncSession, Depends(_read, scope="function")]
