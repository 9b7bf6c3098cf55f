"""The REST lists, on SQLite and PostgreSQL (Alembic-migrated): every list answers
``{items, total, limit, offset}``; the dispatch list (machine, work order, time window),
unassigned production, shortages, stock moves, the caller's API tokens, users (role) and
the audit log (entity, id, actor, action, time window; who may read what), each paged
and filtered, a bad filter 422. And master data changes are audited, readable through
``GET /api/v1/audit``.

Plant (in-process, ``api``: planner ``pat``, viewer ``vic``, admin): machines M1
(gw-test/cnc-03) and M2 (gw-test/imm-07), product P with one operation, orders WO-1 and
WO-2 released.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.ingest import count_record, ingest
from tests.fixtures.plant import add_machine, add_routing, add_work_order, put_product, release

pytestmark = pytest.mark.needs_service("postgresql")
T0 = 1_700_000_000_000
H = 3_600_000


@pytest.fixture
async def plant(api: Any) -> Any:
    m = {name: await add_machine(api, device, name)
         for name, device in (("M1", "cnc-03"), ("M2", "imm-07"))}
    await put_product(api, "P", name="part")
    await add_routing(api, "P", [{"step": 10, "name": "mold", "work_center": "WC"}])
    ops = {}
    for number in ("WO-1", "WO-2"):
        await add_work_order(api, number, "P", 100)
        [ops[number]] = await release(api, number)
    api.m, api.ops = m, ops
    return api


def gateway_headers(api: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


async def get(api: Any, path: str, status: int = 200, headers: dict[str, str] | None = None,
              **params: Any) -> Any:
    res = await api.get(path, params=params, headers=headers)
    assert res.status_code == status, (path, params, res.text)
    return res.json()


def assert_page(doc: dict[str, Any], total: int, limit: int, offset: int) -> list[Any]:
    assert (doc["total"], doc["limit"], doc["offset"]) == (total, limit, offset), doc
    return list(doc["items"])


async def test_dispatch_list_filters_and_pages(plant: Any):
    api, m, ops = plant, plant.m, plant.ops
    for machine, order, start, end in (("M1", "WO-1", T0, T0 + H),
                                       ("M1", "WO-2", T0 + 2 * H, T0 + 3 * H),
                                       ("M2", "WO-1", T0 + H, None)):
        res = await api.post("/api/v1/dispatches", json={
            "machine_id": m[machine], "wo_operation_id": ops[order], "start_ts": start,
            "end_ts": end})
        assert res.status_code == 201, res.text

    def key(items: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
        return [(d["machine_id"], d["work_order"], d["start_ts"]) for d in items]

    every = assert_page(await get(api, "/api/v1/dispatches", headers=api.viewer), 3, 50, 0)
    assert key(every) == [(m["M1"], "WO-2", T0 + 2 * H), (m["M2"], "WO-1", T0 + H),
                          (m["M1"], "WO-1", T0)]  # newest start first
    assert every[1]["end_ts"] is None and every[1]["step"] == 10
    assert every[0]["wo_operation_id"] == ops["WO-2"] and every[0]["created_by"] == "pat"
    page = await get(api, "/api/v1/dispatches", limit=1, offset=1)
    assert key(assert_page(page, 3, 1, 1)) == [(m["M2"], "WO-1", T0 + H)]
    assert key((await get(api, "/api/v1/dispatches", machine_id=m["M1"]))["items"]) == [
        (m["M1"], "WO-2", T0 + 2 * H), (m["M1"], "WO-1", T0)]
    assert key((await get(api, "/api/v1/dispatches", work_order="WO-1"))["items"]) == [
        (m["M2"], "WO-1", T0 + H), (m["M1"], "WO-1", T0)]
    # [from, to) keeps what overlaps it: the running one, not the two that touch its edges
    window = await get(api, "/api/v1/dispatches", **{"from": T0 + H, "to": T0 + 2 * H})
    assert key(window["items"]) == [(m["M2"], "WO-1", T0 + H)]
    assert (await get(api, "/api/v1/dispatches", **{"from": T0 + 10 * H}))["total"] == 1
    assert (await get(api, "/api/v1/dispatches", to=T0 + 1))["total"] == 1
    both = await get(api, "/api/v1/dispatches", machine_id=m["M1"], work_order="WO-2",
                     **{"from": T0})
    assert key(both["items"]) == [(m["M1"], "WO-2", T0 + 2 * H)]
    assert (await get(api, "/api/v1/dispatches", work_order="WO-9"))["total"] == 0

    bad = await get(api, "/api/v1/dispatches", 422, **{"from": T0 + H, "to": T0})
    assert (bad["error"], bad["field"]) == ("invalid", "from")
    for params in ({"machine_id": "M1"}, {"from": "yesterday"}, {"limit": 0},
                   {"limit": 501}, {"offset": -1}):
        await get(api, "/api/v1/dispatches", 422, **params)
    await get(api, "/api/v1/dispatches", 403, headers=gateway_headers(api))


async def test_unassigned_is_paged_by_machine(plant: Any):
    api = plant
    records = [count_record(1, "c_good", 0, 5, device="cnc-03", ts=T0),
               count_record(2, "c_good", 0, 7, device="imm-07", ts=T0),
               count_record(3, "c_good", 0, 2, device="press-9", ts=T0)]  # no machine
    await ingest(api, records)
    every = assert_page(await get(api, "/api/v1/unassigned"), 3, 50, 0)
    assert [(u["machine_id"], u["device"], u["good"]) for u in every] == [
        (api.m["M1"], "cnc-03", 5), (api.m["M2"], "imm-07", 7), (None, "press-9", 2)]
    page = await get(api, "/api/v1/unassigned", limit=2, offset=2, headers=api.viewer)
    assert assert_page(page, 3, 2, 2) == every[2:]
    one = await get(api, "/api/v1/unassigned", machine_id=api.m["M2"])
    assert assert_page(one, 1, 50, 0) == [every[1]]
    await get(api, "/api/v1/unassigned", 422, machine_id="x")
    await get(api, "/api/v1/unassigned", 422, limit=0)


async def test_shortages_and_stock_moves_are_paged(api: Any):
    for code, safety in (("A", "10"), ("B", "20"), ("C", "30"), ("D", None)):
        res = await api.put(f"/api/v1/materials/{code}", json={
            "name": code, "unit": "kg", "safety_stock": safety})
        assert res.status_code == 200, res.text
    for code, qty in (("A", 1), ("B", 2), ("C", 3), ("D", 4), ("A", 5)):
        res = await api.post("/api/v1/stock/receipts", json={"material": code, "qty": qty})
        assert res.status_code == 201, res.text

    short = assert_page(await get(api, "/api/v1/stock/shortages"), 3, 50, 0)
    assert sorted(s["material"] for s in short) == ["A", "B", "C"]
    page = await get(api, "/api/v1/stock/shortages", limit=2, offset=1, headers=api.viewer)
    assert assert_page(page, 3, 2, 1) == short[1:]
    await get(api, "/api/v1/stock/shortages", 422, limit=501)

    moves = assert_page(await get(api, "/api/v1/stock/moves"), 5, 100, 0)
    assert [mv["material"] for mv in moves] == ["A", "D", "C", "B", "A"]  # newest first
    assert moves[0]["qty_u"] == 5_000_000 and moves[0]["user"] == "pat"
    page = await get(api, "/api/v1/stock/moves", limit=2, offset=2)
    assert assert_page(page, 5, 2, 2) == moves[2:4]
    assert page["next_before_id"] == moves[3]["id"]
    last = await get(api, "/api/v1/stock/moves", limit=2, offset=4)
    assert assert_page(last, 5, 2, 4) == moves[4:] and last["next_before_id"] is None
    only_a = await get(api, "/api/v1/stock/moves", material="A", kind="receipt")
    assert assert_page(only_a, 2, 100, 0) == [moves[0], moves[4]]
    keyed = await get(api, "/api/v1/stock/moves", before_id=moves[1]["id"])
    assert assert_page(keyed, 3, 100, 0) == moves[2:]
    bad = await get(api, "/api/v1/stock/moves", 422, kind="theft")
    assert bad["field"] == "kind"
    await get(api, "/api/v1/stock/moves", 422, offset=-1)


async def test_my_tokens_are_paged(api: Any):
    ids = []
    for name in ("one", "two", "three"):
        res = await api.post("/api/v1/me/tokens", json={"name": name})
        assert res.status_code == 201, res.text
        ids.append(res.json()["id"])
    mine = assert_page(await get(api, "/api/v1/me/tokens"), 4, 50, 0)  # + the fixture's
    assert [t["name"] for t in mine[1:]] == ["one", "two", "three"]
    assert all("token" not in t and "token_hash" not in t for t in mine)
    page = await get(api, "/api/v1/me/tokens", limit=2, offset=2)
    assert [t["id"] for t in assert_page(page, 4, 2, 2)] == ids[1:]
    # the viewer sees only their own
    assert assert_page(await get(api, "/api/v1/me/tokens", headers=api.viewer), 1, 50, 0)
    await get(api, "/api/v1/me/tokens", 422, limit="many")


async def test_users_total_and_role_filter(api: Any):
    every = assert_page(await get(api, "/api/v1/users", headers=api.admin), 3, 50, 0)
    assert [(u["name"], u["role"]) for u in every] == [
        ("admin", "admin"), ("pat", "planner"), ("vic", "viewer")]
    planners = await get(api, "/api/v1/users", headers=api.admin, role="planner")
    assert [u["name"] for u in assert_page(planners, 1, 50, 0)] == ["pat"]
    page = await get(api, "/api/v1/users", headers=api.admin, limit=1, offset=2)
    assert [u["name"] for u in assert_page(page, 3, 1, 2)] == ["vic"]
    bad = await get(api, "/api/v1/users", 422, headers=api.admin, role="boss")
    assert bad["field"] == "role"
    await get(api, "/api/v1/users", 422, headers=api.admin, limit=0)
    await get(api, "/api/v1/users", 403)  # a planner


async def test_audit_log_filters_pages_and_access(plant: Any):
    api = plant
    # a user change (admin-only entries) and a failed login beside the plant's entries
    res = await api.post("/api/v1/users", headers=api.admin, json={
        "name": "zoe", "role": "viewer", "password": "correct horse battery"})
    assert res.status_code == 201, res.text
    assert (await api.post("/api/v1/login", json={"name": "zoe", "password": "nope"})
            ).status_code == 401

    everything = await get(api, "/api/v1/audit", headers=api.admin, limit=500)
    items = everything["items"]
    assert everything["total"] == len(items) > 8
    stamps = [(e["ts"], e["id"]) for e in items]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert {"user.create", "login.failed", "work_order.release", "machine.create"} <= {
        e["action"] for e in items}

    releases = await get(api, "/api/v1/audit", headers=api.admin, action="work_order.release")
    assert sorted(e["entity_id"] for e in assert_page(releases, 2, 50, 0)) == ["WO-1", "WO-2"]
    assert {e["actor"] for e in releases["items"]} == {"pat"}
    one = await get(api, "/api/v1/audit", entity="work_order", entity_id="WO-2")
    assert [e["action"] for e in one["items"]] == ["work_order.release", "work_order.create"]
    by_admin = await get(api, "/api/v1/audit", headers=api.admin, actor="admin")
    assert {e["action"] for e in by_admin["items"]} == {"machine.create", "user.create"}
    page = await get(api, "/api/v1/audit", headers=api.admin, limit=3, offset=3)
    assert assert_page(page, len(items), 3, 3) == items[3:6]
    newest = datetime.fromisoformat(items[0]["ts"])
    since = await get(api, "/api/v1/audit", headers=api.admin,
                      since=newest.isoformat(), until=(newest + timedelta(seconds=1)).isoformat())
    assert items[0] in since["items"]
    later = datetime.now(UTC) + timedelta(hours=1)
    assert (await get(api, "/api/v1/audit", headers=api.admin,
                      since=later.isoformat()))["total"] == 0
    assert (await get(api, "/api/v1/audit", headers=api.admin,
                      until=datetime(2000, 1, 1, tzinfo=UTC).isoformat()))["total"] == 0

    # a planner reads the plant's entries, not those about people and credentials
    planner = await get(api, "/api/v1/audit", limit=500)
    assert planner["total"] < everything["total"]
    assert {e["entity"] for e in planner["items"]}.isdisjoint({"user", "api_token"})
    refused = await get(api, "/api/v1/audit", 403, entity="user")
    assert refused["error"] == "forbidden"
    await get(api, "/api/v1/audit", 403, headers=api.viewer)
    await get(api, "/api/v1/audit", 403, headers=gateway_headers(api))

    bad = await get(api, "/api/v1/audit", 422, since="2026-01-01T00:00:00")
    assert bad["field"] == "since"
    bad = await get(api, "/api/v1/audit", 422, since="2026-01-02T00:00:00Z",
                    until="2026-01-01T00:00:00Z")
    assert bad["field"] == "since"
    await get(api, "/api/v1/audit", 422, since="last tuesday")
    await get(api, "/api/v1/audit", 422, limit=1000)


async def test_master_data_changes_are_audited(api: Any):
    """Creating and changing a material, product, BOM, routing and machine each leave an
    entry saying who did what, readable through the audit API."""
    steps = [
        ("PUT", "/api/v1/materials/RESIN", {"name": "Resin", "unit": "kg"}, None),
        ("PUT", "/api/v1/materials/RESIN", {"name": "Resin PA66", "unit": "kg",
                                            "lead_time_days": 4}, None),
        ("PUT", "/api/v1/products/P-1", {"name": "Housing"}, None),
        ("PUT", "/api/v1/products/P-1", {"name": "Housing v2"}, None),
        ("POST", "/api/v1/boms", {"product": "P-1", "lines": [
            {"material": "RESIN", "qty_per_unit": "0.5"}]}, None),
        ("POST", "/api/v1/boms", {"product": "P-1", "lines": [
            {"material": "RESIN", "qty_per_unit": "0.6"}]}, None),
        ("POST", "/api/v1/machines", {"gateway_id": "gw-test", "device": "cnc-03",
                                      "name": "CNC 3"}, api.admin),
    ]
    for method, path, body, headers in steps:
        res = await api.request(method, path, json=body, headers=headers)
        assert res.status_code in (200, 201), (path, res.text)
    machine = res.json()["id"]
    res = await api.patch(f"/api/v1/machines/{machine}", headers=api.admin,
                          json={"name": "CNC 3 (new spindle)", "work_center": "WC-2"})
    assert res.status_code == 200, res.text
    for _ in range(2):
        res = await api.post("/api/v1/routings", json={"product": "P-1", "operations": [
            {"step": 10, "name": "mold", "machine_id": machine}]})
        assert res.status_code == 201, res.text

    async def trail(entity: str, entity_id: str) -> list[tuple[str, str, dict[str, Any]]]:
        doc = await get(api, "/api/v1/audit", headers=api.admin, entity=entity,
                        entity_id=entity_id)
        return [(e["actor"], e["action"], e["detail"]) for e in reversed(doc["items"])]

    material = await trail("material", "RESIN")
    assert [(a, act) for a, act, _ in material] == [("pat", "material.create"),
                                                    ("pat", "material.update")]
    assert material[1][2]["name"] == "Resin PA66"
    product = await trail("product", "P-1")
    assert [(a, act) for a, act, _ in product] == [("pat", "product.create"),
                                                   ("pat", "product.update")]
    assert product[1][2]["name"] == "Housing v2"
    for version in (1, 2):
        assert [(a, act) for a, act, _ in await trail("bom", f"P-1/v{version}")] == [
            ("pat", "bom.create")]
        assert [(a, act) for a, act, _ in await trail("routing", f"P-1/v{version}")] == [
            ("pat", "routing.create")]
    machine_trail = await trail("machine", str(machine))
    assert [(a, act) for a, act, _ in machine_trail] == [("admin", "machine.create"),
                                                         ("admin", "machine.update")]
    assert machine_trail[1][2]["name"] == "CNC 3 (new spindle)"


async def test_every_list_is_paged_alike(plant: Any):
    """Every GET route without path parameters that answers a list answers
    ``{items, total, limit, offset}`` and honours limit and offset."""
    # The one exception: a snapshot of every machine's state, with its `now`. A new list
    # that is not paged fails here.
    unpaged = {"/api/v1/machines/states"}
    checked = []
    for path, item in plant.app.openapi()["paths"].items():
        if "get" not in item or "{" in path or not path.startswith("/api/v1/"):
            continue
        res = await plant.get(path, headers=plant.admin)
        if res.status_code != 200 or not isinstance(res.json(), dict) \
                or "items" not in res.json() or path in unpaged:
            continue
        doc = res.json()
        assert {"items", "total", "limit", "offset"} <= set(doc), path
        names = {p["name"] for p in item["get"].get("parameters", [])}
        assert {"limit", "offset"} <= names, path
        checked.append(path)
    assert {"/api/v1/dispatches", "/api/v1/unassigned", "/api/v1/stock/shortages",
            "/api/v1/stock/moves", "/api/v1/me/tokens", "/api/v1/users", "/api/v1/audit",
            "/api/v1/machines", "/api/v1/work-orders"} <= set(checked)


def test_dispatch_and_inventory_routes_are_tagged(cloud_db_url: str):
    from cloud.app import create_app

    paths = create_app(cloud_db_url).openapi()["paths"]
    for path, tag in (("/api/v1/dispatches", "dispatch"), ("/api/v1/unassigned", "dispatch"),
                      ("/api/v1/dispatches/{dispatch_id}/stop", "dispatch"),
                      ("/api/v1/stock/moves", "inventory"),
                      ("/api/v1/stock/shortages", "inventory"),
                      ("/api/v1/stock/receipts", "inventory"),
                      ("/api/v1/materials/{code}/stock", "inventory"),
                      ("/api/v1/audit", "audit"), ("/api/v1/ingest", "gateways")):
        for op in paths[path].values():
            assert op["tags"] == [tag], (path, op.get("tags"))
