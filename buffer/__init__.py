"""Store-and-forward: the durable outbox, the record contract, and the uplinks."""

from buffer.records import (
    DROPPABLE_KINDS,
    KINDS,
    Batch,
    Record,
    RecordError,
    decode_batch,
    encode_batch,
)
from buffer.store import (
    BufferAckError,
    BufferCorrupt,
    BufferGatewayMismatch,
    BufferLocked,
    BufferStats,
    BufferWriteError,
    Cycle,
    Outbox,
    OutboxError,
    StoredRow,
)

__all__ = [
    "DROPPABLE_KINDS",
    "KINDS",
    "Batch",
    "BufferAckError",
    "BufferCorrupt",
    "BufferGatewayMismatch",
    "BufferLocked",
    "BufferStats",
    "BufferWriteError",
    "Cycle",
    "Outbox",
    "OutboxError",
    "Record",
    "RecordError",
    "StoredRow",
    "decode_batch",
    "encode_batch",
]
