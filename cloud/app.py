"""The cloud's HTTP API: ``create_app(db_url) -> FastAPI``.

- ``POST /api/v1/ingest``: a gateway's msgpack batch (cloud/ingest.py). Answers
  ``{"acked_through": N}`` in msgpack, or JSON when ``Accept`` prefers
  ``application/json``; also ``stored`` and ``duplicates``.
- ``GET /api/v1/gateways/{id}``: the gateway's sync status (cloud/status.py).
- ``GET /api/v1/gateways/{id}/devices/{device}/counters``: counter sums and continuity.

A gateway's token may use exactly these three routes (and only for its own gateway);
every other route answers it 403 (tests/integration/test_gateway_token_scope.py walks
them all). The rest of the API is installed from the ``cloud/api_*.py`` modules.

Errors are always JSON: ``{"error": code, "detail": message}`` (+ ``field`` for 422).
401 (no, unknown or revoked token) and 403 (another gateway's data) say why; a 401/403
must stop a gateway's retries, so they are only used for exactly these causes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any, Final

import msgpack
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from buffer.records import RecordError, decode_batch
from cloud.anomalies import sweep
from cloud.api_anomalies import install_anomaly_api
from cloud.api_audit import install_audit_api
from cloud.api_dispatch import install_dispatch_api
from cloud.api_inventory import install_inventory_api
from cloud.api_notify import install_notify_api
from cloud.api_oee import install_oee_api
from cloud.api_production import install_production_api
from cloud.api_settings import install_settings_api
from cloud.api_users import install_user_api
from cloud.appliers import default_appliers
from cloud.auth import (
    SESSION_COOKIE,
    Actor,
    AuthError,
    authenticate,
    require_gateway,
    require_read,
)
from cloud.db import Database, resolve_url
from cloud.httputil import weighted
from cloud.ingest import Applier, GatewayGone, ingest_batch
from cloud.jobs import Job, job_runner
from cloud.maintenance import check_maintenance
from cloud.notify import deliver
from cloud.status import device_counters, gateway_exists, gateway_status
from cloud.users import prune as prune_logins
from cloud.web import install_web

log = structlog.get_logger(__name__)

DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
MSGPACK_TYPES: Final = frozenset({"application/msgpack", "application/x-msgpack"})
SENT_AT_HEADER: Final = "X-Plantsync-Sent-At"

# Something entered for the app's lifetime (e.g. the zeroconf advertiser, later).
LifespanHook = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.extra = status, error, detail, extra


def create_app(db_url: str | None = None, *, max_body_bytes: int = DEFAULT_MAX_BODY,
               appliers: Sequence[Applier] = (), lifespan_hooks: Sequence[LifespanHook] = (),
               run_jobs: bool = False) -> FastAPI:
    """The cloud API on the database at ``db_url`` (resolved like ``--db``; the schema
    must be migrated, see cloud/migrate.py). People log in or use API tokens
    (cloud/auth.py, cloud/api_users.py); there is no built-in admin. ``appliers`` are the
    domain-processing hook of ingest; ``lifespan_hooks`` are entered at start-up and
    left at shutdown (in reverse). ``run_jobs``: run the periodic jobs of ``app.state.jobs``
    (cloud/jobs.py) in this process; ``serve`` does, in-process test clients call
    ``run_jobs_once`` with a pinned time instead."""
    url = resolve_url(db_url).url
    db = Database(url)

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

    app = FastAPI(title="plantsync cloud", version=_version(), lifespan=lifespan)
    app.state.db = db
    # attribution, the machine timeline, anomalies (cloud/appliers.py); callers may add more
    app.state.appliers = [*default_appliers(), *appliers]
    app.state.jobs = [Job("prune", prune_logins, 3600.0)]
    app.state.max_body_bytes = max_body_bytes

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail, **exc.extra},
                            status_code=exc.status)

    @app.exception_handler(AuthError)
    async def _auth_error(_request: Request, exc: AuthError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
        return JSONResponse({"error": exc.reason, "detail": exc.detail},
                            status_code=exc.status, headers={**headers, **(exc.headers or {})})

    install_user_api(app)
    install_dispatch_api(app)
    install_inventory_api(app)
    # before the production routes: /machines/states must match before /machines/{id}
    install_oee_api(app)
    app.state.jobs.append(Job("maintenance", check_maintenance, 60.0))
    install_production_api(app)
    install_settings_api(app)
    install_web(app)  # the pages (cloud/web/): plant board, reports, planner actions
    install_anomaly_api(app)
    app.state.jobs.append(Job("anomaly_sweep", sweep, 15.0))
    install_notify_api(app)
    app.state.jobs.append(Job("notify", deliver, 5.0))
    install_audit_api(app)

    async def principal(request: Request) -> Actor:
        async with db.sessions() as session:
            return await authenticate(session, request.headers.get("authorization"),
                                      request.cookies.get(SESSION_COOKIE))

    @app.post("/api/v1/ingest", tags=["gateways"])
    async def ingest(request: Request) -> Response:
        """Store a gateway's msgpack batch; answer {acked_through}. Idempotent."""
        received_ms = time.time_ns() // 1_000_000
        gateway_id = require_gateway(await principal(request))
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in MSGPACK_TYPES:
            raise ApiError(415, "unsupported_media_type",
                           f"body must be msgpack (Content-Type application/msgpack), "
                           f"got {ctype or 'none'!r}")
        payload = await _read_capped(request, app.state.max_body_bytes)
        try:
            batch = decode_batch(payload)
        except RecordError as exc:
            if exc.field == "batch" and exc.__cause__ is not None:
                raise ApiError(400, "bad_msgpack", str(exc)) from exc
            raise ApiError(422, "bad_record", str(exc), field=exc.field) from exc
        if batch.gateway != gateway_id:
            raise AuthError(403, "other_gateway",
                            f"this token belongs to gateway {gateway_id!r} but the batch "
                            f"says {batch.gateway!r}; nothing was stored")
        sent_at = _sent_at(request.headers.get(SENT_AT_HEADER))
        try:
            result = await ingest_batch(db, gateway_id, batch, received_ms=received_ms,
                                        sent_at_ms=sent_at, appliers=app.state.appliers)
        except GatewayGone as exc:
            raise AuthError(401, "revoked_token",
                            f"gateway {gateway_id!r} was revoked") from exc
        answer = {"acked_through": result.acked_through, "stored": result.stored,
                  "duplicates": result.duplicates}
        if _wants_json(request.headers.get("accept", "")):
            return JSONResponse(answer)
        return Response(msgpack.packb(answer), media_type="application/msgpack")

    @app.get("/api/v1/gateways/{gateway_id}", tags=["gateways"])
    async def gateway(gateway_id: str, request: Request) -> dict[str, Any]:
        """Sync status: last seq, records stored, seq gaps and their gap records,
        last seen, clock skew at the last batch."""
        require_read(await principal(request), gateway_id)
        async with db.sessions() as session:
            doc = await gateway_status(session, gateway_id)
        if doc is None:
            raise ApiError(404, "unknown_gateway", f"no gateway {gateway_id!r}")
        return doc

    @app.get("/api/v1/gateways/{gateway_id}/devices/{device}/counters", tags=["gateways"])
    async def counters(gateway_id: str, device: str, request: Request) -> dict[str, Any]:
        """Per counter tag: good/scrap/total sums, first and last raw value, resets and
        continuity breaks."""
        require_read(await principal(request), gateway_id)
        async with db.sessions() as session:
            if await gateway_exists(session, gateway_id):
                return await device_counters(session, gateway_id, device)
        raise ApiError(404, "unknown_gateway", f"no gateway {gateway_id!r}")

    return app


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "too_large", f"body over {limit} bytes; send smaller batches")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _sent_at(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "bad_header", f"{SENT_AT_HEADER} must be epoch milliseconds, "
                       f"got {value!r}") from None


def _wants_json(accept: str) -> bool:
    """JSON only when asked for ahead of msgpack; the default (a gateway) is msgpack."""
    best: tuple[float, str] | None = None
    for _i, media, q in weighted(accept):
        if media in MSGPACK_TYPES or media == "application/json":
            if best is None or q > best[0]:
                best = (q, media)
    return best is not None and best[1] == "application/json" and best[0] > 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("plantsync")
    except PackageNotFoundError:
        return "0+unknown"
