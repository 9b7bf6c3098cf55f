"""The dispatch routes over HTTP, on SQLite and PostgreSQL (Alembic-migrated): start, stop,
edit, assign a range, assign records, the unassigned list; who may (planner, admin) and
who may not (viewer 403, gateway token 403, nobody 401); 404 for unknown orders and
machines, 409 for overlaps; one audit row per action. And 20 gateways ingesting over real
HTTP (``plantsync-cloud serve``) while a planner edits dispatches.

Plant (in-process): machines M1 (gw-test/cnc-03) and M2 (gw-test/imm-07), product P with
one operation, BOM RESIN 1 kg per piece; orders WO-1 and WO-2 (100 pieces) released.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cloud.core.db import Database
from cloud.core.models import AuditEntry
from cloud.inventory import ledger_mismatches
from tests.fixtures.cloud import CloudServer
from tests.fixtures.ingest import count_record, ingest
from tests.fixtures.plant import (
    add_bom,
    add_machine,
    add_routing,
    add_work_order,
    put_material,
    put_product,
    release,
    start_dispatch,
)

pytestmark = pytest.mark.needs_service("postgresql")
T0 = 1_700_000_000_000
H = 3_600_000
U = 1_000_000


def good(seq: int, ts: int, n: int, device: str = "cnc-03") -> dict[str, Any]:
    return count_record(seq, "c_good", 0, n, ts=ts, device=device)


@pytest.fixture
async def plant(api: Any) -> Any:
    m = {name: await add_machine(api, device, name)
         for name, device in (("M1", "cnc-03"), ("M2", "imm-07"))}
    await put_material(api, "RESIN", name="resin", unit="kg")
    await put_product(api, "P", name="part")
    await add_bom(api, "P", [{"material": "RESIN", "qty_per_unit": 1}])
    await add_routing(api, "P", [{"step": 10, "name": "mold", "work_center": "WC"}])
    ops = {}
    for number in ("WO-1", "WO-2"):
        await add_work_order(api, number, "P", 100)
        [ops[number]] = await release(api, number)
    api.m, api.ops = m, ops
    yield api
    async with api.app.state.db.sessions() as s:
        assert await ledger_mismatches(s) == []


async def audit_rows(api: Any) -> list[tuple[str, str, str, dict[str, Any]]]:
    async with api.app.state.db.sessions() as s:
        rows = (await s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.entity_id,
                                       AuditEntry.detail)
                                .where(AuditEntry.action.like("dispatch.%"))
                                .order_by(AuditEntry.id))).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def good_of(api: Any, number: str) -> int:
    return int((await api.get(f"/api/v1/work-orders/{number}")).json()["operations"][0]["good"])


async def unassigned(api: Any, machine: int) -> tuple[int, int]:
    items = (await api.get("/api/v1/unassigned", params={"machine_id": machine})).json()["items"]
    return (items[0]["good"], items[0]["records"]) if items else (0, 0)


async def test_who_may_act(plant):
    api = plant
    res = await api.post("/api/v1/dispatches", json={
        "machine_id": api.m["M1"], "wo_operation_id": api.ops["WO-1"], "start_ts": T0})
    assert res.status_code == 201, res.text
    d = res.json()["id"]
    await ingest(api, [good(1, T0 + 10, 2)])
    body = {"wo_operation_id": api.ops["WO-2"], "start_ts": T0 - H, "end_ts": T0}
    actions = [
        ("POST", "/api/v1/dispatches", {"machine_id": api.m["M2"],
                                        "wo_operation_id": api.ops["WO-1"], "start_ts": T0}),
        ("POST", f"/api/v1/dispatches/{d}/stop", {"end_ts": T0 + H}),
        ("PATCH", f"/api/v1/dispatches/{d}", {"start_ts": T0 - H}),
        ("POST", f"/api/v1/machines/{api.m['M1']}/assign", body),
        ("POST", "/api/v1/attributions/assign", {"wo_operation_id": api.ops["WO-2"],
                                                 "records": [["gw-test", 1]]}),
    ]
    reads = [("GET", f"/api/v1/dispatches/{d}", None), ("GET", "/api/v1/unassigned", None)]
    before = await audit_rows(api)
    gateway = {"Authorization": f"Bearer {api.token}"}
    for method, url, json in actions + reads:
        for headers, status, error in ((api.viewer, 403, "forbidden"),
                                       (gateway, 403, "gateway_not_allowed"),
                                       ({"Authorization": ""}, 401, "missing_token"),
                                       ({"Authorization": "Bearer nonsense"}, 401,
                                        "unknown_token")):
            if method == "GET" and headers is api.viewer:
                status = 200
            res = await api.request(method, url, json=json, headers=headers)
            assert res.status_code == status, (method, url, headers, res.text)
            if status != 200:
                assert res.json()["error"] == error
    assert await audit_rows(api) == before
    assert (await api.get(f"/api/v1/dispatches/{d}")).json()["end_ts"] is None
    assert await good_of(api, "WO-1") == 2 and await good_of(api, "WO-2") == 0
    # an admin may act like a planner
    res = await api.post(f"/api/v1/dispatches/{d}/stop", json={"end_ts": T0 + H},
                         headers=api.admin)
    assert res.status_code == 200, res.text
    assert (await audit_rows(api))[-1][:2] == ("admin", "dispatch.stop")


# M1: WO-1 from T0; counts at T0+10 (5), T0+2h (3), T0+5h (2). Stop at T0+1h -> WO-1 5,
# unassigned 5 (2 records); end moved to T0+3h -> WO-1 8; assign [T0+3h, T0+6h) to WO-2
# -> WO-2 2. M2 (imm-07): WO-2 running from T0, counts at T0+1h (1) and T0+4h (4); a
# changeover to WO-1 over [T0+2h, T0+3h) stops WO-2 at T0+2h, so the 4-h count belongs
# to nobody; assigning that record to WO-1 adds 4.

M1_COUNTS = [good(1, T0 + 10, 5), good(2, T0 + 2 * H, 3), good(3, T0 + 5 * H, 2)]


@pytest.fixture
async def m1_counting(plant: Any) -> Any:
    """WO-1 dispatched on M1 from T0 (``m1_counting.d1``) and M1's counts ingested."""
    api = plant
    api.d1 = (await start_dispatch(api, api.m["M1"], api.ops["WO-1"], T0))["id"]
    await ingest(api, M1_COUNTS)
    return api


