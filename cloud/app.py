"""The cloud service, put together: ``create_app(db_url) -> FastAPI``.

This is the composition root and nothing else: the database, the domain processing every
ingested batch gets (``app.state.appliers``, cloud/ingest/appliers.py), the periodic jobs
(``app.state.jobs``, cloud/core/jobs.py), the REST API (cloud/api/: one router module per
domain, errors shaped in cloud/api/errors.py) and the web UI (cloud/web/).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from fastapi import FastAPI

from cloud import anomalies, notify, oee
from cloud.api import (
    DEFAULT_MAX_BODY,
    DOCS_OFF,
    BodyLimit,
    body_limits,
    install_api,
    install_docs,
)
from cloud.auth import prune_logins
from cloud.core import Database, Job, job_runner, resolve_url
from cloud.ingest import Applier, default_appliers
from cloud.web import install_web

__all__ = ["LifespanHook", "create_app"]

log = structlog.get_logger(__name__)

# Something entered for the app's lifetime (e.g. the zeroconf advertiser).
LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def create_app(db_url: str | None = None, *, max_body_bytes: int = DEFAULT_MAX_BODY,
               appliers: Sequence[Applier] = (), lifespan_hooks: Sequence[LifespanHook] = (),
               run_jobs: bool = False, docs_require_login: bool = False) -> FastAPI:
    """The cloud API on the database at ``db_url`` (resolved like ``--db``; the schema
    must be migrated, see cloud/core/migrate.py). People log in or use API tokens
    (cloud/auth/); there is no built-in admin. ``appliers`` are added to the domain
    processing of ingest; ``lifespan_hooks`` are entered at start-up and left at shutdown
    (in reverse). ``run_jobs``: run the periodic jobs of ``app.state.jobs`` in this
    process; ``serve`` does, in-process test clients call ``run_jobs_once`` with a pinned
    time instead. ``max_body_bytes`` caps an ingest batch; every other body has its
    route's cap (cloud/api/limits.py). ``docs_require_login``: ``/docs``, ``/redoc`` and
    ``/openapi.json`` only for a logged-in caller (cloud/api/docs.py); open by default."""
    db = Database(resolve_url(db_url).url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(db.dispose)
            for hook in lifespan_hooks:
                await stack.enter_async_context(hook(app))
            if run_jobs:
                await stack.enter_async_context(job_runner(app))
            log.info("cloud_started", db=db.engine.url.render_as_string(hide_password=True))
            yield

    app = FastAPI(title="plantsync cloud", version=_version(), lifespan=lifespan, **DOCS_OFF)
    app.state.db = db
    app.state.max_body_bytes = max_body_bytes
    # attribution, the machine timeline, anomalies; callers may add more
    app.state.appliers = [*default_appliers(), *appliers]
    app.state.jobs = [Job("prune", prune_logins, 3600.0),
                      Job("maintenance", oee.check_maintenance, 60.0),
                      Job("anomaly_sweep", anomalies.sweep, 15.0),
                      Job("notify", notify.deliver, 5.0)]
    install_api(app)
    install_docs(app, require_login=docs_require_login)
    install_web(app)
    # outermost: a body over its route's cap is refused before anything reads it
    app.add_middleware(BodyLimit, rules=body_limits(max_body_bytes))
    return app


def _version() -> str:
    try:
        return version("plantsync")
    except PackageNotFoundError:
        return "0+unknown"
