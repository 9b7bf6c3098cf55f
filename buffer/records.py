"""The record contract between gateway and cloud, and its msgpack codec.

A batch on the wire is a msgpack map::

    {"v": 1, "gateway": "gw-hall1", "records": [record, ...]}

and each record a map ``{"seq", "ts", "device", "kind", "body"}`` where ``body`` holds the
kind's fields (ARCHITECTURE.md, "Records"). Decoding validates every field of every record
before returning anything, so a malformed batch is rejected whole, never half-applied;
the error names the record index and field.

This module is the only thing ``cloud`` imports from ``buffer``; keep it free of I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import msgpack

WIRE_VERSION: Final = 1

# Fields of each kind's body: name -> accepted python types (None allowed where listed).
_NUM = (int, float)
_SCALAR = (bool, int, float, str)
BODY_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "count": {"tag": (str,), "counts": (str,), "delta": (int,), "raw_before": (int, type(None)),
              "raw_after": (int,), "reset": (bool,)},
    "state": {"state": (str,), "prev": (str, type(None)), "code": (int, type(None))},
    "alarm": {"code": (int,), "text": (str,), "active": (bool,)},
    "limit": {"tag": (str,), "value": _NUM, "lo": (*_NUM, type(None)), "hi": (*_NUM, type(None)),
              "active": (bool,)},
    "sample": {"values": (dict,)},
    "link": {"online": (bool,), "error": (str, type(None))},
    "gap": {"dropped": (int,), "first_seq": (int, type(None)), "last_seq": (int, type(None)),
            "reason": (str,)},
    # A wall-clock jump seen against the monotonic clock (NTP after boot, a bad RTC).
    "clock": {"jump_ms": (int,), "reason": (str,)},
}
# Body fields a sender may leave out (older gateways); filled with these defaults.
_OPTIONAL: Final[dict[str, dict[str, Any]]] = {
    "count": {"reset": False},
    "state": {"code": None, "prev": None},
    "link": {"error": None},
}
KINDS: Final = frozenset(BODY_FIELDS)
# Kinds the buffer may drop under quota (then writing a gap record). All others are kept.
DROPPABLE_KINDS: Final = frozenset({"sample"})
COUNTS: Final = frozenset({"good", "scrap", "total"})
MAX_BATCH_RECORDS: Final = 50_000


class RecordError(ValueError):
    """A record or batch that does not follow the contract. ``field`` is the path,
    e.g. ``records[3].body.delta``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Record:
    """One record. ``seq`` is 0 until the buffer stores it and assigns the real one."""

    seq: int
    ts: int              # UTC epoch milliseconds, gateway clock
    device: str
    kind: str
    body: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "device": self.device, "kind": self.kind,
                "body": dict(self.body)}


@dataclass(frozen=True, slots=True)
class Batch:
    gateway: str
    records: tuple[Record, ...]
    # records the gateway held unacknowledged when it sent this batch (this batch
    # included); optional, so the cloud can tell a backlog still arriving from live data
    backlog: int | None = None


def encode_body(body: Mapping[str, Any]) -> bytes:
    """msgpack of one body, as the buffer stores it."""
    out: bytes = msgpack.packb(dict(body), use_bin_type=True)
    return out


def decode_body(blob: bytes) -> dict[str, Any]:
    out = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    if not isinstance(out, dict):
        raise RecordError("body", "not a map")
    return out


def encode_batch(gateway: str, records: Iterable[Record]) -> bytes:
    """The wire form of a batch (what the HTTP and MQTT uplinks send)."""
    out: bytes = msgpack.packb(
        {"v": WIRE_VERSION, "gateway": gateway, "records": [r.to_wire() for r in records]},
        use_bin_type=True,
    )
    return out


def encode_batch_raw(gateway: str, rows: Iterable[tuple[int, int, str, str, bytes]], *,
                     backlog: int | None = None) -> bytes:
    """Like ``encode_batch`` from buffer rows ``(seq, ts, device, kind, body_msgpack)``
    without decoding the stored bodies (the drain path). ``backlog``: see ``Batch``."""
    packer = msgpack.Packer(use_bin_type=True)
    rows = list(rows)
    parts = [packer.pack_map_header(3 if backlog is None else 4),
             packer.pack("v"), packer.pack(WIRE_VERSION), packer.pack("gateway"),
             packer.pack(gateway)]
    if backlog is not None:
        parts += [packer.pack("backlog"), packer.pack(backlog)]
    parts += [packer.pack("records"), packer.pack_array_header(len(rows))]
    for seq, ts, device, kind, body in rows:
        parts.append(packer.pack_map_header(5))
        parts += [packer.pack("seq"), packer.pack(seq), packer.pack("ts"), packer.pack(ts),
                  packer.pack("device"), packer.pack(device), packer.pack("kind"),
                  packer.pack(kind), packer.pack("body")]
        parts.append(body)  # already msgpack of a map
    return b"".join(parts)


