"""The durable store-and-forward outbox (SQLite in WAL mode, on one dedicated thread).

INTERFACE CONTRACT — implemented by the buffer work; the uplinks and the daemon use only this.

    async with Outbox(path, gateway="gw-1", max_bytes=512 * 2**20) as outbox:
        seqs = await outbox.append(Cycle(records=[...], baselines={("cnc-03", "part_count"): 1234}))
        base = await outbox.baselines()                # {(device, tag): raw}
        rows = await outbox.peek(max_records=1000, max_bytes=1 << 20)          # oldest first
        rows = await outbox.peek(after_seq=rows[-1].seq, max_records=1000)     # next window (MQTT)
        await outbox.ack_through(seq)                  # delete everything <= seq
        st = await outbox.stats()

- ``append`` is one ``BEGIN IMMEDIATE`` transaction for the whole poll cycle: it assigns
  seq (strictly increasing, never reused, also after deleting acked rows and restarts),
  stores the records and the counter baselines together, and returns the seqs. If it raises
  ``BufferWriteError`` (disk full, failed fsync, I/O error) nothing of the cycle is stored.
- ``peek`` never loads more than asked; rows are ``StoredRow(seq, ts, device, kind, body)``
  with ``body`` the stored msgpack bytes (``buffer.records.encode_batch_raw`` sends them as is).
- ``ack_through(seq)`` is idempotent; acking beyond the last stored seq is an error.

Errors (all derive from ``OutboxError``; the root is deliberately not called ``BufferError``,
which would shadow the Python builtin of that name and make a forgotten import catch the
wrong exception silently):

    OutboxError                   root; also: cannot open (permissions, newer schema)
     ├── BufferWriteError         a write did not happen (disk full, failed fsync, I/O error)
     ├── BufferCorrupt            the file is damaged and could not be moved aside, or was
     │                            found damaged while running (close and reopen: the reopen
     │                            moves it aside and starts a fresh buffer)
     ├── BufferGatewayMismatch    the buffer belongs to another gateway id
     ├── BufferLocked             another process has this buffer open
     └── BufferAckError           ack_through beyond the last seq ever stored

Durability
----------
- ``synchronous="FULL"`` (default): a cycle ``append`` returned for survives a process kill
  and a power cut (the WAL is fsynced at every commit). A cycle that raised is not stored.
- ``synchronous="NORMAL"``: commits are not fsynced; the WAL is fsynced only when it is
  checkpointed (which under NORMAL also fsyncs the database file): automatically every
  ~``wal_limit/2`` bytes of changes, at close, and whenever ``peek`` is asked for records
  beyond the *durable mark*. ``peek`` hands out only records up to that mark
  (``stats().durable_through``): when the rows asked for go beyond it, it first runs
  ``PRAGMA wal_checkpoint(PASSIVE)`` and moves the mark to the last seq only if that
  checkpoint completed (every WAL frame copied into the fsynced database file). So a
  record is never sent before it and the counter baselines of its cycle are on the disk.
  A process kill loses nothing. A power cut or kernel crash can roll back the cycles
  committed since the last completed checkpoint: never records the uplink was given (so
  the cloud never holds a record the buffer lost), and records and baselines roll back
  together, so the first poll after the restart derives its count from the last durable
  baseline, covering the lost cycles' counter movement: no count is doubled. The other
  records of those cycles (samples, states, alarms, limits) are lost: at most
  ~``wal_limit/2`` bytes of WAL (8 MiB with the default 512 MiB quota), in practice the
  cycles committed since the uplink last caught up. The database is never corrupt. The
  cost is about one checkpoint (two fsyncs) per uplink batch instead of one fsync per poll
  cycle, for SD cards. After an unclean end of a NORMAL run the next open still
  skips the reserved seqs (the sidecar cannot tell a kill from a power cut; see below).

Seq never reused: the ``<name>.seq`` sidecar
--------------------------------------------
A small JSON file beside the database holds a *reservation*: ``seq_reserved_through`` is
fsynced (write temp, fsync, rename, fsync dir) *before* any commit uses a seq above it, in
steps of ``SEQ_RESERVE_STEP``; so every seq the cloud can ever have seen is <= it. When the
database is moved aside as corrupt, or is missing/empty while the sidecar exists, the fresh
buffer starts above the reservation (no guessed safety margin needed). It also records
whether the last run closed cleanly: after an unclean end of a ``NORMAL`` run the seqs up to
the reservation are skipped and a ``gap`` record says so. Without a sidecar and with an
unreadable database, the fallback floor is ``now_ms * 1000`` (above any seq a gateway at
< 1000 records/ms could have made, assuming a sane clock), logged at error.

Disk limit (honest)
-------------------
``max_bytes`` (``buffer_max_mb``, at least 2 MiB) is split: ``wal_limit = clamp(max_bytes /
8, 512 KiB, 16 MiB)`` for the WAL, ``SIDE_FILES_RESERVE`` (64 KiB) for ``-shm``, the sidecar
and the lock file, and the rest (``content_budget``) for database content, measured as
``(page_count - freelist_count) * page_size`` (SQLite reuses freed pages and never shrinks
the file without VACUUM, so the file size is the high-water mark of content). After a
cycle, if content exceeds the budget the oldest ``sample`` records (never of that cycle) are
deleted and one ``gap`` record is written, in the same transaction: everything above the
budget, and up to 5 % of the budget below it but at most ``wal_limit/8`` bytes of rows per
transaction (so one drop never floods the WAL; the next over-budget cycle drops the next
slice). On disk: database file <= content_budget + one cycle; WAL <= wal_limit/2 + the
largest single transaction before a checkpoint, truncated to <= wal_limit after it; -shm
32 KiB. A transaction is one cycle plus at most one drop, and a drop rewrites about the
pages of the rows it deletes, so database + WAL + -shm + sidecar + lock stay <=
``max_bytes`` + one cycle (tests/unit/test_store.py measures it at 2 MiB). The exception:
samples so rare among kept records that each dropped sample sits on its own page make a
drop rewrite more WAL than it frees, and the WAL passes its share until the next
checkpoint truncates it.
When only non-droppable records are left, they are all kept, the file grows past the
quota (logged at error once as ``buffer_over_quota``, ``stats().over_quota`` true until
content is back under the budget), and the real limit becomes the free disk space, at
which point ``append`` raises ``BufferWriteError``. Files moved aside as ``.corrupt-*``
(see Start-up) are kept, never deleted, and are outside the quota: remove them by hand
once looked at.

Memory is bounded whatever the backlog: peek streams at most what is asked, acks delete in
chunks, and SQLite's page cache is its default (~2 MiB).

Start-up
--------
``PRAGMA quick_check`` runs at open. A corrupt, truncated, non-SQLite or foreign SQLite file
is renamed ``<name>.corrupt-<UTC timestamp>`` together with its ``-wal``/``-shm`` (never
deleted), logged at error, and a fresh buffer starts whose first record is a ``gap`` with
reason ``buffer_corrupt: moved to <file>: ...``; ``dropped`` is 0 and ``first_seq``/
``last_seq`` are null because the number of unsent records in it is unknown.

Incarnations and rebase (a lost buffer)
---------------------------------------
The buffer's numbering has an ``incarnation`` (``meta.incarnation``, random, made with the
buffer; ``incarnation_since`` its first seq, 0 for a buffer from before incarnations) that
the Forwarder sends with every batch. A buffer made without its sidecar (``rm
buffer.db*``), or with a sidecar that cannot be read (logged ``buffer_sidecar_unreadable``
and, without a database, ``buffer_lost`` with a ``gap`` record), cannot know which seqs the
cloud holds; the cloud refuses its numbering (``seq_conflict`` with its highest seq) and
``rebase(cloud_last_seq, incarnation)`` renumbers every stored record above it behind a
``gap`` record (reason ``buffer_lost``) under a new incarnation, in one transaction.

Disk full
---------
A 1 MiB reserve file ``.<name>.reserve`` (outside ``max_bytes``, not one of ``<name>*``) is
made when there is room. When the disk is full: an ack whose deletes fail truncates the WAL
and releases the reserve, then deletes again (so what the cloud holds can always be freed);
an open that cannot create ``-wal``/``-shm`` releases it and opens again; an open that cannot
rewrite the sidecar runs on the old reservation when it still covers the seqs to come. While
on the released reserve (``stats().disk_full``), cycles are refused while less than half of
it is free, and the WAL is truncated after each cycle. The reserve is remade (and
``disk_full`` cleared) once 4 MiB are free again.

Threading (why not aiosqlite's connection object)
-------------------------------------------------
The connection lives on one dedicated worker thread — the model aiosqlite uses — but each
public operation runs as *one* function there: a whole ``BEGIN IMMEDIATE ... COMMIT`` with its
rollback. aiosqlite would need 4-6 thread round trips per cycle, and a task cancelled between
them leaves a transaction open on the shared connection; here a transaction cannot be
interleaved with a ``peek`` of another task (which would see uncommitted seqs and could send
records that are then rolled back) nor cut in half by cancellation, and the group commit is
~30 % faster. aiosqlite stays a dependency of the cloud side.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import structlog

from buffer.records import (
    DROPPABLE_KINDS,
    INT64_MAX,
    INT64_MIN,
    Record,
    RecordError,
    encode_body,
    validate_fields,
)

log = structlog.get_logger(__name__)


class OutboxError(Exception):
    """Root of the outbox's errors."""


