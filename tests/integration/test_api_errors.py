"""Every error answer of the API has one shape, shaped in one place (cloud/api/errors.py):
a domain refusal, a request that does not match its schema, a path or method the API does
not have, and a bug (logged with its traceback, answered 500 JSON, nothing changed)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from tests.fixtures.cloud import ADMIN_HEADERS
from tests.fixtures.ingest import batch_bytes, record

pytestmark = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)


async def test_a_domain_refusal_names_its_code_and_field(cloud_client: Any) -> None:
    res = await cloud_client.put("/api/v1/materials/RESIN", headers=ADMIN_HEADERS,
                                 json={"name": "resin", "unit": "kg", "lead_time_days": 2,
                                       "safety_stock": "1.2345678"})
    assert res.status_code == 422
    assert res.json() == {"error": "invalid", "field": "safety_stock",
                          "detail": res.json()["detail"]}
    assert "6 decimals" in res.json()["detail"]


async def test_a_body_that_does_not_match_its_schema_names_the_field(cloud_client: Any) -> None:
    res = await cloud_client.post("/api/v1/work-orders", headers=ADMIN_HEADERS,
                                  json={"number": "WO-1", "product": "P", "quantity": "many"})
    assert res.status_code == 422
    assert res.json()["error"] == "invalid_request" and res.json()["field"] == "quantity"
    res = await cloud_client.get("/api/v1/gateways?limit=0", headers=ADMIN_HEADERS)
    assert res.status_code == 422 and res.json()["field"] == "limit", res.text
    res = await cloud_client.post("/api/v1/work-orders", headers={
        **ADMIN_HEADERS, "Content-Type": "application/json"}, content=b'{"number": "WO-')
    assert res.status_code == 422 and res.json()["error"] == "invalid_request"


async def test_an_unknown_path_or_method_answers_json(cloud_client: Any) -> None:
    res = await cloud_client.get("/api/v1/no-such-thing", headers=ADMIN_HEADERS)
    assert res.status_code == 404
    assert res.json()["error"] == "not_found" and res.json()["detail"]
    res = await cloud_client.delete("/api/v1/work-orders", headers=ADMIN_HEADERS)
    assert res.status_code == 405 and res.json()["error"] == "method_not_allowed"


async def test_a_bug_is_logged_with_its_traceback_and_answered_500_json(
        cloud_client: Any) -> None:
    async def broken(_session: Any, _gateway_id: str, _new: Any) -> None:
        raise RuntimeError("an applier blew up")

    cloud_client.app.state.appliers.append(broken)
    with structlog.testing.capture_logs() as logs:
        res = await cloud_client.post("/api/v1/ingest", content=batch_bytes(
            "gw-test", [record(1)]), headers={"Content-Type": "application/msgpack",
                                              "Accept": "application/json"})
    assert res.status_code == 500
    assert res.json()["error"] == "internal_error" and "RuntimeError" in res.json()["detail"]
    failed = [e for e in logs if e["event"] == "request_failed"]
    assert len(failed) == 1 and failed[0]["path"] == "/api/v1/ingest"
    assert failed[0].get("exc_info") is True
