"""Master data and the work order list through the API, on SQLite and PostgreSQL:
machines (admin), products and materials (planner), BOM/routing versions, exact decimal
quantities, roles, pagination and every filter."""

from __future__ import annotations

import pytest

from tests.fixtures.plant import make_plant

pytestmark = pytest.mark.needs_service("postgresql")


async def test_machines_are_admin_only_and_unique_per_device(api):
    body = {"gateway_id": "gw-test", "device": "imm-1", "name": "IMM 1"}
    assert (await api.post("/api/v1/machines", json=body)).status_code == 403  # planner
    res = await api.post("/api/v1/machines", json=body, headers=api.admin)
    assert res.status_code == 201 and res.json()["work_center"] is None
    assert (await api.post("/api/v1/machines", json=body, headers=api.admin)).status_code == 409
    res = await api.post("/api/v1/machines", headers=api.admin,
                         json={**body, "gateway_id": "gw-nope"})
    assert res.status_code == 404 and "gw-nope" in res.json()["detail"]
    mid = (await api.get("/api/v1/machines", headers=api.viewer)).json()["items"][0]["id"]
    res = await api.patch(f"/api/v1/machines/{mid}", json={"work_center": "Moulding"},
                          headers=api.admin)
    assert res.json()["work_center"] == "Moulding"
    assert (await api.get("/api/v1/machines", params={"work_center": "Moulding"})
            ).json()["total"] == 1


async def test_products_materials_and_exact_quantities(api):
    res = await api.put("/api/v1/materials/M-1", json={
        "name": "Resin", "unit": "kg", "lead_time_days": 5, "safety_stock": "0.1"})
    assert res.json()["safety_stock_manual"] == "0.1"
    res = await api.put("/api/v1/materials/M-1", json={
        "name": "Resin", "unit": "kg", "safety_stock": 0.3})
    assert res.json()["safety_stock_manual"] == "0.3"
    res = await api.put("/api/v1/materials/M-1", json={
        "name": "Resin", "unit": "kg", "safety_stock": "0.0000001"})
    assert res.status_code == 422 and res.json()["field"] == "safety_stock"
    res = await api.put("/api/v1/materials/M-1", json={"name": "R", "unit": "kg"},
                        headers=api.viewer)
    assert res.status_code == 403
    assert (await api.get("/api/v1/materials/M-404")).status_code == 404
    await api.put("/api/v1/products/P-1", json={"name": "Cap"})
    assert (await api.get("/api/v1/products/P-1")).json() == {"code": "P-1", "name": "Cap",
                                                             "unit": "pcs"}
    res = await api.get("/api/v1/products", params={"q": "CA"}, headers=api.viewer)
    assert res.json()["total"] == 1


async def test_bom_and_routing_versions(api):
    await make_plant(api)
    res = await api.post("/api/v1/boms", json={"product": "P-100", "version": 1, "lines": [
        {"material": "M-1", "qty_per_unit": 1}]})
    assert res.status_code == 409
    res = await api.post("/api/v1/boms", json={"product": "P-100", "lines": [
        {"material": "M-9", "qty_per_unit": 1}]})
    assert res.status_code == 404 and "M-9" in res.json()["detail"]
    res = await api.post("/api/v1/boms", json={"product": "P-100", "lines": []})
    assert res.status_code == 422
    v1 = (await api.get("/api/v1/boms/P-100/1")).json()
    assert [x["qty_per_unit"] for x in v1["lines"]] == ["0.125", "2"]
    res = await api.post("/api/v1/routings", json={"product": "P-100", "operations": [
        {"step": 1, "name": "a"}, {"step": 1, "name": "b"}]})
    assert res.status_code == 422
    res = await api.post("/api/v1/routings", json={"product": "P-100", "operations": [
        {"step": 10, "name": "mold", "work_center": "WC-1"}, {"step": 20, "name": "deburr"}]})
    assert res.status_code == 422, res.text
    assert res.json()["field"] == "work_center" and "step 20" in res.json()["detail"]
    res = await api.post("/api/v1/import/routings", files={"file": (
        "r.csv", b"product,step,name,work_center\nP-100,10,mold,WC-1\nP-100,20,deburr,\n",
        "text/csv")})
    assert res.status_code == 422, res.text
    assert res.json()["errors"] and "step 20" in res.json()["errors"][0], res.text
    assert "3" in res.json()["errors"][0].split("step")[0], res.text  # the row number
    assert (await api.get("/api/v1/routings/P-100/current")).json()["version"] == 1
    assert (await api.get("/api/v1/routings/P-100/7")).status_code == 404


async def test_work_order_list_pages_and_filters(api):
    await make_plant(api)
    await api.put("/api/v1/products/P-200", json={"name": "Lid"})
    for i in range(7):
        res = await api.post("/api/v1/work-orders", json={
            "number": f"WO-{i:02}", "product": "P-200" if i == 6 else "P-100",
            "quantity": 10 + i, "customer": "ACME" if i % 2 else "Bolt_Co",
            "due": f"2026-12-0{i + 1}T08:00:00Z" if i < 5 else None, "priority": i})
        assert res.status_code == 201, res.text
    await api.post("/api/v1/work-orders/WO-01/release")
    await api.post("/api/v1/work-orders/WO-02/cancel")

    async def numbers(**params):
        res = await api.get("/api/v1/work-orders", params=params, headers=api.viewer)
        assert res.status_code == 200, res.text
        return [o["number"] for o in res.json()["items"]], res.json()["total"]

    assert await numbers() == (["WO-00", "WO-01", "WO-02", "WO-03", "WO-04", "WO-06",
                                "WO-05"], 7)  # due first, undated by priority
    assert await numbers(limit=2, offset=2) == (["WO-02", "WO-03"], 7)
    assert await numbers(status="draft") == (["WO-00", "WO-03", "WO-04", "WO-06", "WO-05"], 5)
    assert await numbers(status=["released", "cancelled"]) == (["WO-01", "WO-02"], 2)
    assert await numbers(status="released,cancelled") == (["WO-01", "WO-02"], 2)
    assert await numbers(customer="ACME") == (["WO-01", "WO-03", "WO-05"], 3)
    assert await numbers(product="P-200") == (["WO-06"], 1)
    assert await numbers(due_from="2026-12-02T08:00:00Z", due_to="2026-12-04T00:00:00Z") == (
        ["WO-01", "WO-02"], 2)
    assert await numbers(q="wo-0") == (await numbers())
    assert await numbers(q="_co") == (["WO-00", "WO-02", "WO-04", "WO-06"], 4)  # _ is literal
    res = await api.get("/api/v1/work-orders", params={"status": "running"})
    assert res.status_code == 422 and res.json()["field"] == "status"
    assert (await api.get("/api/v1/work-orders", params={"limit": 501})).status_code == 422
    item = (await api.get("/api/v1/work-orders", params={"q": "WO-01"})).json()["items"][0]
    assert (item["status"], item["good"], item["allowed_actions"]) == (
        "released", 0, ["update", "cancel", "complete"])


async def test_openapi_lists_the_tags(api):
    doc = (await api.get("/openapi.json")).json()
    tags = {t for path in doc["paths"].values() for op in path.values() for t in op.get("tags", [])}
    assert {"machines", "products", "materials", "boms", "routings", "work-orders",
            "import"} <= tags