class BufferWriteError(OutboxError):
    """A write did not happen (disk full, failed fsync, I/O error). Nothing of it is stored;
    the outbox stays usable and the caller retries the same data."""


class BufferCorrupt(OutboxError):
    """The buffer file is damaged (and could not be moved aside, or was found damaged while
    running: close the outbox and open it again, which moves it aside)."""


class BufferGatewayMismatch(OutboxError):
    """The buffer was written by another gateway id."""


class BufferLocked(OutboxError):
    """Another process has this buffer open."""


class BufferAckError(OutboxError):
    """``ack_through`` named a seq this buffer never stored (a cloud of another gateway or
    of a buffer from before a reset)."""


SCHEMA_VERSION: Final = 1
SEQ_RESERVE_STEP: Final = 1_000_000
ACK_CHUNK_ROWS: Final = 5_000
# Most sample rows the quota reads per step while picking the oldest ones to drop; how many
# it drops is sized in bytes (see _apply_quota), so small quotas drop only what they must.
QUOTA_DROP_CHUNK_ROWS: Final = 2_000
TRUNCATE_AFTER_ACKED_ROWS: Final = 50_000
# The disk-full reserve (``.<name>.reserve``, outside buffer_max_mb): released when the disk
# is full so that acks (deletes need WAL frames) and a start-up (-wal, -shm) can still write.
RESERVE_BYTES: Final = 1 << 20
# Remake a released reserve only once this much is free again, checked at most this often.
_RESERVE_REMAKE_FREE: Final = 4 * RESERVE_BYTES
_RESERVE_CHECK_S: Final = 5.0
DEFAULT_PEEK_BYTES: Final = 1 << 20
MIN_MAX_BYTES: Final = 2 * 2**20
# Kept out of the content budget for the files beside the database: -shm (32 KiB for a WAL
# of up to ~4,000 frames), the .seq sidecar and the .lock file.
SIDE_FILES_RESERVE: Final = 64 * 1024
_PEEK_FETCH: Final = 256
# msgpack framing of one record in a batch besides device, kind and body (upper bound).
_ROW_OVERHEAD: Final = 48
# Rough on-disk cost of a stored row besides body and device: kind, seq/ts, cell and index.
_ROW_COST: Final = 24
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26

