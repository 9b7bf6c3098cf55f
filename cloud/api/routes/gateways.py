"""What gateways call, and what people read about the gateways' sync:

- ``POST /api/v1/ingest``: a gateway's msgpack batch (cloud/ingest/store.py). Answers
  ``IngestOut`` ``{acked_through, stored, duplicates}`` in msgpack, or JSON when
  ``Accept`` prefers ``application/json`` (OpenAPI documents both with that schema).
- ``GET /api/v1/gateways?limit=&offset=`` (viewer and up): each gateway that is not
  revoked, by id, with its freshness (cloud/ingest/status.py ``gateway_freshness``, the
  rule the pages' "provisional" banner shows): ``state`` live / catching_up / silent /
  never, ``provisional`` (its data may still arrive: catching up or silent), ``last_seen``
  (a ``Timestamp``), ``last_seq``, ``newest_ts`` (epoch ms), ``lag_ms``,
  ``clock_skew_ms``, ``backlog``. The page's own ``provisional`` says whether any
  gateway's is now, so whether every report may still change (on every page of the list).
- ``GET /api/v1/ingest/dead-letters?limit=&offset=`` (viewer and up): batches the MQTT
  consumer parked after its retries (cloud/ingest/dead_letters.py), newest first.
- ``GET /api/v1/gateways/{id}``: the gateway's sync status (cloud/ingest/status.py).
- ``GET /api/v1/gateways/{id}/devices/{device}/counters``: counter sums and continuity.

A gateway's token may use exactly the ingest and its own gateway's status and counters;
every other route, ``GET /api/v1/gateways`` too, answers it 403
(tests/integration/test_gateway_token_scope.py walks them all). 401 (no, unknown or
revoked token) and 403 (another gateway's data) say why; a 401/403 must stop a gateway's
retries, so they are only used for exactly these causes.

Every answer is a named response model; cloud times (``created``, ``last_seen``,
``*_at``) are ``Timestamp`` (``2026-12-01T08:00:00Z``), record times (``ts``,
``newest_ts``) epoch ms.
"""

from __future__ import annotations

from typing import Final, Literal

import msgpack
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ConfigDict, Field

from buffer.records import RecordError, decode_batch
from cloud import ingest
from cloud.api.deps import Limit, Offset, Read, Viewer, caller
from cloud.api.paging import page_of_list
from cloud.api.schemas import EpochMs, Out, Page, Timestamp
from cloud.auth import NotAllowed, require_gateway, require_read
from cloud.core import clock
from cloud.core.errors import BadRequest, Invalid, NotFound, TooLarge, UnsupportedMedia
from cloud.core.fields import EPOCH_MS_MAX
from cloud.core.headers import weighted

DEFAULT_MAX_BODY: Final = 8 * 1024 * 1024
MSGPACK_TYPES: Final = frozenset({"application/msgpack", "application/x-msgpack"})
SENT_AT_HEADER: Final = "X-Plantsync-Sent-At"

router = APIRouter(prefix="/api/v1", tags=["gateways"])


# -- answers --------------------------------------------------------------------------

class IngestOut(Out):
    """The answer to a batch (msgpack, or JSON on request)."""

    acked_through: int = Field(description="every seq up to this is stored or explained: "
                                           "the gateway may drop them")
    stored: int = Field(description="records of this batch stored now")
    duplicates: int = Field(description="records of this batch stored before")


class GatewayFreshnessOut(Out):
    """Whether a gateway's data is still arriving (cloud/ingest/status.py)."""

    id: str
    state: Literal["live", "catching_up", "silent", "never"]
    provisional: bool = Field(description="its data may still arrive (catching up or "
                                          "silent): reports of its machines may change")
    last_seen: Timestamp | None = Field(description="its last batch; null: never")
    last_seq: int
    newest_ts: EpochMs | None = Field(description="the newest record's time")
    lag_ms: int | None = Field(description="how late the newest record reached the cloud")
    clock_skew_ms: int | None
    backlog: int | None = Field(description="records still queued at the gateway behind "
                                            "its last batch; null: it does not say")


