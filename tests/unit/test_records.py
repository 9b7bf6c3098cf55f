"""The record codec (buffer/records.py): every malformed batch is rejected whole with the
field named; valid records round-trip. The cloud answers these RecordErrors with a 4xx
(tests/integration/test_ingest_bounds.py), so a bound missing here is a 5xx there."""

from __future__ import annotations

import itertools
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.records import (
    BODY_FIELDS,
    INT64_MAX,
    INT64_MIN,
    MAX_DEVICE_NAME,
    MAX_GATEWAY_ID,
    UINT64_MAX,
    WIRE_VERSION,
    Record,
    RecordError,
    decode_batch,
    encode_batch,
    encode_batch_raw,
    encode_body,
    validate_record,
)

GOOD_BODIES: dict[str, dict[str, Any]] = {
    "count": {"tag": "part_count", "counts": "good", "delta": 3, "raw_before": 10,
              "raw_after": 13, "reset": False},
    "state": {"state": "running", "prev": "idle", "code": 1},
    "alarm": {"code": 1001, "text": "door open", "active": True},
    "limit": {"tag": "zone1_temp", "value": 231.5, "lo": 180.0, "hi": 230.0, "active": True},
    "sample": {"values": {"spindle_load": 41.5, "program": "O1234", "n": 7, "ok": True,
                          "off": None}},
    "link": {"online": False, "error": "connection refused"},
    "gap": {"dropped": 2000, "first_seq": 1, "last_seq": 2199, "reason": "quota"},
    "clock": {"jump_ms": -86_400_000, "reason": "wall clock moved back"},
}
assert set(GOOD_BODIES) == set(BODY_FIELDS)


def rec(seq: int = 1, kind: str = "count", **over: Any) -> dict[str, Any]:
    body = over.pop("body", None)
    out = {"seq": seq, "ts": 1_700_000_000_000, "device": "cnc-03", "kind": kind,
           "body": dict(GOOD_BODIES[kind]) if body is None else body}
    out.update(over)
    return out


def with_body(kind: str, **over: Any) -> dict[str, Any]:
    return rec(2, kind, body={**GOOD_BODIES[kind], **over})


def without(kind: str, name: str) -> dict[str, Any]:
    return rec(2, kind, body={k: v for k, v in GOOD_BODIES[kind].items() if k != name})


def batch(*records: dict[str, Any], **top: Any) -> bytes:
    doc = {"v": WIRE_VERSION, "gateway": "gw-hall1", "records": list(records), **top}
    return msgpack.packb(doc, use_bin_type=True)


def ok_then(bad: dict[str, Any]) -> bytes:
    """A valid first record followed by the bad one: the batch must be refused whole."""
    return batch(rec(1), bad)


# Fields a sender may leave out (filled with a default); every other one is required.
OPTIONAL = {("count", "reset"), ("state", "code"), ("state", "prev"), ("link", "error")}

