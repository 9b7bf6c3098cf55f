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

__all__ = [
    "DROPPABLE_KINDS",
    "KINDS",
    "Batch",
    "Record",
    "RecordError",
    "decode_batch",
    "encode_batch",
]
