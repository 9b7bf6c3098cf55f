"""The sync loop: drain the buffer's Outbox through an Uplink, oldest record first.

The uplinks (``buffer.uplink``) make one attempt per call; the ``Forwarder`` here is the only
retry loop (STYLE.md: the retry loop lives in the caller, in ``edge/``). It takes batches
from the Outbox oldest first, sends them, deletes what the cloud acknowledged (never more
than it sent), and after any error forgets its position and starts again from the oldest
unacked record, which is also where a restarted gateway starts (STYLE.md: "the buffer works
in transactions"). Its waits use ``buffer.backoff.Backoff`` (capped exponential, full jitter)
on the monotonic clock, like the device pollers.

What each uplink error makes it do::

    UplinkAuthError     stop (state ``auth_failed``) until ``resume()``; never spins
    UplinkTooLarge      halve the batch and try again at once
    UplinkUnavailable   back off and retry
    UplinkRejected      back off and retry, logged (records are never dropped)
    UplinkSeqConflict   the cloud holds our seqs from an earlier buffer (a lost buffer):
                        ``Outbox.rebase`` renumbers above the cloud's highest seq with a
                        ``gap`` record, then resend at once (backing off only when it
                        repeats: two gateways sharing one id would otherwise ping-pong)

Every batch carries the Outbox's incarnation (``Outbox.incarnation``: the numbering its
seqs belong to) when the Outbox has one, so the cloud can tell a new buffer from a replay.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from buffer.backoff import Backoff
from buffer.records import encode_batch_raw
from buffer.uplink import (
    Uplink,
    UplinkAuthError,
    UplinkError,
    UplinkRejected,
    UplinkSeqConflict,
    UplinkTooLarge,
)

log = structlog.get_logger(__name__)

ForwarderState = Literal["idle", "draining", "backing_off", "auth_failed"]



class StoredRowLike(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def body(self) -> bytes: ...


class _Backlog(Protocol):
    @property
    def backlog(self) -> int: ...


class DrainSource(Protocol):
    """What the Forwarder needs of the Outbox (buffer/store.py contract)."""

    async def stats(self) -> _Backlog: ...

    async def peek(self, *, max_records: int, max_bytes: int = ...,
                   after_seq: int | None = ...) -> Sequence[Any]: ...

    async def ack_through(self, seq: int) -> Any: ...


@dataclass
class ForwarderStats:
    """A snapshot for the status page. Times: ``*_at`` are wall-clock epoch seconds for
    display; durations come from the monotonic clock."""

    state: ForwarderState = "idle"
    last_ack_seq: int | None = None
    last_ack_at: float | None = None
    records_acked: int = 0       # seqs acknowledged since start (quota-dropped seqs included)
    batches_sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_error: str | None = None
    retry_in_s: float | None = None
    batch_records: int = 0
    in_flight: int = 0


class _Restart(Exception):
    """Internal: the cloud took part of what we sent; start again from the oldest."""


class Forwarder:
    """Drains an Outbox through an Uplink; the one task the daemon runs for sync.

    ``run()`` loops until cancelled: send batches (at most ``max_records`` and ``max_bytes``)
    oldest first, keep up to ``uplink.max_in_flight`` unconfirmed, ack the Outbox through
    what the cloud acknowledged (clamped to what was sent), and on errors back off with
    exponential backoff and full jitter (``backoff_base`` doubling to ``backoff_cap``
    seconds, on the event loop's monotonic clock). After any error the position is
    forgotten and the next pass starts from the oldest unacked record, which is also where
    a restarted gateway starts. 413 halves the batch; 401/403 stop until ``resume()``.
    """

    def __init__(self, outbox: DrainSource, uplink: Uplink, *, gateway: str,
                 max_records: int = 1000, max_bytes: int = 1 << 20,
                 backoff_base: float = 0.5, backoff_cap: float = 60.0,
                 idle_interval: float = 1.0, rng: random.Random | None = None) -> None:
        if max_records < 1 or max_bytes < 1:
            raise ValueError("max_records and max_bytes must be >= 1")
        self.outbox = outbox
        self.uplink = uplink
        self.gateway = gateway
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.idle_interval = idle_interval
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap,
                                rng=rng or random.Random())
        self._limit = max_records
        self._ok_at_limit = 0
        self._halved = False
        self._acked_floor: int | None = None  # seq below the first row seen, for counting
        self._state: ForwarderState = "idle"
        self._stats = ForwarderStats(batch_records=max_records)
        self._wake = asyncio.Event()
        self._resume = asyncio.Event()
        self._retry_at: float | None = None
        self._in_flight: deque[tuple[int, int]] = deque()

    # -- control

    def notify(self) -> None:
        """New records were appended: an idle Forwarder drains now instead of at its next
        poll. Cheap; call after every append."""
        self._wake.set()

    def resume(self) -> None:
        """After an auth failure (new token, config reload): re-read credentials and retry.
        Harmless in other states."""
        self._resume.set()
        self._wake.set()

    @property
    def state(self) -> ForwarderState:
        return self._state

    def stats(self) -> ForwarderStats:
        """A copy of the current figures (see ForwarderStats)."""
        s = self._stats
        retry_in = None
        if self._retry_at is not None and self._state == "backing_off":
            retry_in = max(0.0, self._retry_at - time.monotonic())
        return ForwarderStats(
            state=self._state, last_ack_seq=s.last_ack_seq, last_ack_at=s.last_ack_at,
            records_acked=s.records_acked, batches_sent=s.batches_sent,
            errors=dict(s.errors), consecutive_failures=s.consecutive_failures,
            last_error=s.last_error, retry_in_s=retry_in, batch_records=self._limit,
            in_flight=len(self._in_flight))

    # -- the loop

    async def run(self) -> None:
        """Drain forever; returns only by cancellation. Never raises for sync faults."""
        while True:
            if self._state == "auth_failed":
                await self._resume.wait()
                self._resume.clear()
                try:
                    await self.uplink.reload()
                except UplinkError as exc:
                    self._failed(exc)
                    continue
                log.info("uplink_resumed", gateway=self.gateway)
                self._state = "draining"
            self._wake.clear()
            try:
                await self.drain()
            except UplinkAuthError as exc:
                self._failed(exc)
                self._state = "auth_failed"
                self._resume.clear()  # only a resume() from now on counts
                continue
            except UplinkSeqConflict as exc:
                self._failed(exc)
                try:
                    rebased = await self._rebase(exc)
                except asyncio.CancelledError:
                    raise
                except Exception as err:  # the Outbox failing: back off and try again
                    self._failed(err)
                    await self._back_off()
                    continue
                if not rebased or self._stats.consecutive_failures > 2:
                    await self._back_off()
                continue
            except UplinkTooLarge as exc:
                self._failed(exc)
                if self._halved:
                    continue  # halved: try the smaller batch at once
                await self._back_off()
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # UplinkError, or the Outbox failing: never end the loop
                self._failed(exc)
                await self._back_off()
                continue
            self._state = "idle"
            try:
                await asyncio.wait_for(self._wake.wait(), self.idle_interval)
            except TimeoutError:
                pass

    async def drain(self) -> int:
        """One pass: send until the Outbox is empty and everything sent is confirmed.
        Returns the highest seq acked (0 when nothing was). Raises UplinkError (or the
        Outbox's error) on the first failure, after forgetting the position; no retries
        here — ``run`` retries."""
        acked_max = 0
        while True:
            try:
                acked_max = max(acked_max, await self._pass())
                return acked_max
            except _Restart:
                continue

    async def _pass(self) -> int:
        self._state = "draining"
        self._in_flight.clear()
        window = max(1, self.uplink.max_in_flight)
        after: int | None = None
        pass_start: int | None = None
        acked_in_pass = 0
        more = True
        try:
            while True:
                if self._in_flight and (len(self._in_flight) >= window or not more):
                    first, last = self._in_flight[0]
                    if await self.uplink.confirmed(first, last):
                        # The oldest batch of a pass that began at the oldest unacked
                        # record: everything through its last seq is in the cloud.
                        self._in_flight.popleft()
                        acked_in_pass = max(acked_in_pass, await self._ack(last, last))
                        continue
                    # The cloud took less than it was given.
                    if pass_start is not None and acked_in_pass >= pass_start:
                        raise _Restart
                    raise UplinkRejected(
                        f"the cloud did not acknowledge {first}..{last} (acknowledged "
                        f"through {self.uplink.last_acked_through}); will resend")
                if not more:
                    self._note_success()
                    return acked_in_pass
                kw: dict[str, int] = {"max_records": self._limit, "max_bytes": self.max_bytes}
                if after is not None:
                    kw["after_seq"] = after
                rows = await self.outbox.peek(**kw)
                if not rows:
                    more = False
                    continue
                if pass_start is None:
                    pass_start = rows[0].seq
                    if self._acked_floor is None:
                        self._acked_floor = pass_start - 1
                last = rows[-1].seq
                # what is still to come (in-memory counter, no query): the cloud marks its
                # reports provisional while a gateway's backlog is arriving
                backlog = (await self.outbox.stats()).backlog
                inc = getattr(self.outbox, "incarnation", None)
                payload = encode_batch_raw(
                    self.gateway, ((r.seq, r.ts, r.device, r.kind, r.body) for r in rows),
                    backlog=backlog, incarnation=None if inc is None else (inc.id, inc.since))
                try:
                    acked = await self.uplink.send(payload, last_seq=last)
                except UplinkTooLarge:
                    self._halved = len(rows) > 1
                    self._limit = max(1, len(rows) // 2)
                    self._ok_at_limit = 0
                    raise
                self._stats.batches_sent += 1
                self._in_flight.append((rows[0].seq, last))
                after = last
                acked_in_pass = max(acked_in_pass, await self._ack(acked, last))
                while self._in_flight and self._in_flight[0][1] <= acked:
                    self._in_flight.popleft()
                self._grow_limit()
        finally:
            self._in_flight.clear()

    async def _rebase(self, exc: UplinkSeqConflict) -> bool:
        """Renumber the Outbox above the cloud's highest seq (True), or False when the
        refusal was about an earlier numbering or the Outbox cannot rebase."""
        rebase = getattr(self.outbox, "rebase", None)
        if rebase is None:
            return False
        done = bool(await rebase(exc.cloud_last_seq, exc.incarnation))
        if done:
            # The old numbering's figures mean nothing for the new one.
            self._stats.last_ack_seq = None
            self._acked_floor = None
            log.warning("uplink_seq_rebased", gateway=self.gateway,
                        cloud_last_seq=exc.cloud_last_seq,
                        detail="the cloud held seqs of an earlier buffer; resending above them")
        return done

    async def _ack(self, acked: int, sent_through: int) -> int:
        """Ack the Outbox through what the cloud acknowledged, never past what was sent."""
        through = min(acked, sent_through)
        if through > (self._stats.last_ack_seq or 0):
            await self.outbox.ack_through(through)
            prev = self._stats.last_ack_seq
            if prev is None:
                prev = self._acked_floor
            self._stats.last_ack_seq = through
            self._stats.last_ack_at = time.time()
            if prev is not None:
                self._stats.records_acked += max(0, through - prev)
            # The cloud took records: the link works again now, not only once this pass
            # (which may be a long backlog drain) has ended.
            self._note_success()
        return through

    def _grow_limit(self) -> None:
        if self._limit >= self.max_records:
            return
        self._ok_at_limit += 1
        if self._ok_at_limit >= 32:  # the 413 may have been one odd batch: probe upwards
            self._limit = min(self.max_records, self._limit * 2)
            self._ok_at_limit = 0

    def _note_success(self) -> None:
        s = self._stats
        if s.consecutive_failures:
            log.info("uplink_recovered", gateway=self.gateway, after_failures=s.consecutive_failures)
        s.consecutive_failures = 0
        self._backoff.reset()
        self._retry_at = None

    def _failed(self, exc: BaseException) -> None:
        s = self._stats
        kind = exc.kind if isinstance(exc, UplinkError) else "buffer"
        s.errors[kind] = s.errors.get(kind, 0) + 1
        s.consecutive_failures += 1
        s.last_error = str(exc) or type(exc).__name__
        if isinstance(exc, UplinkAuthError):
            log.error("uplink_auth_failed", gateway=self.gateway, error=s.last_error,
                      action="stopped until the token is replaced and the config reloaded")
        elif isinstance(exc, UplinkTooLarge):
            log.warning("uplink_batch_too_large", gateway=self.gateway, error=s.last_error,
                        next_batch_records=self._limit)
        elif s.consecutive_failures == 1:
            log.error("uplink_failed", gateway=self.gateway, kind=kind, error=s.last_error)
        else:
            # Count repeats instead of flooding the journal.
            log.debug("uplink_failed_again", gateway=self.gateway, kind=kind,
                      failures=s.consecutive_failures)

    async def _back_off(self) -> None:
        self._state = "backing_off"
        delay = self._backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        await asyncio.sleep(delay)
        self._retry_at = None