async def stop_edit_assign_m1(api: Any) -> None:
    """M1's dispatch stopped at T0+1h, its end moved to T0+3h, [T0+3h, T0+6h) to WO-2."""
    for method, url, body in (
            ("POST", f"/api/v1/dispatches/{api.d1}/stop", {"end_ts": T0 + H}),
            ("PATCH", f"/api/v1/dispatches/{api.d1}", {"end_ts": T0 + 3 * H}),
            ("POST", f"/api/v1/machines/{api.m['M1']}/assign",
             {"wo_operation_id": api.ops["WO-2"], "start_ts": T0 + 3 * H,
              "end_ts": T0 + 6 * H})):
        res = await api.request(method, url, json=body)
        assert res.status_code == 200, (url, res.text)


async def start_m2_with_counts(api: Any) -> int:
    """WO-2 dispatched on M2 from T0 and M2's counts ingested; the dispatch id."""
    d2 = (await start_dispatch(api, api.m["M2"], api.ops["WO-2"], T0))["id"]
    await ingest(api, [good(4, T0 + H, 1, "imm-07"), good(5, T0 + 4 * H, 4, "imm-07")])
    return int(d2)


async def test_a_started_dispatch_gets_the_counts_from_its_start(plant):
    api = plant
    m1, wo1 = api.m["M1"], api.ops["WO-1"]
    res = await api.post("/api/v1/dispatches", json={"machine_id": m1, "wo_operation_id": wo1,
                                                     "start_ts": T0})
    assert res.status_code == 201, res.text
    d1 = res.json()
    assert (d1["machine_id"], d1["start_ts"], d1["end_ts"], d1["created_by"]) == (m1, T0, None,
                                                                                 "pat")
    await ingest(api, M1_COUNTS)
    assert await good_of(api, "WO-1") == 10


