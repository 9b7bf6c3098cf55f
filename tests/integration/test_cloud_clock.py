"""The cloud shows the wall-clock jumps a gateway reported (kind `clock`), newest last,
next to its clock skew, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.fixtures.ingest import ingest, record


async def test_gateway_status_lists_clock_jumps(cloud_client) -> None:  # type: ignore[no-untyped-def]
    recs = [record(1), record(2, "clock", {"jump_ms": -86_400_000, "reason": "wall clock moved"},
                              device="_gateway"),
            record(3), record(4, "clock", {"jump_ms": 315_360_000_000, "reason": "ntp"},
                              device="_gateway")]
    await ingest(cloud_client, recs)
    st = (await cloud_client.get("/api/v1/gateways/gw-test")).json()
    assert [(j["seq"], j["jump_ms"]) for j in st["clock_jumps"]] == [
        (2, -86_400_000), (4, 315_360_000_000)]
