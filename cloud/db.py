"""Database engine and sessions for the cloud: SQLite by default, PostgreSQL by URL.

The URL comes from ``--db``, else ``$PLANTSYNC_CLOUD_DB``, else the default SQLite file
``plantsync-cloud.db`` in the current directory (no setup for a newcomer). A plain path
is accepted wherever a URL is and means a SQLite file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cloud.errors import DatabaseUrlError

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


class Database:
    """An engine and its session factory. Use as ``async with Database(url) as db``, or
    call ``dispose()`` when done."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = create_engine(url, **engine_kwargs)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

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