Synchronous = Literal["FULL", "NORMAL"]
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one poll cycle stores atomically: the records of all devices and the counter
    baselines ``{(device, tag): raw}`` they were derived from."""

    records: Sequence[Record] = ()
    baselines: Mapping[tuple[str, str], int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StoredRow:
    seq: int
    ts: int
    device: str
    kind: str
    body: bytes  # msgpack of the body map, as encode_batch_raw wants it


@dataclass(frozen=True, slots=True)
class BufferStats:
    backlog: int                 # records stored and not acked
    first_seq: int | None        # oldest stored seq
    last_seq: int                # last seq ever assigned (0 before the first record)
    oldest_ts: int | None        # ts of the oldest stored record
    disk_bytes: int              # database + WAL + -shm file sizes
    dropped_samples_total: int   # samples dropped by the quota, over the buffer's life
    over_quota: bool             # only non-droppable records left and still over quota
    last_error: str | None       # the last write error, cleared by the next good write
    acked_through: int = 0
    content_bytes: int = 0       # (page_count - freelist_count) * page_size
    content_budget: int = 0
    wal_bytes: int = 0
    write_errors_total: int = 0
    synchronous: str = "FULL"    # as the live connection reports it (PRAGMA synchronous)
    journal_size_limit: int = 0  # as the live connection reports it (the WAL's cap)
    durable_through: int = 0     # NORMAL: highest seq fsynced into the database file
    disk_full: bool = False      # the last write failed for space, or the reserve is in use


@dataclass(frozen=True, slots=True)
class Incarnation:
    """Which numbering of this gateway's seqs the buffer's records belong to (sent with
    every batch, ARCHITECTURE.md "Sync"): ``id`` is random, made when the numbering began;
    ``since`` its first seq, 0 for a buffer from before incarnations (its numbering
    continues what the cloud already knows)."""

    id: str
    since: int


@dataclass(frozen=True, slots=True)
class _Sidecar:
    gateway: str
    reserved: int
    clean_close_seq: int | None
    synchronous: str


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records ("
    " seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, device TEXT NOT NULL,"
    " kind TEXT NOT NULL, body BLOB NOT NULL)",
    # Partial index: the quota finds the oldest droppable rows without scanning kept ones.
    "CREATE INDEX IF NOT EXISTS records_droppable ON records(seq) WHERE kind = 'sample'",
    # raw has no declared type on purpose: a uint64 above int64 is stored as text, and a
    # NUMERIC affinity would turn that text into a lossy REAL.
    "CREATE TABLE IF NOT EXISTS baselines ("
    " device TEXT NOT NULL, tag TEXT NOT NULL, raw, PRIMARY KEY (device, tag)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
)
assert DROPPABLE_KINDS == frozenset({"sample"}), "records_droppable index names the kinds"
_INSERT = "INSERT INTO records(seq, ts, device, kind, body) VALUES (?, ?, ?, ?, ?)"


class Outbox:
    """The gateway's durable outbox. An async context manager; one per buffer file and
    process (a lock file refuses a second). Operations run one at a time, in call order,
    each as one function on the outbox's database thread; cached counters are only changed
    there, after the commit they describe."""

    def __init__(self, path: str | os.PathLike[str], *, gateway: str, max_bytes: int,
                 synchronous: Synchronous = "FULL") -> None:
        if not gateway:
            raise ValueError("gateway id must not be empty")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes {max_bytes} is below the minimum {MIN_MAX_BYTES} "
                             "(buffer_max_mb >= 2)")
        self.path = Path(path)
        self.gateway = gateway
        self.max_bytes = max_bytes
        self.synchronous: Synchronous = synchronous
        self.wal_limit = min(max(max_bytes // 8, 512 * 1024), 16 * 2**20)
        self.content_budget = max_bytes - self.wal_limit - SIDE_FILES_RESERVE
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._page_size = 4096
        self._last_seq = 0
        self._acked_through = 0
        self._backlog = 0
        self._dropped_total = 0
        self._reserved = 0
        self._over_quota = False
        self._over_quota_appends = 0
        self._last_error: str | None = None
        self._incarnation = Incarnation("", 0)
        self._reserve_held = False
        self._reserve_checked = 0.0  # monotonic time of the last attempt to remake it
        self._disk_full = False
        self._write_errors = 0
        self._failing_since_ok = 0
        self._acked_since_truncate = 0
        # NORMAL only: every seq <= this is in the fsynced database file (a completed
        # checkpoint); peek hands out nothing above it. 0 at open: a WAL left by a killed
        # process may not be on the disk yet.
        self._durable_through = 0
        self._measured = 0           # content bytes at the last page measurement
        self._unmeasured = 0         # bytes appended since (estimate)

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Open (create, check, recover) the buffer. Raises BufferGatewayMismatch,
        BufferLocked, BufferCorrupt (damaged and cannot be moved aside), OutboxError."""
        if self._executor is not None:
            raise OutboxError(f"{self.path}: the outbox is already open")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="plantsync-outbox")
        try:
            await self._run(self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    async def close(self) -> None:
        """Checkpoint, truncate the WAL, mark a clean shutdown in the sidecar, close.
        Idempotent."""
        if self._executor is None:
            return
        try:
            await self._run(self._close_sync)
        finally:
            self._executor.shutdown(wait=True)
            self._executor = None

    # ---------------------------------------------------------------- the contract

    async def append(self, cycle: Cycle) -> list[int]:
        """Store one poll cycle atomically and return the seqs of its records, in order.

        Records are validated first (``RecordError``, nothing stored: a record the cloud
        would reject must not block the queue). One ``BEGIN IMMEDIATE`` transaction stores
        records and baselines together and applies the quota. Raises ``BufferWriteError``
        (nothing of the cycle stored; the outbox stays usable; retry the same cycle) or
        ``BufferCorrupt``. Not idempotent: a retried cycle after success is stored twice.
        If the calling task is cancelled, the cycle is either wholly stored or not at all.
        """
        rows, base_rows = _prepare(cycle)
        if not rows and not base_rows:
            return []
        return await self._run(self._append_sync, rows, base_rows)

    async def baselines(self) -> dict[tuple[str, str], int]:
        """The stored counter baselines ``{(device, tag): raw}``, as of the last append."""
        return await self._run(self._baselines_sync)

    async def peek(self, max_records: int, max_bytes: int = DEFAULT_PEEK_BYTES,
                   after_seq: int | None = None) -> list[StoredRow]:
        """The oldest stored records (after ``after_seq`` when given), oldest first: at most
        ``max_records``, and no more once their encoded size would pass ``max_bytes`` (an
        upper bound of their size in ``encode_batch_raw``, without the ~40-byte batch
        header). The first row is always returned however big, so one large record cannot
        block the queue. Reads in chunks of 256 rows and stops early; never loads the
        backlog. Under ``synchronous="NORMAL"`` it returns only records already fsynced,
        checkpointing first when the window asked for goes beyond them (see Durability), so
        it may return fewer rows than are stored. Changes no record; raises
        ``BufferCorrupt``, ``BufferWriteError`` (NORMAL: the checkpoint's fsync failed) or
        ``OutboxError``."""
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        return await self._run(self._peek_sync, max_records, max_bytes, after_seq or 0)

    async def ack_through(self, seq: int) -> int:
        """Delete every stored record with seq <= ``seq`` (the cloud's ``acked_through``),
        in chunks of ``ACK_CHUNK_ROWS`` per transaction; returns how many were deleted.
        Idempotent. Raises ``BufferAckError`` when ``seq`` is above the last seq ever
        assigned, ``BufferWriteError`` when a delete failed (nothing lost; ack again)."""
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        return await self._run(self._ack_sync, seq)

    async def stats(self) -> BufferStats:
        """A snapshot for status and health: cheap (index lookups and file sizes)."""
        return await self._run(self._stats_sync)

    async def integrity_check(self) -> list[str]:
        """``PRAGMA integrity_check`` (full, O(size)): ``[]`` when ok, else the problems."""
        return await self._run(self._integrity_sync)

    @property
    def incarnation(self) -> Incarnation:
        """The numbering the stored records belong to (sent with every batch)."""
        return self._incarnation

    async def rebase(self, cloud_last_seq: int, incarnation: str | None) -> bool:
        """The cloud refused our numbering (``seq_conflict``: it already holds seqs through
        ``cloud_last_seq`` of this gateway from an earlier buffer, and ours reuse them).
        In one transaction: renumber every stored record above ``cloud_last_seq`` (oldest
        first, order and content kept), write a ``gap`` record (reason ``buffer_lost``)
        just below them, and start a new incarnation whose ``since`` is that gap's seq.
        Returns False and changes nothing when ``incarnation`` is not the current one (a
        late answer to a batch of an earlier numbering). Raises ``BufferWriteError``."""
        if cloud_last_seq < 0:
            raise ValueError(f"cloud_last_seq must be >= 0, got {cloud_last_seq}")
        return await self._run(self._rebase_sync, cloud_last_seq, incarnation)

    # ---------------------------------------------------------------- on the DB thread

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise OutboxError(f"{self.path}: the outbox is not open (use `async with Outbox(...)`)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args))

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise OutboxError(f"{self.path}: the outbox is not open")
        return self._con

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _acquire_lock(self.path)
        try:
            try:
                self._open_locked()
            except (OutboxError, sqlite3.Error, OSError) as exc:
                # A full disk: -wal and -shm (and the sidecar) could not be written. Give the
                # reserve back to the file system and try once more (run degraded).
                if not (_space_problem(exc) and self._release_reserve("opening the buffer")):
                    raise
                if self._con is not None:
                    self._con.close()
                    self._con = None
                self._open_locked()
            self._ensure_reserve()
        except BaseException:
            if self._con is not None:
                self._con.close()
                self._con = None
            _release_lock(self._lock_fd)
            self._lock_fd = None
            raise

    def _close_sync(self) -> None:
        con, self._con = self._con, None
        if con is None:
            return
        try:
            try:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._write_sidecar(self._reserved, self._last_seq)
            except (sqlite3.Error, OSError) as exc:
                log.warning("buffer_close_unclean", path=str(self.path), error=str(exc))
        finally:
            con.close()
            _release_lock(self._lock_fd)
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        # Autocommit mode: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def _open_locked(self) -> None:
        sidecar, sidecar_problem = _read_sidecar(_sidecar_path(self.path))
        if sidecar is not None and sidecar.gateway != self.gateway:
            raise BufferGatewayMismatch(
                f"{_sidecar_path(self.path)}: belongs to gateway {sidecar.gateway!r} but this "
                f"gateway is {self.gateway!r}; set [gateway].id = {sidecar.gateway!r}, or give "
                "this gateway its own data_dir")
        existed = _size(self.path) > 0 or _size(Path(f"{self.path}-wal")) > 0
        problem = self._connect_and_check() if existed else None
        moved: Path | None = None
        salvage: int | None = None
        if problem is not None:
            if self._con is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._con.close()
                self._con = None
            salvage = _salvage_last_seq(self.path)
            try:
                moved = _move_aside(self.path)
            except OSError as exc:
                raise BufferCorrupt(
                    f"{self.path}: damaged ({problem}) and could not be moved aside ({exc}); "
                    "move it away by hand to start a fresh buffer") from exc
            log.error("buffer_corrupt_moved_aside", path=str(self.path), moved_to=str(moved),
                      problem=problem)
        if self._con is None:
            self._con = self._connect()
        con = self._con
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise OutboxError(f"{self.path}: cannot switch to WAL journal mode (got {mode})")
        self._page_size = int(con.execute("PRAGMA page_size").fetchone()[0])
        for pragma in (f"PRAGMA synchronous={self.synchronous}",
                       f"PRAGMA journal_size_limit={self.wal_limit}",
                       "PRAGMA wal_autocheckpoint="
                       f"{max(64, self.wal_limit // 2 // self._page_size)}",
                       "PRAGMA busy_timeout=5000",
                       "PRAGMA temp_store=MEMORY"):
            con.execute(pragma)
        live = self._live_pragmas()
        if live != (self.synchronous, self.wal_limit):
            raise OutboxError(f"{self.path}: SQLite did not take synchronous={self.synchronous}, "
                              f"journal_size_limit={self.wal_limit} (has {live})")

        now = _now_ms()
        gaps: list[dict[str, Any]] = []
        con.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                con.execute(stmt)
            meta = self._read_meta()
            fresh = "gateway" not in meta
            if fresh:
                if moved is not None:
                    candidates = [c for c in (sidecar.reserved if sidecar else None, salvage)
                                  if c is not None]
                    if candidates:
                        base = max(candidates)
                    else:
                        base = now * 1000
                        log.error("buffer_seq_floor_from_clock", path=str(self.path), base=base)
                    gaps.append({"dropped": 0, "first_seq": None, "last_seq": None,
                                 "reason": f"buffer_corrupt: moved to {moved.name}: {problem}; "
                                           "its unsent records are lost, how many is unknown"})
                elif sidecar is not None:
                    base = sidecar.reserved
                    gaps.append({"dropped": 0, "first_seq": None, "last_seq": None,
                                 "reason": f"buffer_lost: {self.path.name} was missing or empty "
                                           f"although seqs up to {sidecar.reserved} were "
                                           "reserved; unsent records lost, how many is unknown"})
                    log.error("buffer_lost", path=str(self.path), reserved=sidecar.reserved)
                elif sidecar_problem is not None:
                    # The sidecar is garbage and the database is gone: which seqs the cloud
                    # saw is unknown here. Start a new numbering; the cloud refuses it with
                    # a seq_conflict naming its highest seq and the Forwarder rebases above
                    # it (rebase()), so nothing is acked as a duplicate of older records.
                    base = 0
                    gaps.append({"dropped": 0, "first_seq": None, "last_seq": None,
                                 "reason": f"buffer_lost: {self.path.name} was missing or "
                                           f"empty and its .seq sidecar unreadable "
                                           f"({sidecar_problem}); unsent records lost, how "
                                           "many is unknown"})
                    log.error("buffer_lost", path=str(self.path), sidecar=sidecar_problem,
                              detail="new seq numbering; the cloud says where to resume")
                else:
                    base = 0
                con.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("gateway", self.gateway), ("schema_version", SCHEMA_VERSION),
                     ("last_seq", base), ("acked_through", 0), ("dropped_samples_total", 0),
                     ("created_ms", now), ("incarnation", secrets.token_hex(8)),
                     ("incarnation_since", base + 1)])
                meta = self._read_meta()
            elif sidecar_problem is not None:
                log.warning("buffer_sidecar_rewritten", path=str(_sidecar_path(self.path)),
                            problem=sidecar_problem,
                            detail="the database holds the last seq; the sidecar is rewritten")
            if "incarnation" not in meta:
                # A buffer from before incarnations: its numbering continues what the
                # cloud knows (since 0), which the cloud accepts only as the first one.
                con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                                [("incarnation", secrets.token_hex(8)), ("incarnation_since", 0)])
                meta = self._read_meta()
            last_seq = max(int(meta["last_seq"]), self._max_seq())
            if (not fresh and sidecar is not None and sidecar.synchronous == "NORMAL"
                    and sidecar.clean_close_seq != last_seq and sidecar.reserved > last_seq):
                # The last run used NORMAL and did not close cleanly: a power cut may have
                # rolled back commits whose records were already sent. Never reuse those seqs.
                gaps.append({"dropped": 0, "first_seq": last_seq + 1,
                             "last_seq": sidecar.reserved,
                             "reason": "unclean_shutdown: synchronous=NORMAL; seqs skipped so "
                                       "none that may have been sent before a power cut is "
                                       "reused"})
                log.warning("buffer_unclean_normal_shutdown", path=str(self.path),
                            last_seq=last_seq, skipped_to=sidecar.reserved)
                last_seq = sidecar.reserved
            reserved = max(last_seq + len(gaps), sidecar.reserved if sidecar else 0)
            # A fresh reservation before any seq of this run is committed; clean_close_seq
            # None marks the run as open until close() says otherwise.
            try:
                self._write_sidecar(reserved + SEQ_RESERVE_STEP, None)
                self._reserved = reserved + SEQ_RESERVE_STEP
            except OSError as exc:
                if not (_space_problem(exc) and sidecar is not None
                        and sidecar.reserved > last_seq + len(gaps)):
                    raise
                # A full disk, and the old reservation still covers what comes: run on it
                # (degraded) rather than not at all; appends renew it once space is back.
                self._reserved = sidecar.reserved
                self._disk_full = True
                self._failing_since_ok = 1   # the next good write says it recovered
                self._last_error = (f"{_sidecar_path(self.path)}: not rewritten at start-up, "
                                    f"the disk is full ({exc}); running on the old "
                                    "reservation: free space on "
                                    f"{self.path.parent}")
                log.error("buffer_disk_full", path=str(self.path), error=self._last_error)
            for gap in gaps:
                last_seq += 1
                con.execute(_INSERT, (last_seq, now, self.gateway, "gap", encode_body(gap)))
            if last_seq != int(meta["last_seq"]):
                # (only when it changed: on a full disk an open must not need a WAL frame)
                con.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
            con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            raise
        self._last_seq = last_seq
        self._acked_through = int(meta["acked_through"])
        self._dropped_total = int(meta["dropped_samples_total"])
        self._incarnation = Incarnation(str(meta["incarnation"]), int(meta["incarnation_since"]))
        self._backlog = int(con.execute("SELECT count(*) FROM records").fetchone()[0])
        self._content_bytes()
        log.info("buffer_opened", path=str(self.path), gateway=self.gateway,
                 backlog=self._backlog, last_seq=self._last_seq,
                 synchronous=self.synchronous, max_bytes=self.max_bytes)

    def _connect_and_check(self) -> str | None:
        """Connect to an existing file and check it. Returns what is wrong, or None.
        Raises for problems that are not damage (another gateway, newer schema, I/O)."""
        try:
            self._con = self._connect()
            rows = self._con.execute("PRAGMA quick_check").fetchall()
            if [tuple(r) for r in rows] != [("ok",)]:
                return "quick_check: " + "; ".join(str(r[0]) for r in rows[:5])
            tables = {str(r[0]) for r in self._con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not tables:
                return None  # an empty SQLite file: treat as new
            if not {"records", "baselines", "meta"} <= tables:
                return f"not a plantsync buffer (tables: {', '.join(sorted(tables))})"
            meta = self._read_meta()
        except sqlite3.DatabaseError as exc:
            if _is_corrupt(exc):
                return f"{_errname(exc)}: {exc}"
            raise OutboxError(f"{self.path}: cannot open the buffer: {exc}") from exc
        stored_gw = meta.get("gateway")
        if stored_gw is None or "last_seq" not in meta:
            return "not a plantsync buffer (meta has no gateway/last_seq)"
        if stored_gw != self.gateway:
            raise BufferGatewayMismatch(
                f"{self.path}: belongs to gateway {stored_gw!r} but this gateway is "
                f"{self.gateway!r}; set [gateway].id = {stored_gw!r}, or give this gateway "
                "its own data_dir (the unsent records in this file would otherwise be lost)")
        version = int(meta.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise OutboxError(
                f"{self.path}: buffer schema version {version} is newer than this plantsync "
                f"understands ({SCHEMA_VERSION}); upgrade plantsync, do not downgrade it")
        return None

    def _append_sync(self, rows: list[tuple[int, str, str, bytes]],
                     base_rows: list[tuple[str, str, Any]]) -> list[int]:
        con = self._db()
        first = self._last_seq + 1
        last = self._last_seq + len(rows)
        if self._disk_full and not self._reserve_held:
            self._keep_room_for_acks()
        try:
            con.execute("BEGIN IMMEDIATE")
            if rows:
                con.executemany(_INSERT, [(first + i, *row) for i, row in enumerate(rows)])
            if base_rows:
                con.executemany(
                    "INSERT INTO baselines(device, tag, raw) VALUES (?, ?, ?) "
                    "ON CONFLICT(device, tag) DO UPDATE SET raw = excluded.raw", base_rows)
            # meta.last_seq is not written here (one statement less per cycle): max(seq) of
            # the table is the truth while rows exist; ack_through writes meta.last_seq before
            # deleting, and the quota never deletes the newest row.
            new_last, dropped = self._apply_quota(last, first, _cycle_bytes(rows))
            if new_last > self._reserved:
                self._write_sidecar(new_last + SEQ_RESERVE_STEP, None)
                self._reserved = new_last + SEQ_RESERVE_STEP
            con.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._after_failure()
            raise self._write_error(exc, f"storing a poll cycle of {len(rows)} records "
                                         f"and {len(base_rows)} baselines") from exc
        except BaseException:
            self._after_failure()
            raise
        self._last_seq = new_last
        self._backlog += len(rows) + (new_last - last) - dropped
        self._dropped_total += dropped
        if self._disk_full and not self._reserve_held:
            # On the reserve: give the WAL's space back after each cycle (its pages are in
            # the database now, in pages acks freed), so the next cycle and acks find room.
            self._checkpoint_truncate()
        self._note_ok()
        return list(range(first, last + 1))

    def _baselines_sync(self) -> dict[tuple[str, str], int]:
        try:
            rows = self._db().execute("SELECT device, tag, raw FROM baselines").fetchall()
        except sqlite3.Error as exc:
            raise self._read_error(exc, "reading counter baselines") from exc
        return {(str(d), str(t)): int(r) for d, t, r in rows}

    def _peek_sync(self, max_records: int, max_bytes: int, after_seq: int) -> list[StoredRow]:
        out: list[StoredRow] = []
        size = 0
        through = self._last_seq
        try:
            if self.synchronous == "NORMAL":
                through = self._durable_seq(after_seq, max_records)
            cur = self._db().execute(
                "SELECT seq, ts, device, kind, body FROM records WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?", (after_seq, through, max_records))
            try:
                while chunk := cur.fetchmany(min(_PEEK_FETCH, max_records)):
                    for seq, ts, device, kind, body in chunk:
                        size += _ROW_OVERHEAD + len(device) + len(kind) + len(body)
                        if out and size > max_bytes:
                            return out
                        out.append(StoredRow(seq, ts, device, kind, bytes(body)))
            finally:
                cur.close()
        except sqlite3.Error as exc:
            raise self._read_error(exc, "reading records to send") from exc
        return out

    def _durable_seq(self, after_seq: int, max_records: int) -> int:
        """NORMAL: the highest seq peek may hand out. When the rows asked for go beyond the
        durable mark, checkpoint first: under NORMAL a checkpoint fsyncs the WAL, copies it
        into the database file and fsyncs that, so the rows and their baselines survive a
        power cut and cannot be rolled back after the cloud got them. One connection, on
        this thread, with no statement open: the checkpoint completes unless another
        process holds a read transaction, in which case the mark stays and the next peek
        tries again."""
        if self._durable_through >= self._last_seq or after_seq >= self._last_seq:
            return self._durable_through  # all durable, or nothing to hand out anyway
        con = self._db()
        row = con.execute("SELECT seq FROM records WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
                          (after_seq, max_records - 1)).fetchone()
        if row is not None and int(row[0]) <= self._durable_through:
            return self._durable_through  # the whole window is durable already
        through = self._last_seq
        try:
            busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if _is_corrupt(exc):
                raise self._read_error(exc, "checkpointing before a send") from exc
            raise self._write_error(exc, "checkpointing (fsync) records before sending "
                                         "them") from exc
        if busy == 0 and frames == done:
            self._durable_through = through
        else:
            log.warning("buffer_checkpoint_incomplete", path=str(self.path), busy=busy,
                        wal_frames=frames, checkpointed=done, durable_through=self._durable_through,
                        detail="records above durable_through wait for the next peek")
        return self._durable_through

    def _ack_sync(self, seq: int) -> int:
        if seq > self._last_seq:
            raise BufferAckError(
                f"{self.path}: ack_through({seq}) but the last seq this buffer stored is "
                f"{self._last_seq}: the cloud holds records this buffer never wrote "
                "(another gateway's token, or a buffer reset without its .seq sidecar?)")
        try:
            deleted = self._ack_chunks(seq)
        except BufferWriteError as exc:
            # Deletes need WAL frames: on a full disk, hand the WAL's and the reserve's space
            # back to the file system and delete again, so that what the cloud holds can be
            # freed and the buffer does not stay wedged.
            if not (self._disk_full and (self._checkpoint_truncate()
                                         | self._release_reserve("deleting acked records"))):
                raise
            try:
                deleted = self._ack_chunks(seq)
            except BufferWriteError:
                raise exc from None
        self._acked_since_truncate += deleted
        if self._acked_since_truncate >= TRUNCATE_AFTER_ACKED_ROWS or self._disk_full:
            # Hand the WAL's disk back after a heavy drain (or on a full disk); autocheckpoint
            # alone only truncates it to journal_size_limit.
            self._acked_since_truncate = 0
            self._checkpoint_truncate()
        self._note_ok()
        return deleted

    def _ack_chunks(self, seq: int) -> int:
        con = self._db()
        deleted = 0
        try:
            while True:
                con.execute("BEGIN IMMEDIATE")
                row = con.execute("SELECT seq FROM records WHERE seq <= ? ORDER BY seq "
                                  "LIMIT 1 OFFSET ?", (seq, ACK_CHUNK_ROWS - 1)).fetchone()
                bound = seq if row is None else int(row[0])
                con.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'last_seq'",
                            (self._last_seq,))
                n = max(con.execute("DELETE FROM records WHERE seq <= ?", (bound,)).rowcount, 0)
                con.execute("UPDATE meta SET value = max(value, ?) WHERE key = 'acked_through'",
                            (bound,))
                con.execute("COMMIT")
                deleted += n
                self._backlog -= n
                self._acked_through = max(self._acked_through, bound)
                if bound >= seq:
                    break
        except (sqlite3.Error, OSError) as exc:
            self._after_failure()
            raise self._write_error(exc, f"deleting records acked through {seq}") from exc
        except BaseException:
            self._after_failure()
            raise
        return deleted

    def _keep_room_for_acks(self) -> None:
        """On a full disk running on the released reserve: refuse a cycle (nothing stored,
        the poller retries it, the PLC counter keeps counting) while less than half the
        reserve is free, so that deleting what the cloud acked can always write."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free >= RESERVE_BYTES // 2:
            return
        msg = (f"{self.path}: storing a poll cycle refused, the disk is full ({free} bytes "
               f"free); the space left is kept for deleting the records the cloud acks: free "
               f"space on {self.path.parent}")
        raise self._write_failed(msg)

    def _checkpoint_truncate(self) -> bool:
        """``wal_checkpoint(TRUNCATE)``: True when the WAL was emptied (its space freed)."""
        try:
            busy, _, _ = self._db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("buffer_checkpoint_failed", path=str(self.path), error=str(exc))
            return False
        return bool(busy == 0)

    def _release_reserve(self, doing: str) -> bool:
        """Delete the reserve file (its space goes back to the file system). True when
        there was one to release."""
        self._disk_full = True
        try:
            _reserve_path(self.path).unlink()
        except FileNotFoundError:
            self._reserve_held = False
            return False
        except OSError as exc:
            log.warning("buffer_reserve_release_failed", path=str(self.path), error=str(exc))
            return False
        self._reserve_held = False
        log.warning("buffer_reserve_released", path=str(self.path), doing=doing,
                    bytes=RESERVE_BYTES,
                    detail="the disk is full; the reserve's space lets the buffer go on and "
                           "free acked records; it is remade once space is back")
        return True

    def _ensure_reserve(self) -> None:
        """Make the reserve file when it is missing and the disk has room for it."""
        path = _reserve_path(self.path)
        self._reserve_checked = time.monotonic()
        if _size(path) >= RESERVE_BYTES:
            self._reserve_held = True
            return
        try:
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < _RESERVE_REMAKE_FREE:
                return
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            log.warning("buffer_reserve_not_made", path=str(path), error=str(exc))
            return
        self._reserve_held = True

    def _rebase_sync(self, cloud_last_seq: int, incarnation: str | None) -> bool:
        if incarnation is not None and incarnation != self._incarnation.id:
            log.info("buffer_rebase_stale", path=str(self.path), incarnation=incarnation,
                     current=self._incarnation.id)
            return False
        con = self._db()
        old = self._incarnation
        try:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute("SELECT min(seq), max(seq), count(*) FROM records").fetchone()
            first, count = (int(row[0]), int(row[2])) if row and row[0] is not None else (None, 0)
            if first is None:
                gap_seq, shift = max(cloud_last_seq, self._last_seq) + 1, 0
            elif first > cloud_last_seq + 1:
                gap_seq, shift = cloud_last_seq + 1, 0   # already above: only a new since
            else:
                gap_seq, shift = cloud_last_seq + 1, cloud_last_seq + 2 - first
            if shift:
                # Two steps: a one-step shift could hit a seq not yet moved (primary key).
                con.execute("UPDATE records SET seq = -seq")
                con.execute("UPDATE records SET seq = ? - seq", (shift,))
            new_last = max(self._last_seq + shift, gap_seq)
            gap = {"dropped": 0, "first_seq": None, "last_seq": None,
                   "reason": f"buffer_lost: the cloud already held seqs through "
                             f"{cloud_last_seq} of this gateway from an earlier buffer; this "
                             f"buffer's {count} unsent records were renumbered from "
                             f"{gap_seq + 1}; what the earlier buffer held unsent is lost, "
                             "how many is unknown"}
            con.execute(_INSERT, (gap_seq, _now_ms(), self.gateway, "gap", encode_body(gap)))
            new = Incarnation(secrets.token_hex(8), gap_seq)
            con.executemany("UPDATE meta SET value = ? WHERE key = ?",
                            [(new_last, "last_seq"), (cloud_last_seq, "acked_through"),
                             (new.id, "incarnation"), (new.since, "incarnation_since")])
            if new_last > self._reserved:
                self._write_sidecar(new_last + SEQ_RESERVE_STEP, None)
                self._reserved = new_last + SEQ_RESERVE_STEP
            con.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._after_failure()
            raise self._write_error(exc, "renumbering records above the cloud's") from exc
        except BaseException:
            self._after_failure()
            raise
        self._last_seq = new_last
        self._acked_through = cloud_last_seq
        self._backlog = count + 1
        self._incarnation = new
        self._durable_through = 0   # NORMAL: the renumbered rows wait for a checkpoint
        self._note_ok()
        log.warning("buffer_rebased", path=str(self.path), reason="buffer_lost",
                    cloud_last_seq=cloud_last_seq, gap_seq=gap_seq, renumbered=count,
                    shift=shift, last_seq=new_last, old_incarnation=old.id,
                    incarnation=new.id,
                    detail="the cloud held seqs of an earlier buffer of this gateway; the "
                           "records of that buffer it had not acked are lost")
        return True

    def _stats_sync(self) -> BufferStats:
        try:
            first = self._db().execute(
                "SELECT seq, ts FROM records ORDER BY seq LIMIT 1").fetchone()
            content = self._content_bytes()
            synchronous, journal_limit = self._live_pragmas()
        except sqlite3.Error as exc:
            raise self._read_error(exc, "reading buffer stats") from exc
        if self._over_quota and content <= self.content_budget:
            self._clear_over_quota()
        wal_size = _size(Path(f"{self.path}-wal"))
        return BufferStats(
            backlog=self._backlog,
            first_seq=int(first[0]) if first else None,
            last_seq=self._last_seq,
            oldest_ts=int(first[1]) if first else None,
            disk_bytes=_size(self.path) + wal_size + _size(Path(f"{self.path}-shm")),
            dropped_samples_total=self._dropped_total,
            over_quota=self._over_quota,
            last_error=self._last_error,
            acked_through=self._acked_through,
            content_bytes=content,
            content_budget=self.content_budget,
            wal_bytes=wal_size,
            write_errors_total=self._write_errors,
            synchronous=synchronous,
            journal_size_limit=journal_limit,
            durable_through=(self._last_seq if self.synchronous == "FULL"
                             else self._durable_through),
            disk_full=self._disk_full,
        )

    def _integrity_sync(self) -> list[str]:
        found = [str(r[0]) for r in self._db().execute("PRAGMA integrity_check")]
        return [] if found == ["ok"] else found

    # ---------------------------------------------------------------- internals

    def _apply_quota(self, last: int, first_of_cycle: int, cycle_bytes: int) -> tuple[int, int]:
        """Inside the append transaction: drop oldest samples (not of this cycle) when over
        budget, write one gap record. Returns (new last seq, samples dropped).

        Measuring pages is skipped while a pessimistic estimate (last measurement + twice
        the bytes appended since) stays under the budget; re-anchored every MiB appended."""
        self._unmeasured += cycle_bytes
        if (not self._over_quota and self._unmeasured < 2**20
                and self._measured + 2 * self._unmeasured < self.content_budget):
            return last, 0
        content = self._content_bytes()
        if content <= self.content_budget:
            if self._over_quota:
                self._clear_over_quota()
            return last, 0
        con = self._db()
        # Aim at 95 % so that a steady overflow writes one gap per 5 % of the budget, not one
        # per cycle (gap records are themselves never dropped). One transaction drops at most
        # wal_limit/8 bytes of rows beyond what it must (everything above the budget): the
        # WAL then stays within its share of the quota, and the next over-budget cycle drops
        # the next slice.
        target = self.content_budget - max(self.content_budget // 20, 64 * 1024)
        allowance = max(content - self.content_budget, min(content - target, self.wal_limit // 8))
        floor = content - allowance
        dropped, lo, hi = 0, 0, 0
        while content > floor:
            # The oldest samples (never of this cycle) whose row bytes cover what is still to
            # free; a page-granular measure can lag the row bytes, hence at least 4 pages.
            want = max(content - floor, 4 * self._page_size)
            cur = con.execute(
                "SELECT seq, length(body) + length(device) + length(kind) FROM records "
                "WHERE kind = 'sample' AND seq < ? ORDER BY seq LIMIT ?",
                (first_of_cycle, QUOTA_DROP_CHUNK_ROWS))
            a = b = n = freed = 0
            for seq, row_bytes in cur:
                a, b, n = a or int(seq), int(seq), n + 1
                freed += int(row_bytes) + _ROW_COST
                if freed >= want:
                    break
            cur.close()
            if not n:
                break
            con.execute("DELETE FROM records WHERE kind = 'sample' AND seq >= ? AND seq <= ?",
                        (a, b))
            lo = lo or a
            hi, dropped = b, dropped + n
            content = self._content_bytes()
        if dropped:
            last += 1
            gap = {"dropped": dropped, "first_seq": lo, "last_seq": hi, "reason": "quota"}
            con.execute(_INSERT, (last, _now_ms(), self.gateway, "gap", encode_body(gap)))
            con.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped_samples_total'",
                        (dropped,))
            log.warning("buffer_quota_dropped_samples", path=str(self.path), dropped=dropped,
                        first_seq=lo, last_seq=hi, content_bytes=content,
                        content_budget=self.content_budget)
        if content > self.content_budget:
            if not self._over_quota:
                self._over_quota = True
                self._over_quota_appends = 0
                log.error("buffer_over_quota", path=str(self.path), content_bytes=content,
                          content_budget=self.content_budget,
                          detail="only records that are never dropped are left; keeping them "
                                 "and growing past buffer_max_mb until the cloud acks")
            self._over_quota_appends += 1
        elif self._over_quota:
            self._clear_over_quota()
        return last, dropped

    def _clear_over_quota(self) -> None:
        log.warning("buffer_back_under_quota", path=str(self.path),
                    appends_while_over=self._over_quota_appends)
        self._over_quota = False
        self._over_quota_appends = 0

    def _live_pragmas(self) -> tuple[str, int]:
        """(synchronous, journal_size_limit) as the connection has them."""
        con = self._db()
        level = int(con.execute("PRAGMA synchronous").fetchone()[0])
        limit = int(con.execute("PRAGMA journal_size_limit").fetchone()[0])
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level)), limit

    def _content_bytes(self) -> int:
        row = self._db().execute("SELECT page_count, freelist_count "
                                 "FROM pragma_page_count(), pragma_freelist_count()").fetchone()
        content = (int(row[0]) - int(row[1])) * self._page_size if row else 0
        self._measured, self._unmeasured = content, 0
        return content

    def _read_meta(self) -> dict[str, Any]:
        return {str(k): v for k, v in self._db().execute("SELECT key, value FROM meta")}

    def _max_seq(self) -> int:
        top = self._db().execute("SELECT max(seq) FROM records").fetchone()
        return int(top[0]) if top and top[0] is not None else 0

    def _after_failure(self) -> None:
        """Roll back, and re-read the cached counters from what is really committed."""
        con = self._db()
        with contextlib.suppress(sqlite3.Error):
            con.execute("ROLLBACK")
        try:
            meta = self._read_meta()
            self._last_seq = max(self._last_seq, int(meta["last_seq"]), self._max_seq())
            self._acked_through = int(meta["acked_through"])
            self._dropped_total = int(meta["dropped_samples_total"])
            self._backlog = int(con.execute("SELECT count(*) FROM records").fetchone()[0])
        except (sqlite3.Error, KeyError, ValueError, TypeError) as exc:
            log.warning("buffer_state_reload_failed", path=str(self.path), error=str(exc))

    def _write_error(self, exc: BaseException, doing: str) -> OutboxError:
        if isinstance(exc, sqlite3.Error) and _is_corrupt(exc):
            return BufferCorrupt(f"{self.path}: damaged while {doing}: {exc}; close and "
                                 "reopen the outbox to move it aside")
        name = _errname(exc)
        cause = "a write error"
        if _space_problem(exc):
            self._disk_full = True
        if name.startswith("SQLITE_FULL") or (
                isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG)):
            cause = "the disk is full"
        elif name == "SQLITE_IOERR_WRITE":
            # SQLite reports ENOSPC on some paths, EFBIG (file size limit) and EIO alike.
            cause = "a write failed (disk full, file size limit or I/O error)"
        elif name == "SQLITE_IOERR_FSYNC":
            cause = "fsync failed (I/O error)"
        elif name.startswith("SQLITE_IOERR") or isinstance(exc, OSError):
            cause = "an I/O error"
        msg = (f"{self.path}: {doing} failed, {cause} ({name}: {exc}); nothing of it was "
               f"stored: free space on {self.path.parent} or check the disk, then retry")
        return self._write_failed(msg)

    def _write_failed(self, msg: str) -> BufferWriteError:
        """Count a failed write and say so (the first failure loudly; repeats are counted
        until a write succeeds again); the error to raise."""
        self._last_error = msg
        self._write_errors += 1
        self._failing_since_ok += 1
        if self._failing_since_ok == 1:
            log.error("buffer_write_failed", path=str(self.path), error=msg)
        return BufferWriteError(msg)

    def _read_error(self, exc: sqlite3.Error, doing: str) -> OutboxError:
        if _is_corrupt(exc):
            return BufferCorrupt(f"{self.path}: damaged while {doing}: {exc}; close and "
                                 "reopen the outbox to move it aside")
        return OutboxError(f"{self.path}: {doing} failed: {exc}")

    def _note_ok(self) -> None:
        if not self._reserve_held and (time.monotonic() - self._reserve_checked
                                       >= _RESERVE_CHECK_S):
            self._ensure_reserve()
        if self._disk_full and self._reserve_held:
            self._disk_full = False
            log.warning("buffer_disk_space_back", path=str(self.path))
        if self._failing_since_ok:
            log.warning("buffer_write_recovered", path=str(self.path),
                        failures=self._failing_since_ok)
            self._failing_since_ok = 0
            self._last_error = None

    def _write_sidecar(self, reserved: int, clean_close_seq: int | None) -> None:
        doc = {"v": 1, "gateway": self.gateway, "seq_reserved_through": reserved,
               "clean_close_seq": clean_close_seq, "synchronous": self.synchronous}
        _atomic_write(_sidecar_path(self.path), json.dumps(doc).encode())


# -------------------------------------------------------------------- helpers


def _prepare(cycle: Cycle) -> tuple[list[tuple[int, str, str, bytes]], list[tuple[str, str, Any]]]:
    rows: list[tuple[int, str, str, bytes]] = []
    for i, rec in enumerate(cycle.records):
        ts, device, kind, body = validate_fields(rec.ts, rec.device, rec.kind,
                                                 _without_nul(rec.body), f"cycle.records[{i}]")
        rows.append((ts, device, kind, encode_body(body)))
    base_rows: list[tuple[str, str, Any]] = []
    for key, raw in cycle.baselines.items():
        if (not isinstance(key, tuple) or len(key) != 2
                or not all(isinstance(k, str) and k for k in key)):
            raise RecordError(f"cycle.baselines[{key!r}]", "key must be (device, tag)")
        if type(raw) is not int:
            raise RecordError(f"cycle.baselines[{key!r}]", f"must be an int, got {raw!r}")
        stored: Any = raw if INT64_MIN <= raw <= INT64_MAX else str(raw)
        base_rows.append((key[0], key[1], stored))
    return rows, base_rows


def _without_nul(value: Any) -> Any:
    """The body with NUL characters in its text replaced by U+FFFD. A PLC string can hold
    NUL inside it (padding, garbage) and PostgreSQL's text cannot: the cloud refuses such a
    record (buffer.records), and refusing it here would refuse the device's whole cycle."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, Mapping):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def _cycle_bytes(rows: list[tuple[int, str, str, bytes]]) -> int:
    return sum(len(body) + len(device) + len(kind) + _ROW_COST for _, device, kind, body in rows)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _errname(exc: BaseException) -> str:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _reserve_path(path: Path) -> Path:
    # A dot name: not one of ``<name>*`` (the quota's files, what ``rm buffer.db*`` takes).
    return path.with_name(f".{path.name}.reserve")


def _space_problem(exc: BaseException | None) -> bool:
    """The disk (or a file size limit) is full: SQLITE_FULL, a failed write, ENOSPC, EDQUOT,
    EFBIG; also through ``__cause__``."""
    while exc is not None:
        name = _errname(exc)
        if name.startswith(("SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_SHM",
                            "SQLITE_IOERR_TRUNCATE")) or (
                isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT,
                                                           errno.EFBIG)):
            return True
        exc = exc.__cause__
    return False


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".seq")