async def test_refused_dispatch_actions_change_nothing(m1_counting):
    api, d1 = m1_counting, m1_counting.d1
    m1, wo1, wo2 = api.m["M1"], api.ops["WO-1"], api.ops["WO-2"]
    audited = len(await audit_rows(api))
    for method, url, json, status, words in (
            ("POST", "/api/v1/dispatches", {"machine_id": 999_999, "wo_operation_id": wo1},
             404, ["machine 999999"]),
            ("POST", "/api/v1/dispatches", {"machine_id": m1, "wo_operation_id": 999_999},
             404, ["999999"]),
            ("POST", "/api/v1/dispatches", {"machine_id": m1, "wo_operation_id": wo2,
                                            "start_ts": T0 - H, "end_ts": T0 + H},
             409, [f"machine {m1}", str(d1)]),
            ("POST", "/api/v1/dispatches", {"machine_id": m1, "wo_operation_id": wo2,
                                            "start_ts": T0, "end_ts": T0}, 422, ["end_ts"]),
            ("POST", "/api/v1/dispatches/999999/stop", {}, 404, ["999999"]),
            ("PATCH", "/api/v1/dispatches/999999", {"start_ts": T0}, 404, ["999999"]),
            ("PATCH", f"/api/v1/dispatches/{d1}", {"end_ts": T0 - 1}, 422, ["end_ts"]),
            ("POST", "/api/v1/machines/999999/assign", {"wo_operation_id": wo2, "start_ts": T0,
                                                        "end_ts": T0 + 1}, 404, ["999999"]),
            ("POST", f"/api/v1/machines/{m1}/assign", {"wo_operation_id": 999_999,
                                                      "start_ts": T0, "end_ts": T0 + 1},
             404, ["999999"]),
            ("POST", "/api/v1/attributions/assign", {"wo_operation_id": wo2,
                                                     "records": [["gw-test", 99]]}, 404, []),
            ("GET", "/api/v1/dispatches/999999", None, 404, ["999999"])):
        res = await api.request(method, url, json=json)
        assert res.status_code == status, (url, json, res.text)
        for w in words:
            assert w in res.json()["detail"], (url, json, res.text)
    assert len(await audit_rows(api)) == audited
    assert await good_of(api, "WO-1") == 10


async def test_stop_edit_and_assign_reattribute_the_machines_counts(m1_counting):
    api, d1 = m1_counting, m1_counting.d1
    m1, wo2 = api.m["M1"], api.ops["WO-2"]
    res = await api.post(f"/api/v1/dispatches/{d1}/stop", json={"end_ts": T0 + H})
    assert res.status_code == 200 and res.json()["end_ts"] == T0 + H, res.text
    assert (await good_of(api, "WO-1"), await unassigned(api, m1)) == (5, (5, 2))
    res = await api.patch(f"/api/v1/dispatches/{d1}", json={"end_ts": T0 + 3 * H})
    assert res.status_code == 200, res.text
    assert (res.json()["reattributed"], res.json()["edited_by"]) == (1, "pat")
    assert (await good_of(api, "WO-1"), await unassigned(api, m1)) == (8, (2, 1))
    res = await api.post(f"/api/v1/machines/{m1}/assign", json={
        "wo_operation_id": wo2, "start_ts": T0 + 3 * H, "end_ts": T0 + 6 * H})
    assert res.status_code == 200, res.text
    [d_assigned] = res.json()["dispatches"]
    assert (await good_of(api, "WO-2"), await unassigned(api, m1)) == (2, (0, 0))
    res = await api.patch(f"/api/v1/dispatches/{d1}", json={"running": True})
    assert res.status_code == 409, res.text
    assert str(d_assigned) in res.json()["detail"] and "overlap" in res.json()["detail"]


async def test_a_changeover_ends_the_running_dispatch_and_records_can_be_assigned(m1_counting):
    """After M1's stop, edit and assign (WO-1 8, WO-2 2)."""
    api = m1_counting
    m2, wo1 = api.m["M2"], api.ops["WO-1"]
    await stop_edit_assign_m1(api)
    d2 = await start_m2_with_counts(api)
    assert await good_of(api, "WO-2") == 7
    res = await api.post("/api/v1/dispatches", json={"machine_id": m2, "wo_operation_id": wo1,
                                                     "start_ts": T0 + 2 * H,
                                                     "end_ts": T0 + 3 * H})
    assert res.status_code == 201, res.text
    assert (await api.get(f"/api/v1/dispatches/{d2}")).json()["end_ts"] == T0 + 2 * H
    assert (await good_of(api, "WO-2"), await unassigned(api, m2)) == (3, (4, 1))
    res = await api.post("/api/v1/attributions/assign", json={"wo_operation_id": wo1,
                                                              "records": [["gw-test", 5]]})
    assert res.status_code == 200 and len(res.json()["dispatches"]) == 1, res.text
    assert (await good_of(api, "WO-1"), await unassigned(api, m2)) == (12, (0, 0))


