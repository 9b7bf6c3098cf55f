"""Schema migrations through Alembic, callable from async code (CLI and tests alike)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, make_url

from cloud.core.db import create_engine
from cloud.core.errors import SchemaNotCurrent

log = structlog.get_logger(__name__)

SCRIPT_LOCATION: Final = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_LOCATION))
    if url:
        cfg.attributes["url"] = url
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def upgrade(url: str, revision: str = "head") -> str | None:
    """Migrate the database at ``url`` to ``revision``; returns the revision before.
    Idempotent: at head it changes nothing."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            before = await conn.run_sync(_current)
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
    finally:
        await engine.dispose()
    log.info("migrated", url=_safe(url), before=before, to=revision)
    return before


async def current_revision(url: str) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current)
    finally:
        await engine.dispose()


async def check_current(url: str) -> None:
    """Raise SchemaNotCurrent (saying what to run) unless the database is at head."""
    current = await current_revision(url)
    head = head_revision()
    if current == head:
        return
    if current is None:
        state = "is not migrated (no plantsync tables)"
    elif current not in {s.revision for s in ScriptDirectory.from_config(alembic_config())
                         .walk_revisions()}:
        raise SchemaNotCurrent(f"database {_safe(url)} is at revision {current}, which this "
                               "version of plantsync does not know (a newer release migrated "
                               "it?); run the matching plantsync-cloud")
    else:
        state = f"is at revision {current}, this version needs {head}"
    raise SchemaNotCurrent(f"database {_safe(url)} {state}: run `plantsync-cloud migrate "
                           f"--db {_safe(url)}` first")


def _upgrade(conn: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
