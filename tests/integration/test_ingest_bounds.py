"""Values past the cloud's columns (BIGINT, String(64), String(128)) get a 4xx naming the
field and change nothing, on SQLite and PostgreSQL. A 5xx here would make a gateway retry
the same batch forever."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.ingest import count_record, post_ingest, record

pytestmark = pytest.mark.needs_service("postgresql")

I64 = 2**63 - 1


def _state(seq: int, code: int) -> dict[str, Any]:
    return record(seq, "state", {"state": "running", "prev": "idle", "code": code}, ts=1)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("seq", record(2**63, ts=1), "records[1].seq"),
    ("ts", record(2, ts=2**63), "records[1].ts"),
    ("device", record(2, device="d" * 129), "records[1].device"),
    ("device_nul", record(2, device="cnc\x0003"), "records[1].device"),
    ("delta", count_record(2, "part_count", 0, 5, delta=2**63), "records[1].body.delta"),
    ("state_code", _state(2, 2**63), "records[1].body.code"),
    ("body_nul", record(2, "link", {"online": False, "error": "refused\x00"}),
     "records[1].body.error"),
    ("sample_nul", record(2, body={"values": {"prog": "O1\x0023"}}),
     "records[1].body.values.prog"),
]


@pytest.mark.parametrize(("bad", "field"), [(b, f) for _, b, f in BAD],
                         ids=[name for name, _, _ in BAD])
async def test_out_of_range_values_are_a_4xx_naming_the_field(cloud_client: Any,
                                                              bad: dict[str, Any],
                                                              field: str) -> None:
    gw = cloud_client.gateway
    res = await post_ingest(cloud_client, [record(1), bad])
    assert res.status_code == 422, res.text
    assert res.json()["field"] == field
    status = await cloud_client.get(f"/api/v1/gateways/{gw}",
                                    headers=cloud_client.admin_headers)
    assert status.json()["records_stored"] == 0


async def test_the_largest_values_are_stored(cloud_client: Any) -> None:
    gw = cloud_client.gateway
    records = [record(1, device="d" * 128),
               count_record(2, "part_count", 0, 2**64 - 1, delta=I64, ts=I64),
               _state(I64, -(2**63))]
    res = await post_ingest(cloud_client, records)
    assert res.status_code == 200, res.text
    assert res.json()["acked_through"] == I64   # the batch maximum (cloud/ingest/store.py)
    status = await cloud_client.get(f"/api/v1/gateways/{gw}",
                                    headers=cloud_client.admin_headers)
    assert status.json()["records_stored"] == 3