CASES: list[tuple[str, bytes, str]] = [
    # the batch
    ("not msgpack", b"\xc1", "batch"),
    ("truncated msgpack", batch(rec(1), rec(2))[:-7], "batch"),
    ("trailing bytes", batch(rec(1)) + b"\x00", "batch"),
    ("not a map", msgpack.packb([1, 2]), "batch"),
    ("bin instead of str", msgpack.packb({"v": 1, "gateway": b"gw", "records": []},
                                         use_bin_type=True), "batch"),
    ("wrong version", batch(rec(1), v=2), "v"),
    ("version missing", msgpack.packb({"gateway": "g", "records": []}), "v"),
    ("unknown top-level field", batch(rec(1), extra=1), "extra"),
    ("gateway missing", msgpack.packb({"v": 1, "records": []}), "gateway"),
    ("gateway empty", batch(rec(1), gateway=""), "gateway"),
    ("gateway too long", batch(rec(1), gateway="g" * (MAX_GATEWAY_ID + 1)), "gateway"),
    ("gateway with NUL", batch(rec(1), gateway="gw\x00"), "gateway"),
    ("records not a list", batch(records={}), "records"),
    ("backlog negative", batch(rec(1), backlog=-1), "backlog"),
    ("backlog past int64", batch(rec(1), backlog=INT64_MAX + 1), "backlog"),
    ("backlog a bool", batch(rec(1), backlog=True), "backlog"),
    # the record
    ("record not a map", batch(rec(1), [1]), "records[1]"),
    ("unknown record field", ok_then(rec(2, extra=1)), "records[1].extra"),
    ("repeated seq", batch(rec(1), rec(1)), "records[1].seq"),
    ("decreasing seq", batch(rec(5), rec(4)), "records[1].seq"),
    ("seq 0", ok_then(rec(0)), "records[1].seq"),
    ("seq past int64", ok_then(rec(INT64_MAX + 1)), "records[1].seq"),
    ("seq uint64 max", ok_then(rec(UINT64_MAX)), "records[1].seq"),
    ("seq a bool", batch(rec(True)), "records[0].seq"),
    ("seq a float", ok_then(rec(2.0)), "records[1].seq"),
    ("seq missing", ok_then({k: v for k, v in rec(2).items() if k != "seq"}),
     "records[1].seq"),
    ("ts negative", ok_then(rec(2, ts=-1)), "records[1].ts"),
    ("ts past int64", ok_then(rec(2, ts=INT64_MAX + 1)), "records[1].ts"),
    ("ts a bool", ok_then(rec(2, ts=False)), "records[1].ts"),
    ("ts a string", ok_then(rec(2, ts="1700000000000")), "records[1].ts"),
    ("device empty", ok_then(rec(2, device="")), "records[1].device"),
    ("device too long", ok_then(rec(2, device="d" * (MAX_DEVICE_NAME + 1))),
     "records[1].device"),
    ("device with NUL", ok_then(rec(2, device="cnc\x0003")), "records[1].device"),
    ("device not a string", ok_then(rec(2, device=3)), "records[1].device"),
    ("kind unknown", ok_then(rec(2, kind="count", body={}) | {"kind": "nope"}),
     "records[1].kind"),
    ("body not a map", ok_then(rec(2, body=[1])), "records[1].body"),
    # bodies
    ("unknown body field", ok_then(with_body("count", extra=1)), "records[1].body.extra"),
    ("bool as int (delta)", ok_then(with_body("count", delta=True)), "records[1].body.delta"),
    ("bool as int (alarm code)", ok_then(with_body("alarm", code=False)),
     "records[1].body.code"),
    ("int as bool (reset)", ok_then(with_body("count", reset=1)), "records[1].body.reset"),
    ("delta negative", ok_then(with_body("count", delta=-1)), "records[1].body.delta"),
    ("delta past int64", ok_then(with_body("count", delta=INT64_MAX + 1)),
     "records[1].body.delta"),
    ("counts unknown", ok_then(with_body("count", counts="bad")), "records[1].body.counts"),
    ("state code past int64", ok_then(with_body("state", code=INT64_MAX + 1)),
     "records[1].body.code"),
    ("gap seq past int64", ok_then(with_body("gap", last_seq=INT64_MAX + 1)),
     "records[1].body.last_seq"),
    ("gap dropped negative", ok_then(with_body("gap", dropped=-1)), "records[1].body.dropped"),
    ("limit value a string", ok_then(with_body("limit", value="hot")),
     "records[1].body.value"),
    ("sample value a list", ok_then(with_body("sample", values={"t": [1]})),
     "records[1].body.values.t"),
    ("NUL in a body string", ok_then(with_body("link", error="refused\x00")),
     "records[1].body.error"),
    ("NUL in a sample value", ok_then(with_body("sample", values={"prog": "O1\x0023"})),
     "records[1].body.values.prog"),
    ("NUL in a sample tag", ok_then(with_body("sample", values={"p\x00": 1})),
     "records[1].body.values.'p\\x00'"),
    *[(f"{kind} without {name}", ok_then(without(kind, name)), f"records[1].body.{name}")
      for kind, spec in BODY_FIELDS.items() for name in spec if (kind, name) not in OPTIONAL],
]


@pytest.mark.parametrize(("payload", "field"), [(p, f) for _, p, f in CASES],
                         ids=[name for name, _, _ in CASES])