async def test_every_dispatch_action_is_audited_and_its_counts_backflushed(m1_counting):
    """The whole story of both machines: one audit row per action, the resin backflushed
    for the 12 + 3 pieces of the two orders."""
    api, d1 = m1_counting, m1_counting.d1
    await stop_edit_assign_m1(api)
    d2 = await start_m2_with_counts(api)
    await start_dispatch(api, api.m["M2"], api.ops["WO-1"], T0 + 2 * H, T0 + 3 * H)
    res = await api.post("/api/v1/attributions/assign", json={
        "wo_operation_id": api.ops["WO-1"], "records": [["gw-test", 5]]})
    assert res.status_code == 200, res.text
    rows = await audit_rows(api)
    assert [(a, act) for a, act, _, _ in rows] == [
        ("pat", "dispatch.start"), ("pat", "dispatch.stop"), ("pat", "dispatch.edit"),
        ("pat", "dispatch.assign"), ("pat", "dispatch.start"), ("pat", "dispatch.start"),
        ("pat", "dispatch.assign")]
    assert rows[2][2] == str(d1) and rows[2][3]["after"] == {"start_ts": T0,
                                                             "end_ts": T0 + 3 * H}
    assert rows[5][3]["stopped_dispatch"] == d2
    stock = (await api.get("/api/v1/materials/RESIN/stock")).json()
    assert stock["balance_u"] == -(12 + 3) * U


# --- 20 gateways over real HTTP while a planner edits --------------------------------

GATEWAYS = 20
BATCHES = 5
PER_BATCH = 20


def test_concurrent_ingest_from_20_gateways_while_a_planner_edits(cloud_server: CloudServer):
    """20 gateways, one machine each (device "press"); machines 0-9 run order A, 10-19
    order B, all dispatched open from T0. Each gateway sends 5 batches of 20 counts of 1
    piece at T0+0..T0+99 (ms). Meanwhile a planner flips A's dispatch on machine 0 between
    ending at T0+50 and running, and B's dispatch on machine 10 between starting at T0+50
    and T0, 5 times, then ends machine 0's at T0+50 for good, while master data is
    written and read (no request may fail). By hand: A = 9*100 + 50 = 950
    pieces, B = 10*100 = 1000, machine 0 has 50 unassigned, resin -1950 kg."""
    suffix = uuid.uuid4().hex[:6]
    gws = [cloud_server.create_gateway() for _ in range(GATEWAYS)]
    asyncio.run(_concurrent(cloud_server, gws, suffix))


async def _concurrent(server: CloudServer, gws: list[Any], suffix: str) -> None:
    admin = server.admin_headers
    async with httpx.AsyncClient(base_url=server.url, headers=admin, timeout=60) as api:
        machines = [await add_machine(api, "press", gw.id, gateway=gw.id) for gw in gws]
        mat, prod = f"RESIN-{suffix}", f"P-{suffix}"
        await put_material(api, mat, name="resin", unit="kg")
        await put_product(api, prod, name="p")
        await add_bom(api, prod, [{"material": mat, "qty_per_unit": 1}])
        await add_routing(api, prod, [{"step": 10, "name": "press", "work_center": "WC"}])
        ops, orders = {}, {}
        for key in ("A", "B"):
            orders[key] = number = f"WO-{key}-{suffix}"
            await add_work_order(api, number, prod, 5000)
            [ops[key]] = await release(api, number)
        disp = [(await start_dispatch(api, m, ops["A" if i < 10 else "B"], T0))["id"]
                for i, m in enumerate(machines)]

        async def gateway(gw: Any) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
                for b in range(BATCHES):
                    recs = [count_record(b * PER_BATCH + i + 1, "c_good", 0, 1, device="press",
                                         ts=T0 + b * PER_BATCH + i) for i in range(PER_BATCH)]
                    answer = await ingest(c, recs, gateway=gw.id, token=gw.token)
                    assert answer["acked_through"] == (b + 1) * PER_BATCH

        async def planner() -> int:
            edits = 0
            for _ in range(5):
                for url, body in ((f"/api/v1/dispatches/{disp[0]}", {"end_ts": T0 + 50}),
                                  (f"/api/v1/dispatches/{disp[10]}", {"start_ts": T0 + 50}),
                                  (f"/api/v1/dispatches/{disp[0]}", {"running": True}),
                                  (f"/api/v1/dispatches/{disp[10]}", {"start_ts": T0})):
                    res = await api.patch(url, json=body)
                    assert res.status_code == 200, res.text
                    edits += 1
            res = await api.post(f"/api/v1/dispatches/{disp[0]}/stop", json={"end_ts": T0 + 50})
            assert res.status_code == 200, res.text
            return edits + 1

        async def other_writes() -> None:
            """Master data changes and reads beside the ingest: none may fail (SQLite
            writers queue, cloud/core/db.py)."""
            for i in range(10):
                res = await api.put(f"/api/v1/materials/X{i}-{suffix}", json={
                    "name": f"x {i}", "unit": "kg", "lead_time_days": i})
                assert res.status_code == 200, res.text
                res = await api.patch(f"/api/v1/work-orders/{orders['A']}",
                                      json={"priority": i})
                assert res.status_code == 200, res.text
                res = await api.get("/api/v1/work-orders", params={"limit": 5})
                assert res.status_code == 200, res.text

        edits, *_ = await asyncio.gather(planner(), other_writes(),
                                         *(gateway(gw) for gw in gws))

        async def good(key: str) -> tuple[int, str]:
            doc = (await api.get(f"/api/v1/work-orders/{orders[key]}")).json()
            return doc["operations"][0]["good"], doc["status"]

        assert await good("A") == (950, "in_progress")
        assert await good("B") == (1000, "in_progress")
        un = (await api.get("/api/v1/unassigned")).json()["items"]
        mine = {u["machine_id"]: (u["good"], u["records"]) for u in un
                if u["machine_id"] in machines}
        assert mine == {machines[0]: (50, 50)}
        stock = (await api.get(f"/api/v1/materials/{mat}/stock")).json()
        assert stock["balance_u"] == -1950 * U
        moves = await all_moves(api, material=mat, kind="backflush")
        assert len(moves) == 1950 and {m["qty_u"] for m in moves} == {-U}
        assert len({(m["gateway_id"], m["seq"]) for m in moves}) == 1950
    async with Database(server.db_url) as db, db.sessions() as s:
        assert await ledger_mismatches(s) == []
        n = (await s.execute(select(AuditEntry.id).where(
            AuditEntry.action.in_(("dispatch.edit", "dispatch.stop")),
            AuditEntry.entity_id.in_((str(disp[0]), str(disp[10])))))).all()
        assert len(n) == edits