def decode_batch(payload: bytes, *, max_records: int = MAX_BATCH_RECORDS) -> Batch:
    """Decode and validate a wire batch. Raises RecordError naming the first bad field.

    Checks: version, gateway, each record's fields and types, the kind's body fields,
    seq >= 1 and strictly increasing within the batch.
    """
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=0,
                              max_ext_len=0)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
            TypeError) as exc:
        raise RecordError("batch", f"not valid msgpack ({exc})") from exc
    if not isinstance(doc, dict):
        raise RecordError("batch", "not a map")
    version = doc.get("v")
    if version != WIRE_VERSION:
        raise RecordError("v", f"unsupported version {version!r} (this side speaks {WIRE_VERSION})")
    gateway = doc.get("gateway")
    if not isinstance(gateway, str) or not gateway:
        raise RecordError("gateway", "missing or not a string")
    raw_records = doc.get("records")
    if not isinstance(raw_records, list):
        raise RecordError("records", "missing or not a list")
    if len(raw_records) > max_records:
        raise RecordError("records", f"{len(raw_records)} records, at most {max_records} per batch")
    records: list[Record] = []
    last_seq = 0
    for i, raw in enumerate(raw_records):
        rec = validate_record(raw, f"records[{i}]")
        if rec.seq <= last_seq:
            raise RecordError(f"records[{i}].seq",
                              f"{rec.seq} is not above the previous {last_seq}")
        last_seq = rec.seq
        records.append(rec)
    backlog = doc.get("backlog")
    if backlog is not None and (type(backlog) is not int or backlog < 0):
        raise RecordError("backlog", f"must be an integer >= 0, got {backlog!r}")
    return Batch(gateway=gateway, records=tuple(records), backlog=backlog)


def validate_record(raw: Any, where: str = "record") -> Record:
    """Check one wire record and return it as a Record. Raises RecordError."""
    if not isinstance(raw, dict):
        raise RecordError(where, "not a map")
    extra = set(raw) - {"seq", "ts", "device", "kind", "body"}
    if extra:
        raise RecordError(f"{where}.{sorted(extra)[0]}", "unknown field")
    seq = raw.get("seq")
    if type(seq) is not int or seq < 1:
        raise RecordError(f"{where}.seq", f"must be an integer >= 1, got {seq!r}")
    ts = raw.get("ts")
    if type(ts) is not int or ts < 0:
        raise RecordError(f"{where}.ts", f"must be epoch milliseconds >= 0, got {ts!r}")
    device = raw.get("device")
    if not isinstance(device, str) or not device:
        raise RecordError(f"{where}.device", "missing or not a string")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise RecordError(f"{where}.kind", f"unknown kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    body = raw.get("body")
    if not isinstance(body, dict):
        raise RecordError(f"{where}.body", "missing or not a map")
    return Record(seq=seq, ts=ts, device=device, kind=kind, body=validate_body(kind, body, f"{where}.body"))


def validate_body(kind: str, body: Mapping[str, Any], where: str = "body") -> dict[str, Any]:
    """Check a body against its kind; return it with optional fields filled."""
    spec = BODY_FIELDS[kind]
    out = dict(_OPTIONAL.get(kind, {}))
    out.update(body)
    for name in out:
        if name not in spec:
            raise RecordError(f"{where}.{name}", f"unknown field for kind {kind!r}")
    for name, types in spec.items():
        if name not in out:
            raise RecordError(f"{where}.{name}", "missing")
        value = out[name]
        # bool is an int in Python: only accept it where bool is listed.
        if isinstance(value, bool) and bool not in types:
            raise RecordError(f"{where}.{name}", f"must be {_names(types)}, got a bool")
        if not isinstance(value, types):
            raise RecordError(f"{where}.{name}", f"must be {_names(types)}, got {type(value).__name__}")
    if kind == "count":
        if out["counts"] not in COUNTS:
            raise RecordError(f"{where}.counts", f"must be one of good, scrap, total, got {out['counts']!r}")
        if out["delta"] < 0:
            raise RecordError(f"{where}.delta", f"must be >= 0, got {out['delta']}")
    elif kind == "sample":
        for tag, value in out["values"].items():
            if not isinstance(tag, str) or not isinstance(value, (*_SCALAR, type(None))):
                raise RecordError(f"{where}.values.{tag}", "must map tag names to scalars")
    elif kind == "gap" and out["dropped"] < 0:
        raise RecordError(f"{where}.dropped", "must be >= 0")
    return out


def _names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


# -- MQTT addressing (the same batches over MQTT; ARCHITECTURE.md "Sync") ---------------

RECORDS_TOPIC_FILTER: Final = "plantsync/v1/+/records"


def records_topic(gateway: str) -> str:
    """Where a gateway publishes its batches."""
    return f"plantsync/v1/{gateway}/records"


def acks_topic(gateway: str) -> str:
    """Where the cloud confirms what it stored of a gateway's batches."""
    return f"plantsync/v1/{gateway}/acks"


def gateway_from_topic(topic: str) -> str | None:
    """The gateway id of a records topic, None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["plantsync", "v1"] and parts[3] == "records" and parts[2]:
        return parts[2]
    return None


def parse_broker_url(url: str) -> tuple[str, int, bool]:
    """``mqtt://host[:1883]`` or ``mqtts://host[:8883]`` -> (host, port, tls). Raises
    ValueError naming the URL and an example."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{url!r} is not a broker URL (e.g. mqtt://broker:1883 or "
                         "mqtts://broker:8883)")
    tls = parts.scheme == "mqtts"
    return parts.hostname, parts.port or (8883 if tls else 1883), tls