class GatewaysPage(Page[GatewayFreshnessOut]):
    """The gateways' freshness, by id."""

    provisional: bool = Field(description="whether any gateway's data is provisional now "
                                          "(any item of the whole list)")


class GapRecordOut(Out):
    """A gap record the gateway sent: why seqs are missing (buffer/records.py)."""

    # A gateway's record body, not ours: a later record version may carry more fields,
    # and a status answer must not fail on them.
    model_config = ConfigDict(extra="allow")

    seq: int
    ts: EpochMs
    device: str
    dropped: int
    first_seq: int | None
    last_seq: int | None
    reason: str


class SeqGapOut(Out):
    """Seqs ``first_seq..last_seq`` (inclusive) the cloud does not hold."""

    first_seq: int
    last_seq: int
    missing: int
    before_first_record: bool = Field(description="below the first record it holds")
    explained: bool
    explained_by: list[GapRecordOut]


class ClockJumpOut(Out):
    """A wall-clock jump the gateway saw (NTP after boot, a reset RTC)."""

    seq: int
    ts: EpochMs
    jump_ms: int | None
    reason: str | None


class GatewayStatusOut(Out):
    """A gateway's sync status."""

    id: str
    created: Timestamp
    revoked_at: Timestamp | None
    last_seen: Timestamp | None
    last_seq: int
    records_stored: int
    missing: int
    gaps: list[SeqGapOut] = Field(description="oldest first; cut after the first "
                                              "thousand (gaps_truncated)")
    gaps_truncated: bool
    clock_skew_ms: int | None
    clock_skew_exact: bool | None
    backlog: int | None = Field(description="records still queued at the gateway behind "
                                            "its last batch; null: never said")
    backlog_at: Timestamp | None
    clock_jumps: list[ClockJumpOut]


class CounterTotalsOut(Out):
    good: int
    scrap: int
    total: int


class CounterBreakOut(Out):
    """A count record whose raw_before is not its tag's previous raw_after (no reset)."""

    seq: int
    ts: EpochMs
    after_seq: int
    expected_raw_before: int
    raw_before: int | None
    raw_after: int


class CounterTagOut(Out):
    tag: str
    counts: str = Field(description="good, scrap or total")
    good: int
    scrap: int
    total: int
    records: int
    first_seq: int
    first_raw: int
    last_seq: int
    last_raw: int
    resets: int
    breaks: list[CounterBreakOut]


class CountersOut(Out):
    """A device's counters: sums by what they count, and each tag's continuity."""

    gateway: str
    device: str
    totals: CounterTotalsOut
    tags: list[CounterTagOut]


# -- routes ---------------------------------------------------------------------------

@router.post("/ingest", response_model=None, responses={200: {
    "model": IngestOut, "description": "msgpack, or JSON when Accept prefers it",
    "content": {"application/msgpack": {"schema": {"$ref": "#/components/schemas/IngestOut"}}}}})
async def post_ingest(request: Request) -> Response:
    """Store a gateway's msgpack batch; answer {acked_through}. Idempotent."""
    received_ms = clock.now_ms()
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
        raise NotAllowed("other_gateway",
                         f"this token belongs to gateway {gateway_id!r} but the batch "
                         f"says {batch.gateway!r}; nothing was stored")
    sent_at = _sent_at(request.headers.get(SENT_AT_HEADER))
    result = await ingest.ingest_batch(request.app.state.db, gateway_id, batch,
                                       received_ms=received_ms, sent_at_ms=sent_at,
                                       appliers=request.app.state.appliers)
    answer = IngestOut(acked_through=result.acked_through, stored=result.stored,
                       duplicates=result.duplicates).model_dump()
    if _wants_json(request.headers.get("accept", "")):
        return JSONResponse(answer)
    return Response(msgpack.packb(answer), media_type="application/msgpack")