def test_a_malformed_batch_is_refused_whole_naming_the_field(payload: bytes, field: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode_batch(payload)
    # decode_batch returns the whole batch or raises: there is no partial result to apply
    assert caught.value.field == field, str(caught.value)
    assert str(caught.value).startswith(f"{field}: ")


def test_the_bounds_themselves_are_accepted() -> None:
    edge = [rec(INT64_MAX - 1, ts=INT64_MAX, device="d" * MAX_DEVICE_NAME,
                body={**GOOD_BODIES["count"], "delta": INT64_MAX, "raw_after": UINT64_MAX}),
            rec(INT64_MAX, "state", body={**GOOD_BODIES["state"], "code": INT64_MIN})]
    got = decode_batch(batch(*edge, gateway="g" * MAX_GATEWAY_ID, backlog=INT64_MAX))
    assert [r.seq for r in got.records] == [INT64_MAX - 1, INT64_MAX]
    assert got.records[0].body["raw_after"] == UINT64_MAX
    assert got.backlog == INT64_MAX


def test_optional_body_fields_are_filled() -> None:
    got = validate_record(rec(1, "state", body={"state": "idle"}))
    assert dict(got.body) == {"state": "idle", "prev": None, "code": None}
    assert validate_record(without("count", "reset")).body["reset"] is False


def test_too_many_records() -> None:
    with pytest.raises(RecordError, match=r"^records: 3 records, at most 2"):
        decode_batch(batch(rec(1), rec(2), rec(3)), max_records=2)


# -- round trip ---------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=40)
_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                min_size=1, max_size=MAX_DEVICE_NAME)
_i64 = st.integers(INT64_MIN, INT64_MAX)
_u64 = st.integers(0, UINT64_MAX)
_pos = st.integers(0, INT64_MAX)
_float = st.floats()  # NaN and infinities too: a PLC float can be either
_opt_float = st.none() | _float
_scalar = st.none() | st.booleans() | st.integers(INT64_MIN, UINT64_MAX) | _float | _text

BODIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "count": st.fixed_dictionaries({
        "tag": _name, "counts": st.sampled_from(["good", "scrap", "total"]), "delta": _pos,
        "raw_before": st.none() | _u64, "raw_after": _u64, "reset": st.booleans()}),
    "state": st.fixed_dictionaries({"state": _text, "prev": st.none() | _text,
                                    "code": st.none() | _i64}),
    "alarm": st.fixed_dictionaries({"code": _i64, "text": _text, "active": st.booleans()}),
    "limit": st.fixed_dictionaries({"tag": _name, "value": st.integers(INT64_MIN, UINT64_MAX)
                                    | _float, "lo": _opt_float, "hi": _opt_float,
                                    "active": st.booleans()}),
    "sample": st.fixed_dictionaries({"values": st.dictionaries(_name, _scalar, max_size=5)}),
    "link": st.fixed_dictionaries({"online": st.booleans(), "error": st.none() | _text}),
    "gap": st.fixed_dictionaries({"dropped": _pos, "first_seq": st.none() | _pos,
                                  "last_seq": st.none() | _pos, "reason": _text}),
    "clock": st.fixed_dictionaries({"jump_ms": _i64, "reason": _text}),
}
assert set(BODIES) == set(BODY_FIELDS)

_record = st.sampled_from(sorted(BODIES)).flatmap(
    lambda kind: st.builds(lambda ts, device, body: (ts, device, kind, body),
                           _pos, _name, BODIES[kind]))


@settings(max_examples=200, deadline=None)
@given(gateway=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                       min_size=1, max_size=MAX_GATEWAY_ID),
       first=st.integers(1, 2**40), steps=st.lists(st.integers(1, 2**20), min_size=8,
                                                   max_size=8),
       records=st.lists(_record, max_size=8), backlog=st.none() | _pos)
def test_valid_records_round_trip(gateway: str, first: int, steps: list[int],
                                  records: list[tuple[int, str, str, dict[str, Any]]],
                                  backlog: int | None) -> None:
    seqs = list(itertools.accumulate(steps, initial=first))
    want = [Record(seq, ts, device, kind, body)
            for seq, (ts, device, kind, body) in zip(seqs, records, strict=False)]
    # the drain path (stored bodies as they are) and the plain encoder
    payloads = [encode_batch_raw(gateway, [(r.seq, r.ts, r.device, r.kind, encode_body(r.body))
                                           for r in want], backlog=backlog)]
    if backlog is None:
        payloads.append(encode_batch(gateway, want))
    for payload in payloads:
        got = decode_batch(payload)
        assert (got.gateway, got.backlog) == (gateway, backlog)
        assert [(r.seq, r.ts, r.device, r.kind) for r in got.records] == [
            (r.seq, r.ts, r.device, r.kind) for r in want]
        for a, b in zip(got.records, want, strict=True):
            assert _same(dict(a.body), b.body), (a.body, b.body)


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types (msgpack keeps int and float apart); NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
