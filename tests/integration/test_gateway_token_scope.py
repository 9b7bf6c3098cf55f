"""A gateway's token ingests and reads its own gateway's status and counters, nothing
else: every route of the API (walked from ``app.openapi()``, path parameters filled with
values that exist in a small plant) answers it 401 or 403, on SQLite and PostgreSQL.
Another gateway's status and counters are 403. Nothing it tried left a change or an
audit entry. The public login/logout routes are the only others it may call.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import func, select

from cloud.auth import create_gateway
from cloud.core.models import AuditEntry
from tests.fixtures.ingest import count_record, post_ingest
from tests.fixtures.plant import add_work_order, make_plant, release, start_dispatch

pytestmark = pytest.mark.needs_service("postgresql")
T0 = 1_700_000_000_000

OWN = "gw-test"  # cloud_client's gateway
ALLOWED = {("POST", "/api/v1/ingest"), ("GET", "/api/v1/gateways/{gateway_id}"),
           ("GET", "/api/v1/gateways/{gateway_id}/devices/{device}/counters")}
PUBLIC = {("POST", "/api/v1/login"), ("POST", "/api/v1/logout")}


async def plant_ids(api: Any) -> dict[str, str]:
    """Path parameter values that name things that exist."""
    machine = await make_plant(api)
    await add_work_order(api, "WO-1", "P-100", 10)
    op = (await release(api, "WO-1"))[0]
    dispatch = await start_dispatch(api, machine, op, T0)
    token_id = (await api.get("/api/v1/me/tokens")).json()["items"][0]["id"]
    return {"gateway_id": OWN, "device": "cnc-03", "machine_id": str(machine),
            "dispatch_id": str(dispatch["id"]), "number": "WO-1", "step": "10",
            "action": "complete", "product": "P-100", "version": "current", "code": "M-1",
            "kind": "materials", "key": "anomalies", "name": "pat", "token_id": str(token_id),
            "start_ts": str(T0), "calendar_id": "1", "counter_id": "1", "anomaly_id": "1",
            "channel_id": "1", "notification_id": "1"}


def fill(path: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in values, f"no plausible value for path parameter {name!r} of {path}"
        return values[name]
    return re.sub(r"{(\w+)}", one, path)


async def audit_count(api: Any) -> int:
    async with api.app.state.db.sessions() as s:
        return int(await s.scalar(select(func.count()).select_from(AuditEntry)) or 0)


async def test_a_gateway_token_reaches_only_its_own_gateway(api: Any):
    values = await plant_ids(api)
    gateway = {"Authorization": f"Bearer {api.token}"}
    await create_gateway(api.app.state.db, "gw-other")

    # what it may do
    res = await post_ingest(api, [count_record(1, "c_good", 0, 3, ts=T0 + 1000)], gateway=OWN)
    assert res.status_code == 200, res.text
    res = await api.get(f"/api/v1/gateways/{OWN}", headers=gateway)
    assert res.status_code == 200 and res.json()["last_seq"] == 1, res.text
    res = await api.get(f"/api/v1/gateways/{OWN}/devices/cnc-03/counters", headers=gateway)
    assert res.status_code == 200, res.text

    # another gateway: neither its status nor its counters, known or not
    for path in ("/api/v1/gateways/gw-other", "/api/v1/gateways/gw-other/devices/x/counters",
                 "/api/v1/gateways/gw-nobody"):
        res = await api.get(path, headers=gateway)
        assert (res.status_code, res.json()["error"]) == (403, "other_gateway"), path
    after_own = await audit_count(api)  # ingest moved the order (system entries)
    res = await post_ingest(api, [count_record(1, "c_good", 0, 3)], gateway="gw-other")
    assert res.status_code == 403

    # everything else: 401/403, whatever the method
    walked, allowed = [], []
    for path, item in api.app.openapi()["paths"].items():
        for method in item:
            route = (method.upper(), path)
            if route in PUBLIC:
                continue
            url = fill(path, values)
            if route in ALLOWED:
                allowed.append(route)
                continue
            body = {} if method in ("post", "put", "patch") else None
            res = await api.request(method.upper(), url, json=body, headers=gateway)
            assert res.status_code in (401, 403), (method, url, res.status_code, res.text)
            walked.append(route)
    assert sorted(allowed) == sorted(ALLOWED)
    assert len(walked) > 60  # the walk reached the whole API
    assert await audit_count(api) == after_own  # the walk changed nothing
    # the plant is as it was: the dispatch still runs, the order is still released
    doc = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert doc["status"] in ("released", "in_progress")
    assert (await api.get("/api/v1/materials/M-1")).json()["name"] == "M-1"