class DeadLetterOut(Out):
    """A batch the MQTT consumer could not store and parked (its payload stays in the
    database)."""

    id: int
    gateway_id: str
    first_seq: int
    last_seq: int
    records: int
    error: str = Field(description="the last failure")
    attempts: int = Field(description="tries to store it, resent batches included")
    first_at: Timestamp
    last_at: Timestamp


@router.get("/ingest/dead-letters")
async def dead_letters(_: Viewer, session: Read, limit: Limit = 50,
                       offset: Offset = 0) -> Page[DeadLetterOut]:
    """Batches the MQTT consumer parked after its retries, newest first."""
    items, total = await ingest.list_dead_letters(session, limit=limit, offset=offset)
    return Page[DeadLetterOut](items=[DeadLetterOut.model_validate(i) for i in items],
                               total=total, limit=limit, offset=offset)


@router.get("/gateways")
async def list_gateways(_: Viewer, session: Read, limit: Limit = 50,
                        offset: Offset = 0) -> GatewaysPage:
    """Each gateway that is not revoked, by id, with whether its data is still arriving
    (``provisional``); the page's ``provisional``: whether any gateway's is."""
    fresh = await ingest.gateway_freshness(session, clock.now_ms())
    items = [GatewayFreshnessOut(
        id=g["id"], state=g["state"], provisional=g["provisional"], last_seen=g["last_seen"],
        last_seq=g["last_seq"], newest_ts=g["newest_ts"], lag_ms=g["lag_ms"],
        clock_skew_ms=g["clock_skew_ms"], backlog=g["backlog"]) for g in fresh]
    return GatewaysPage.model_validate({**page_of_list(items, limit, offset),
                                        "provisional": any(g.provisional for g in items)})


@router.get("/gateways/{gateway_id}")
async def gateway(gateway_id: str, request: Request) -> GatewayStatusOut:
    """Sync status: last seq, records stored, seq gaps and their gap records,
    last seen, clock skew at the last batch."""
    require_read(await caller(request), gateway_id)
    async with request.app.state.db.sessions() as session:
        doc = await ingest.gateway_status(session, gateway_id)
    if doc is None:
        raise NotFound(f"no gateway {gateway_id!r}", code="unknown_gateway")
    return GatewayStatusOut.model_validate(doc)


@router.get("/gateways/{gateway_id}/devices/{device}/counters")
async def counters(gateway_id: str, device: str, request: Request) -> CountersOut:
    """Per counter tag: good/scrap/total sums, first and last raw value, resets and
    continuity breaks."""
    require_read(await caller(request), gateway_id)
    async with request.app.state.db.sessions() as session:
        if await ingest.gateway_exists(session, gateway_id):
            return CountersOut.model_validate(
                await ingest.device_counters(session, gateway_id, device))
    raise NotFound(f"no gateway {gateway_id!r}", code="unknown_gateway")


async def _read_capped(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_big = TooLarge(f"body over {limit} bytes; send smaller batches")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # ClientDisconnect: cloud/api/errors.py
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _sent_at(value: str | None) -> int | None:
    """The header's epoch ms, 0..9999-12-31 (its skew is stored in a BigInteger column):
    anything else is a 400, which a gateway does not retry, never a 500, which it would
    retry forever."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) > EPOCH_MS_MAX:
        raise BadRequest(f"{SENT_AT_HEADER} must be epoch milliseconds 0..{EPOCH_MS_MAX}, "
                         f"got {value[:40]!r}", code="bad_header", field=SENT_AT_HEADER)
    return int(text)


def _wants_json(accept: str) -> bool:
    """JSON only when asked for ahead of msgpack; the default (a gateway) is msgpack."""
    best: tuple[float, str] | None = None
    for _i, media, q in weighted(accept):
        if media in MSGPACK_TYPES or media == "application/json":
            if best is None or q > best[0]:
                best = (q, media)
    return best is not None and best[1] == "application/json" and best[0] > 0
