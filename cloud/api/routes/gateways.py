"""What gateways call, and what anyone may read about a gateway's sync:

- ``POST /api/v1/ingest``: a gateway's msgpack batch (cloud/ingest/store.py). Answers
  ``{"acked_through": N}`` in msgpack, or JSON when ``Accept`` prefers
  ``application/json``; also ``stored`` and ``duplicates``.
- ``GET /api/v1/gateways/{id}``: the gateway's sync status (cloud/ingest/status.py).
- ``GET /api/v1/gateways/{id}/devices/{device}/counters``: counter sums and continuity.

A gateway's token may use exactly these three routes (and only for its own gateway);
every other route answers it 403 (tests/integration/test_gateway_token_scope.py walks
them all). 401 (no, unknown or revoked token) and 403 (another gateway's data) say why;
a 401/403 must stop a gateway's retries, so they are only used for exactly these causes.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from buffer.records import RecordError, decode_batch
from cloud import ingest
from cloud.api.deps import caller
from cloud.auth import AuthError, require_gateway, require_read
from cloud.core.clock import now_ms
from cloud.core.errors import BadRequest, Invalid, NotFound, TooLarge, UnsupportedMedia
from cloud.core.headers import weighted

DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
MSGPACK_TYPES: Final = frozenset({"application/msgpack", "application/x-msgpack"})
SENT_AT_HEADER: Final = "X-Plantsync-Sent-At"

router = APIRouter(prefix="/api/v1", tags=["gateways"])


@router.post("/ingest")
async def post_ingest(request: Request) -> Response:
    """Store a gateway's msgpack batch; answer {acked_through}. Idempotent."""
    received_ms = now_ms()
    gateway_id = require_gateway(await caller(request))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in MSGPACK_TYPES:
        raise UnsupportedMedia(f"body must be msgpack (Content-Type application/msgpack), "
                               f"got {ctype or 'none'!r}")
    payload = await _read_capped(request, request.app.state.max_body_bytes)
    try:
        batch = decode_batch(payload)
    except RecordError as exc:
        if exc.field == "batch" and exc.__cause__ is not None:
            raise BadRequest(str(exc), code="bad_msgpack") from exc
        raise Invalid(str(exc), exc.field, code="bad_record") from exc
    if batch.gateway != gateway_id:
        raise AuthError(403, "other_gateway",
                        f"this token belongs to gateway {gateway_id!r} but the batch "
                        f"says {batch.gateway!r}; nothing was stored")
    sent_at = _sent_at(request.headers.get(SENT_AT_HEADER))
    result = await ingest.ingest_batch(request.app.state.db, gateway_id, batch,
                                       received_ms=received_ms, sent_at_ms=sent_at,
                                       appliers=request.app.state.appliers)
    answer = {"acked_through": result.acked_through, "stored": result.stored,
              "duplicates": result.duplicates}
    if _wants_json(request.headers.get("accept", "")):
        return JSONResponse(answer)
    return Response(msgpack.packb(answer), media_type="application/msgpack")


@router.get("/gateways/{gateway_id}")
async def gateway(gateway_id: str, request: Request) -> dict[str, Any]:
    """Sync status: last seq, records stored, seq gaps and their gap records,
    last seen, clock skew at the last batch."""
    require_read(await caller(request), gateway_id)
    async with request.app.state.db.sessions() as session:
        doc = await ingest.gateway_status(session, gateway_id)
    if doc is None:
        raise NotFound(f"no gateway {gateway_id!r}", code="unknown_gateway")
    return doc


@router.get("/gateways/{gateway_id}/devices/{device}/counters")
async def counters(gateway_id: str, device: str, request: Request) -> dict[str, Any]:
    """Per counter tag: good/scrap/total sums, first and last raw value, resets and
    continuity breaks."""
    require_read(await caller(request), gateway_id)
    async with request.app.state.db.sessions() as session:
        if await ingest.gateway_exists(session, gateway_id):
            return await ingest.device_counters(session, gateway_id, device)
    raise NotFound(f"no gateway {gateway_id!r}", code="unknown_gateway")


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = TooLarge(f"body over {limit} bytes; send smaller batches")
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
        raise BadRequest(f"{SENT_AT_HEADER} must be epoch milliseconds, got {value!r}",
                         code="bad_header") from None


def _wants_json(accept: str) -> bool:
    """JSON only when asked for ahead of msgpack; the default (a gateway) is msgpack."""
    best: tuple[float, str] | None = None
    for _i, media, q in weighted(accept):
        if media in MSGPACK_TYPES or media == "application/json":
            if best is None or q > best[0]:
                best = (q, media)
    return best is not None and best[1] == "application/json" and best[0] > 0
