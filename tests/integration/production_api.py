"""Shared set-up of the master data and work order tests: a planner and a viewer with API
tokens on ``cloud_client`` (fixture ``api``; import ``api_fixture``), and a small plant (machine, product, materials, BOM, routing)."""

from __future__ import annotations

from typing import Any

import pytest

PASSWORD = "correct horse battery"


@pytest.fixture(name="api")
async def api_fixture(cloud_client: Any) -> Any:
    """``cloud_client`` acting as planner ``pat``; ``api.viewer``/``api.admin`` headers."""
    from cloud.auth import create_api_token, create_user

    db = cloud_client.app.state.db
    tokens = {}
    for name, role in (("pat", "planner"), ("vic", "viewer")):
        await create_user(db, name, role, PASSWORD)
        tokens[role] = (await create_api_token(db, name))[1]
    cloud_client.headers["Authorization"] = f"Bearer {tokens['planner']}"
    cloud_client.viewer = {"Authorization": f"Bearer {tokens['viewer']}"}
    cloud_client.admin = cloud_client.admin_headers
    return cloud_client


async def make_plant(api: Any, *, product: str = "P-100", routing_steps: int = 2) -> int:
    """Machine (gw-test/cnc-03), product, two materials, BOM v1, routing v1; the machine id."""
    res = await api.post("/api/v1/machines", headers=api.admin, json={
        "gateway_id": "gw-test", "device": "cnc-03", "name": "CNC 3", "work_center": "WC-1"})
    assert res.status_code in (201, 409), res.text
    machine = (await api.get("/api/v1/machines", params={"q": "cnc 3"})).json()["items"][0]
    assert (await api.put(f"/api/v1/products/{product}",
                          json={"name": "Housing", "unit": "pcs"})).status_code == 200
    for code, unit in (("M-1", "kg"), ("M-2", "pcs")):
        assert (await api.put(f"/api/v1/materials/{code}", json={
            "name": code, "unit": unit, "lead_time_days": 3})).status_code == 200
    res = await api.post("/api/v1/boms", json={"product": product, "lines": [
        {"material": "M-1", "qty_per_unit": "0.125", "scrap_factor": 0.02},
        {"material": "M-2", "qty_per_unit": 2, "backflush_scrap": True, "step": 10}]})
    assert res.status_code == 201, res.text
    res = await api.post("/api/v1/routings", json={"product": product, "operations": [
        {"step": 10 * (i + 1), "name": f"op {i + 1}", "machine_id": machine["id"],
         "ideal_cycle_ms": 12000, "cavities": 2} for i in range(routing_steps)]})
    assert res.status_code == 201, res.text
    return int(machine["id"])