def _read_sidecar(path: Path) -> tuple[_Sidecar | None, str | None]:
    """(the sidecar, None), (None, None) when there is none, or (None, what is wrong) when
    it cannot be read (garbage, truncated, unreadable): logged at error here."""
    try:
        doc = json.loads(path.read_bytes())
        return _Sidecar(gateway=str(doc["gateway"]), reserved=int(doc["seq_reserved_through"]),
                        clean_close_seq=(None if doc.get("clean_close_seq") is None
                                         else int(doc["clean_close_seq"])),
                        synchronous=str(doc.get("synchronous", "FULL"))), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
        log.error("buffer_sidecar_unreadable", path=str(path), error=problem)
        return None, problem


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm to ``<name>.corrupt-<UTC>`` (never delete)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # -wal and -shm first, so a crash half-way never leaves the main file without them.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{target}{suffix}"))
    os.replace(path, target)
    _fsync_dir(path.parent)
    return target


def _salvage_last_seq(path: Path) -> int | None:
    """Best effort: the highest seq a damaged file still shows (read-only, immutable, so the
    evidence is not modified). The sidecar is the real guarantee; this only adds to it."""
    best: int | None = None
    try:
        con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    except sqlite3.Error:
        return None
    try:
        for sql in ("SELECT value FROM meta WHERE key = 'last_seq'", "SELECT max(seq) FROM records"):
            try:
                row = con.execute(sql).fetchone()
            except sqlite3.Error:
                continue
            if row and isinstance(row[0], int):
                best = max(best or 0, row[0])
    finally:
        con.close()
    return best


def _acquire_lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise BufferLocked(f"{path}: already open in another process (pid {holder or '?'}); "
                           "run one gateway per data_dir") from exc
    with contextlib.suppress(OSError):  # the pid is for messages; a full disk may refuse it
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _release_lock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
