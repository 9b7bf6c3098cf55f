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
# Bounds the cloud's columns set (cloud/core/models.py); a value past them would fail there as a
# server error, and a 5xx makes a gateway retry the same batch forever, so they are
# checked here: seq, ts, backlog, count.delta, state.code and gap seqs land in BIGINT.
INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
UINT64_MAX: Final = 2**64 - 1      # msgpack's largest integer (a uint64 counter's raw value)
MAX_GATEWAY_ID: Final = 64         # gateways.id, records.gateway_id: String(64)
MAX_DEVICE_NAME: Final = 128       # records.device: String(128)
_TOP_FIELDS: Final = frozenset({"v", "gateway", "records", "backlog", "incarnation", "since"})
MAX_INCARNATION: Final = 64        # gateways.incarnation: String(64)
# Body integers that land in BIGINT columns; every other integer only has msgpack's range.
_BIGINT_FIELDS: Final = {"count": ("delta",), "state": ("code",),
                         "gap": ("dropped", "first_seq", "last_seq")}


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
    # which numbering of the gateway's seqs the records belong to (optional, added with the
    # lost-buffer fix; ARCHITECTURE.md "Sync"): ``incarnation`` is a random id the buffer
    # made when it began this numbering, ``since`` the first seq of it (0: a numbering that
    # continues what the cloud already knows, from a buffer older than incarnations)
    incarnation: str | None = None
    since: int | None = None


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
                     backlog: int | None = None,
                     incarnation: tuple[str, int] | None = None) -> bytes:
    """Like ``encode_batch`` from buffer rows ``(seq, ts, device, kind, body_msgpack)``
    without decoding the stored bodies (the drain path). ``backlog``: see ``Batch``;
    ``incarnation``: ``(id, since)``, see ``Batch``."""
    packer = msgpack.Packer(use_bin_type=True)
    rows = list(rows)
    parts = [packer.pack_map_header(3 + (backlog is not None) + 2 * (incarnation is not None)),
             packer.pack("v"), packer.pack(WIRE_VERSION), packer.pack("gateway"),
             packer.pack(gateway)]
    if backlog is not None:
        parts += [packer.pack("backlog"), packer.pack(backlog)]
    if incarnation is not None:
        parts += [packer.pack("incarnation"), packer.pack(incarnation[0]),
                  packer.pack("since"), packer.pack(incarnation[1])]
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

    Checks: version, no unknown top-level field, gateway, each record's fields, types and
    bounds, the kind's body fields, seq >= 1 and strictly increasing within the batch.
    """
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=True, max_bin_len=0,
                              max_ext_len=0)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
            TypeError) as exc:
        raise RecordError("batch", f"not valid msgpack ({exc})") from exc
    if not isinstance(doc, dict):
        raise RecordError("batch", "not a map")
    extra = sorted(map(str, set(doc) - _TOP_FIELDS))
    if extra:
        raise RecordError(extra[0], "unknown field in the batch")
    version = doc.get("v")
    if version != WIRE_VERSION:
        raise RecordError("v", f"unsupported version {version!r} (this side speaks {WIRE_VERSION})")
    gateway = _name(doc.get("gateway"), "gateway", MAX_GATEWAY_ID)
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
    if backlog is not None and (type(backlog) is not int or not 0 <= backlog <= INT64_MAX):
        raise RecordError("backlog", f"must be an integer 0..{INT64_MAX}, got {backlog!r}")
    incarnation = doc.get("incarnation")
    since = doc.get("since")
    if incarnation is not None:
        incarnation = _name(incarnation, "incarnation", MAX_INCARNATION)
        if type(since) is not int or not 0 <= since <= INT64_MAX:
            raise RecordError("since", f"must be an integer 0..{INT64_MAX} with incarnation, "
                                       f"got {since!r}")
    elif since is not None:
        raise RecordError("since", "only with incarnation")
    return Batch(gateway=gateway, records=tuple(records), backlog=backlog,
                 incarnation=incarnation, since=since)


def validate_record(raw: Any, where: str = "record") -> Record:
    """Check one wire record and return it as a Record. Raises RecordError."""
    if not isinstance(raw, dict):
        raise RecordError(where, "not a map")
    extra = set(raw) - {"seq", "ts", "device", "kind", "body"}
    if extra:
        raise RecordError(f"{where}.{sorted(extra)[0]}", "unknown field")
    seq = raw.get("seq")
    if type(seq) is not int or not 1 <= seq <= INT64_MAX:
        raise RecordError(f"{where}.seq", f"must be an integer 1..{INT64_MAX}, got {seq!r}")
    ts, device, kind, body = validate_fields(raw.get("ts"), raw.get("device"), raw.get("kind"),
                                             raw.get("body"), where)
    return Record(seq=seq, ts=ts, device=device, kind=kind, body=body)


def validate_fields(ts: Any, device: Any, kind: Any, body: Any,
                    where: str = "record") -> tuple[int, str, str, dict[str, Any]]:
    """Check a record's fields but its seq (the buffer checks new records with this before
    it assigns one). Returns them with the body's optional fields filled. Raises
    RecordError naming the field."""
    if type(ts) is not int or not 0 <= ts <= INT64_MAX:
        raise RecordError(f"{where}.ts", f"must be epoch milliseconds 0..{INT64_MAX}, got {ts!r}")
    device = _name(device, f"{where}.device", MAX_DEVICE_NAME)
    if not isinstance(kind, str) or kind not in KINDS:
        raise RecordError(f"{where}.kind", f"unknown kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    if not isinstance(body, Mapping):
        raise RecordError(f"{where}.body", "missing or not a map")
    return ts, device, kind, validate_body(kind, body, f"{where}.body")


def _name(value: Any, where: str, max_len: int) -> str:
    if not isinstance(value, str) or not value:
        raise RecordError(where, "missing or not a string")
    if len(value) > max_len:
        raise RecordError(where, f"{len(value)} characters, at most {max_len} "
                                 f"(the cloud's column): {value[:24]!r}...")
    if "\x00" in value:
        raise RecordError(where, f"contains a NUL character: {value!r}")
    return value


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
        _storable(value, f"{where}.{name}",
                  INT64_MAX if name in _BIGINT_FIELDS.get(kind, ()) else UINT64_MAX)
    if kind == "count":
        if out["counts"] not in COUNTS:
            raise RecordError(f"{where}.counts", f"must be one of good, scrap, total, got {out['counts']!r}")
        if out["delta"] < 0:
            raise RecordError(f"{where}.delta", f"must be >= 0, got {out['delta']}")
    elif kind == "sample":
        for tag, value in out["values"].items():
            if not isinstance(tag, str) or not isinstance(value, (*_SCALAR, type(None))):
                raise RecordError(f"{where}.values.{tag}", "must map tag names to scalars")
            _storable(tag, f"{where}.values.{tag!r}", UINT64_MAX)
            _storable(value, f"{where}.values.{tag}", UINT64_MAX)
    elif kind == "gap" and out["dropped"] < 0:
        raise RecordError(f"{where}.dropped", "must be >= 0")
    return out


def _storable(value: Any, where: str, top: int) -> None:
    """What the cloud's columns can hold: integers in INT64_MIN..top, text without NUL
    (PostgreSQL's text and jsonb cannot hold U+0000; the buffer replaces it, see
    buffer/store.py)."""
    if type(value) is int and not INT64_MIN <= value <= top:
        raise RecordError(where, f"{value} is outside {INT64_MIN}..{top}")
    if isinstance(value, str) and "\x00" in value:
        raise RecordError(where, f"contains a NUL character: {value[:40]!r}")


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
