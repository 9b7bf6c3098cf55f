"""Alembic environment for the cloud database: async-aware, SQLite and PostgreSQL.

Two ways in:
- ``cloud.core.migrate`` (what ``plantsync-cloud migrate`` and the tests use) opens the
  connection itself and hands it over in ``config.attributes["connection"]``;
- the ``alembic`` command line with ``-x db=URL`` (or $PLANTSYNC_CLOUD_DB), for
  developers writing a new revision (``alembic -c cloud/core/migrations/alembic.ini revision
  --autogenerate -m ...``); then this module runs its own event loop.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from cloud.core.db import create_engine, resolve_url
from cloud.core.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_configure)
            await conn.commit()
    finally:
        await engine.dispose()


def _offline(url: str) -> None:
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _configure(connection)
else:
    url = config.attributes.get("url") or resolve_url(context.get_x_argument(as_dictionary=True)
                                                      .get("db")).url
    if context.is_offline_mode():
        _offline(url)
    else:
        asyncio.run(_run_async(url))