async def all_moves(api: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every stock move the filters select, page by page (1000 a page, at most 10 pages)."""
    moves: list[dict[str, Any]] = []
    query: dict[str, Any] = {**params, "limit": 1000}
    for _ in range(10):
        page = (await api.get("/api/v1/stock/moves", params=query)).json()
        moves += page["items"]
        if page["next_before_id"] is None:
            return moves
        query["before_id"] = page["next_before_id"]
    raise AssertionError(f"more than 10 pages of stock moves for {params}: "
                         f"{len(moves)} moves so far")


async def test_complete_and_close_end_the_dispatch_and_a_closed_order_is_final(plant):
    """Completing WO-1 ends its running dispatch at the completion (audited as a stop
    with the reason); after the close its dispatch cannot be moved (409, nothing
    re-attributed) nor stopped again (it no longer runs)."""
    api = plant
    res = await api.post("/api/v1/dispatches", json={
        "machine_id": api.m["M1"], "wo_operation_id": api.ops["WO-1"], "start_ts": T0})
    d = res.json()["id"]
    await ingest(api, [good(1, T0 + 10, 3)])
    for action in ("complete", "close"):
        res = await api.post(f"/api/v1/work-orders/WO-1/{action}")
        assert res.status_code == 200, res.text
    doc = (await api.get(f"/api/v1/dispatches/{d}")).json()
    assert doc["end_ts"] is not None and doc["end_ts"] > T0
    assert (await audit_rows(api))[-1][1:3] == ("dispatch.stop", str(d))
    assert (await audit_rows(api))[-1][3]["reason"] == "work_order.complete"
    res = await api.patch(f"/api/v1/dispatches/{d}", json={"start_ts": T0 + H})
    assert res.status_code == 409 and "closed" in res.json()["detail"], res.text
    res = await api.post(f"/api/v1/dispatches/{d}/stop", json={"end_ts": T0 + H})
    assert res.status_code == 409, res.text
    assert await good_of(api, "WO-1") == 3


async def test_counts_before_registration_then_a_back_dated_dispatch(plant):
    """Device lathe-9 sends 4 + 3 pieces before it is a machine; registering it over the
    API lists them as its unassigned production; a dispatch back-dated to T0 gives WO-2
    all 7 (and the resin backflush), nothing stays unassigned."""
    api = plant
    await ingest(api, [good(1, T0 + H, 4, device="lathe-9"),
                       good(2, T0 + 2 * H, 3, device="lathe-9")])
    res = await api.post("/api/v1/machines", headers=api.admin, json={
        "gateway_id": "gw-test", "device": "lathe-9", "name": "Lathe 9"})
    assert res.status_code == 201, res.text
    m = res.json()["id"]
    assert await unassigned(api, m) == (7, 2)
    res = await api.post("/api/v1/dispatches", json={
        "machine_id": m, "wo_operation_id": api.ops["WO-2"], "start_ts": T0})
    assert res.status_code == 201, res.text
    assert await good_of(api, "WO-2") == 7
    assert await unassigned(api, m) == (0, 0)
    stock = (await api.get("/api/v1/materials/RESIN/stock")).json()
    assert stock["balance_u"] == -7 * U
