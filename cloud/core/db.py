"""Database engine and sessions for the cloud: SQLite by default, PostgreSQL by URL.

The URL comes from ``--db``, else ``$PLANTSYNC_CLOUD_DB``, else the default SQLite file
``plantsync-cloud.db`` in the current directory (no setup for a newcomer). A plain path
is accepted wherever a URL is and means a SQLite file.

Writes on SQLite (one writer at a time per file). SQLite's own wait for its write lock,
``busy_timeout``, polls with growing sleeps and is not fair: with 20 gateways ingesting
at once a writer could lose every poll for the whole timeout and fail with "database is
locked". So a ``Database`` on SQLite serializes its own writers, first come first served,
with an asyncio lock (``WriteGate``):

- ``session.begin()`` (``async with db.sessions() as s, s.begin():``) is a write
  transaction: it waits for the gate, then ``BEGIN IMMEDIATE`` takes SQLite's write lock
  before the first read, so it can never fail upgrading a read snapshot to a write
  (that upgrade ignores busy_timeout). The gate is released after commit or rollback.
- ``db.transaction(write=False)`` is a read transaction: no gate, a plain ``BEGIN``.
  Sessions used without ``begin()`` (autobegin) only read, or write rarely (a token's
  last use): they take the gate just before their first INSERT/UPDATE/DELETE and give it
  back when the session returns its connection.
- A task that already holds the gate (a write transaction opening another session)
  does not wait for it again: that would wait for itself forever.

Another process on the same file still waits through busy_timeout. PostgreSQL has row
locks and needs none of this.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    AsyncSessionTransaction,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from cloud.core.errors import DatabaseUrlError, Invalid

log = structlog.get_logger(__name__)

ENV_VAR: Final = "PLANTSYNC_CLOUD_DB"
DEFAULT_FILE: Final = "plantsync-cloud.db"
# A writer waits this long for SQLite's single write lock before failing the request.
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class ResolvedUrl:
    url: str
    is_default: bool  # the default SQLite file (nothing given): serve may migrate it itself

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


def resolve_url(given: str | None = None) -> ResolvedUrl:
    """The database URL to use: ``given``, else $PLANTSYNC_CLOUD_DB, else the default file.

    Sync driver names are mapped to the async ones (``sqlite://`` -> ``sqlite+aiosqlite://``,
    ``postgresql://`` -> ``postgresql+asyncpg://``). Raises DatabaseUrlError.
    """
    raw = given or os.environ.get(ENV_VAR) or ""
    is_default = not raw
    if is_default:
        raw = str(Path.cwd() / DEFAULT_FILE)
    if "://" not in raw:  # a file path
        raw = f"sqlite+aiosqlite:///{Path(raw).expanduser().resolve()}"
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"cannot parse database URL {raw!r} ({exc})") from exc
    url = _async_driver(url)
    return ResolvedUrl(url.render_as_string(hide_password=False), is_default)


def _async_driver(url: URL) -> URL:
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite":
        if driver not in ("", "aiosqlite"):
            raise DatabaseUrlError(f"SQLite driver {driver!r} is not async; use sqlite+aiosqlite://")
        if not url.database or url.database == ":memory:":
            raise DatabaseUrlError("an in-memory SQLite database would vanish between "
                                   "connections; give a file, e.g. sqlite+aiosqlite:///cloud.db")
        return url.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("", "asyncpg"):
            raise DatabaseUrlError(f"PostgreSQL driver {driver!r} is not supported; "
                                   "use postgresql+asyncpg://user@host/db")
        return url.set(drivername="postgresql+asyncpg")
    raise DatabaseUrlError(f"unsupported database {backend!r}: use sqlite+aiosqlite:///FILE "
                           "or postgresql+asyncpg://USER@HOST/DB")


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (already resolved). SQLite connections get WAL,
    synchronous=FULL (an ack promises durability), foreign keys and a busy timeout."""
    kwargs.setdefault("json_serializer", json_dumps)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Keep the WAL from growing without bound under a steady ingest stream.
        cur.execute("PRAGMA journal_size_limit=67108864")
    finally:
        cur.close()


class WriteGate:
    """First-come-first-served lock of one Database's SQLite writers (see the module
    docstring). Bound to the event loop it is first used in; a new loop gets a new lock."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.owner: asyncio.Task[Any] | None = None

    def held_here(self) -> bool:
        """The current task holds the gate (so it must not wait for it)."""
        return self.owner is not None and self.owner is asyncio.current_task()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop
        assert self._lock is not None
        await self._lock.acquire()
        self.owner = asyncio.current_task()

    def release(self) -> None:
        assert self._lock is not None
        self.owner = None
        self._lock.release()


_GATE: Final = "plantsync_write_gate"      # Session.info: the Database's WriteGate
_READ_ONLY: Final = "plantsync_read_only"  # Session.info: begin() is a read transaction
_LAZY: Final = "plantsync_gate_lazy"       # connection info: gate taken at a write
_WRITES: Final = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


class CloudSession(AsyncSession):
    """An AsyncSession whose ``begin()`` is a write transaction on SQLite (see the
    module docstring); on PostgreSQL it is AsyncSession's."""

    def begin(self) -> Any:
        gate = self.info.get(_GATE)
        if gate is None or self.info.get(_READ_ONLY):
            return super().begin()
        return _WriteTransaction(self, gate)


class _WriteTransaction:
    """``async with session.begin():`` on SQLite: gate, BEGIN IMMEDIATE, the session's
    transaction, gate released after its commit or rollback."""

    def __init__(self, session: CloudSession, gate: WriteGate) -> None:
        self._session, self._gate = session, gate
        self._tx = AsyncSessionTransaction(session)
        self._held = False

    def __await__(self) -> Any:
        raise TypeError("use 'async with session.begin():' (a write transaction on SQLite "
                        "holds a lock that only the with-block's end releases)")

    async def __aenter__(self) -> AsyncSessionTransaction:
        nested = self._gate.held_here()
        if not nested:
            await self._gate.acquire()
            self._held = True
        try:
            await self._tx.__aenter__()
        except BaseException:
            self._release()
            raise
        if not nested:
            try:
                conn = await self._session.connection()
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException as exc:
                await self._tx.__aexit__(type(exc), exc, exc.__traceback__)
                self._release()
                raise
        return self._tx

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._tx.__aexit__(*exc)
        finally:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._gate.release()


def _install_gate(engine: AsyncEngine, gate: WriteGate) -> None:
    """Writers outside ``begin()`` (autobegin sessions) take the gate just before their
    first INSERT/UPDATE/DELETE and give it back when their connection returns to the
    pool (after commit or rollback)."""

    def before_execute(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any,
                       _many: bool) -> None:
        if statement.lstrip()[:7].upper().rstrip() not in _WRITES:
            return
        if conn.info.get(_LAZY) or gate.held_here():
            return
        try:
            await_only(gate.acquire())
        except Exception:  # not under the async engine (no greenlet): SQLite's own lock
            return
        conn.info[_LAZY] = True

    def checkin(_dbapi_conn: Any, record: Any) -> None:
        if record.info.pop(_LAZY, None):
            gate.release()

    event.listen(engine.sync_engine, "before_cursor_execute", before_execute)
    event.listen(engine.sync_engine.pool, "checkin", checkin)


class Database:
    """An engine and its session factory. Use as ``async with Database(url) as db``, or
    call ``dispose()`` when done. ``async with db.sessions() as s, s.begin():`` is a
    write transaction; ``db.transaction(write=False)`` a read one (module docstring)."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.gate: WriteGate | None = None
        info: dict[str, Any] = {}
        if self.engine.dialect.name == "sqlite":
            self.gate = WriteGate()
            info[_GATE] = self.gate
            _install_gate(self.engine, self.gate)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, class_=CloudSession, expire_on_commit=False, info=info
        )

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed at the end of the block (rolled back
        when it raises). ``write=False``: a read transaction, which on SQLite neither
        waits for nor blocks the writers."""
        async with self.sessions() as session:
            if not write:
                session.info[_READ_ONLY] = True
            async with session.begin():
                yield session

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispose()


def json_dumps(value: Any) -> str:
    """JSON for record bodies. A PLC float can be NaN or infinite, which JSON (and
    PostgreSQL's jsonb) cannot hold: those become null on every backend alike, rather
    than failing the batch (and the gateway's retries) forever."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


#: The longest search text: SQLite refuses a LIKE pattern over 50,000 bytes (a 500), and
#: no name, code or number is this long (cloud/api/schemas.py ``SearchText``).
MAX_SEARCH_LEN: Final = 200


def like_pattern(text: str, *, what: str = "q") -> str:
    """A case-folded LIKE pattern matching ``text`` anywhere (escape char backslash):
    ``column.like(like_pattern(q), escape="\\\\")`` on a lowered column. Raises Invalid
    (``field`` = ``what``) for a text over ``MAX_SEARCH_LEN`` characters."""
    if len(text) > MAX_SEARCH_LEN:
        raise Invalid(f"{what} is {len(text)} characters long: search for at most "
                      f"{MAX_SEARCH_LEN}", what)
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
