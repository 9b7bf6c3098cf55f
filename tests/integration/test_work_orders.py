"""Work orders through the API and the status rules, on SQLite and PostgreSQL via Alembic:
every transition and every refused one, release copying the current BOM and routing,
the rules attribution relies on (on_operation_progress), and the audit trail."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from cloud.core.models import AuditEntry, WoOperation, WorkOrder
from cloud.production import on_operation_progress
from tests.fixtures.plant import add_work_order, make_plant

pytestmark = pytest.mark.needs_service("postgresql")
ACTIONS = ("release", "cancel", "complete", "close")


async def new_order(api: Any, number: str = "WO-1", **extra: Any) -> dict[str, Any]:
    """A draft order of 100 P-100 for ACME, due 2026-12-01."""
    return await add_work_order(api, number, "P-100", 100, customer="ACME",
                                due="2026-12-01T08:00:00Z", **extra)


async def act(api: Any, number: str, action: str, **kw: Any) -> Any:
    return await api.post(f"/api/v1/work-orders/{number}/{action}", **kw)


async def count(api: Any, number: str, step: int, good: int, scrap: int = 0) -> list[Any]:
    """What attribution does: set an operation's counts, then run the status rules."""
    db = api.app.state.db
    async with db.sessions() as session, session.begin():
        op_id = (await session.scalars(select(WoOperation.id).join_from(
            WoOperation, WorkOrder).where(
            WorkOrder.number == number,
            WoOperation.step == step))).one()
        await session.execute(update(WoOperation).where(WoOperation.id == op_id)
                              .values(good=good, scrap=scrap))
        result = await on_operation_progress(session, op_id)
    return result.transitions


async def statuses(api: Any, number: str) -> tuple[str, list[str]]:
    doc = (await api.get(f"/api/v1/work-orders/{number}")).json()
    return doc["status"], [op["status"] for op in doc["operations"]]


async def test_release_copies_the_current_bom_and_routing(api):
    await make_plant(api)
    # a second BOM version becomes current before release
    res = await api.post("/api/v1/boms", json={"product": "P-100", "lines": [
        {"material": "M-1", "qty_per_unit": "0.000001"}]})
    assert res.json()["version"] == 2
    order = await new_order(api)
    assert order["status"] == "draft" and order["operations"] == []
    assert order["allowed_actions"] == ["update", "release", "cancel"]
    res = await act(api, "WO-1", "release")
    assert res.status_code == 200, res.text
    doc = res.json()
    assert (doc["status"], doc["bom_version"], doc["routing_version"]) == ("released", 2, 1)
    assert doc["components"] == [{"material": "M-1", "qty_per_unit": "0.000001",
                                  "scrap_factor": 0.0, "backflush_scrap": False, "step": None}]
    assert [(o["step"], o["name"], o["cavities"], o["ideal_cycle_ms"], o["status"])
            for o in doc["operations"]] == [(10, "op 1", 2, 12000, "pending"),
                                            (20, "op 2", 2, 12000, "pending")]
    assert doc["released_at"] is not None
    # later versions never change a released order
    await api.post("/api/v1/boms", json={"product": "P-100", "lines": [
        {"material": "M-2", "qty_per_unit": 5}]})
    await api.post("/api/v1/routings", json={"product": "P-100", "operations": [
        {"step": 1, "name": "only", "work_center": "WC-9"}]})
    doc = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert doc["bom_version"] == 2 and len(doc["operations"]) == 2
    # the next order takes the newest
    await new_order(api, "WO-2")
    doc = (await act(api, "WO-2", "release")).json()
    assert (doc["bom_version"], doc["routing_version"]) == (3, 2)
    assert [c["qty_per_unit"] for c in doc["components"]] == ["5"]


async def test_release_needs_a_routing(api):
    await api.put("/api/v1/products/P-7", json={"name": "bare"})
    await api.post("/api/v1/work-orders", json={"number": "WO-7", "product": "P-7",
                                                "quantity": 5})
    res = await act(api, "WO-7", "release")
    assert res.status_code == 409
    assert "no routing" in res.json()["detail"] and res.json()["current"] == "draft"


# state -> how to get there from a fresh order
PATHS: dict[str, list[str]] = {
    "draft": [], "released": ["release"], "cancelled": ["cancel"],
    "completed": ["release", "complete"], "closed": ["release", "complete", "close"],
}
ALLOWED = {"draft": {"release", "cancel"}, "released": {"cancel", "complete"},
           "in_progress": {"complete"}, "completed": {"close"}, "closed": set(),
           "cancelled": set()}


async def test_every_action_in_every_state(api):
    await make_plant(api)
    n = 0
    for state in (*PATHS, "in_progress"):
        for action in ACTIONS:
            n += 1
            number = f"WO-{n}"
            await new_order(api, number)
            for step in PATHS.get(state, ["release"]):
                assert (await act(api, number, step)).status_code == 200
            if state == "in_progress":
                await count(api, number, 10, 1)
            assert (await api.get(f"/api/v1/work-orders/{number}")).json()["status"] == state
            res = await act(api, number, action)
            if action in ALLOWED[state]:
                assert res.status_code == 200, (state, action, res.text)
                continue
            assert res.status_code == 409, (state, action, res.text)
            body = res.json()
            assert body["error"] == "invalid_state"
            assert body["current"] == state and body["action"] == action
            assert set(body["allowed"]) - {"update"} == ALLOWED[state]
            assert state in body["detail"] and action in body["detail"]


async def test_update_rules(api):
    await make_plant(api)
    await new_order(api)
    res = await api.patch("/api/v1/work-orders/WO-1", json={"quantity": 250, "customer": None})
    assert res.json()["quantity"] == 250 and res.json()["customer"] is None
    await act(api, "WO-1", "release")
    res = await api.patch("/api/v1/work-orders/WO-1", json={"quantity": 300})
    assert res.status_code == 409 and "only in draft" in res.json()["detail"]
    res = await api.patch("/api/v1/work-orders/WO-1", json={"priority": 5,
                                                            "due": "2026-12-02T00:00:00+08:00"})
    assert res.status_code == 200
    assert res.json()["priority"] == 5 and res.json()["due"] == "2026-12-01T16:00:00Z"
    await act(api, "WO-1", "cancel")
    assert (await api.patch("/api/v1/work-orders/WO-1", json={"priority": 1})).status_code == 409


async def test_counts_move_statuses_and_auto_complete(api):
    await make_plant(api)
    await new_order(api)
    await act(api, "WO-1", "release")
    assert await count(api, "WO-1", 10, 0, 1) == [("operation 10", "pending", "in_progress"),
                                                   ("work order", "released", "in_progress")]
    assert await count(api, "WO-1", 10, 0, 1) == []  # idempotent
    await count(api, "WO-1", 10, 100, 1)
    assert await statuses(api, "WO-1") == ("in_progress", ["completed", "pending"])
    await count(api, "WO-1", 20, 99)
    assert await statuses(api, "WO-1") == ("in_progress", ["completed", "in_progress"])
    assert await count(api, "WO-1", 20, 101) == [("operation 20", "in_progress", "completed"),
                                                 ("work order", "in_progress", "completed")]
    doc = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert doc["completed_by"] == "system" and doc["good"] == 101 and doc["scrap"] == 1
    # re-attribution takes quantity away: the operation and the order reopen
    assert await count(api, "WO-1", 20, 60) == [("operation 20", "completed", "in_progress"),
                                                ("work order", "completed", "in_progress")]
    doc = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert doc["completed_at"] is None and doc["completed_by"] is None
    await count(api, "WO-1", 20, 100)
    assert (await act(api, "WO-1", "close")).status_code == 200
    # a closed order keeps its status whatever the counts do
    assert await count(api, "WO-1", 20, 10) == []
    assert await statuses(api, "WO-1") == ("closed", ["completed", "completed"])


async def test_confirm_mode_and_a_planners_completion_is_sticky(api):
    await make_plant(api)
    await new_order(api, completion_mode="confirm")
    await act(api, "WO-1", "release")
    await count(api, "WO-1", 20, 150)
    doc = (await api.get("/api/v1/work-orders/WO-1")).json()
    assert doc["status"] == "in_progress" and doc["operations"][1]["ready_to_complete"]
    res = await api.post("/api/v1/work-orders/WO-1/operations/10/complete")
    assert res.json()["operations"][0]["completed_by"] == "pat"
    assert res.json()["status"] == "in_progress"
    res = await api.post("/api/v1/work-orders/WO-1/operations/20/complete")
    assert res.json()["status"] == "completed" and res.json()["completed_by"] == "pat"
    # switching to auto later: counts taken away do not reopen what a planner completed
    await count(api, "WO-1", 20, 10)
    assert await statuses(api, "WO-1") == ("completed", ["completed", "completed"])


async def test_stop_and_resume_an_operation(api):
    await make_plant(api)
    await new_order(api)
    await act(api, "WO-1", "release")
    res = await api.post("/api/v1/work-orders/WO-1/operations/10/stop",
                         json={"reason": "mould change"})
    assert res.json()["operations"][0]["status"] == "on_hold"
    res = await api.post("/api/v1/work-orders/WO-1/operations/10/stop")
    assert res.status_code == 409 and res.json()["allowed"] == ["resume", "complete"]
    assert await count(api, "WO-1", 10, 120) == [("work order", "released", "in_progress")]
    assert await statuses(api, "WO-1") == ("in_progress", ["on_hold", "pending"])
    res = await api.post("/api/v1/work-orders/WO-1/operations/10/resume")
    assert res.json()["operations"][0]["status"] == "completed"  # the rules apply again
    assert (await api.post("/api/v1/work-orders/WO-1/operations/30/stop")).status_code == 404
    assert (await api.post("/api/v1/work-orders/WO-1/operations/20/jump")).status_code == 404


async def test_every_change_is_audited(api):
    await make_plant(api)
    await new_order(api)
    await act(api, "WO-1", "release")
    await count(api, "WO-1", 10, 100)
    await count(api, "WO-1", 20, 100)
    await act(api, "WO-1", "close", json={"reason": "shipped"})
    assert (await act(api, "WO-1", "cancel")).status_code == 409  # refused: not audited
    async with api.app.state.db.sessions() as session:
        rows = (await session.scalars(select(AuditEntry).where(
            AuditEntry.entity == "work_order", AuditEntry.entity_id == "WO-1")
            .order_by(AuditEntry.id))).all()
    assert [(r.actor, r.action) for r in rows] == [
        ("pat", "work_order.create"), ("pat", "work_order.release"),
        ("system", "operation.in_progress"), ("system", "operation.completed"),
        ("system", "work_order.start"),
        ("system", "operation.in_progress"), ("system", "operation.completed"),
        ("system", "work_order.complete"), ("pat", "work_order.close")]
    assert rows[1].detail["bom_version"] == 1 and rows[1].detail["routing_version"] == 1
    assert rows[-1].detail == {"from": "completed", "to": "closed", "reason": "shipped"}
    assert all(r.ts is not None for r in rows)


async def test_viewers_read_and_cannot_act(api):
    await make_plant(api)
    await new_order(api)
    assert (await api.get("/api/v1/work-orders/WO-1", headers=api.viewer)).status_code == 200
    res = await act(api, "WO-1", "release", headers=api.viewer)
    assert res.status_code == 403
    res = await api.post("/api/v1/work-orders/WO-1/release",
                         headers={"Authorization": f"Bearer {api.token}"})  # a gateway
    assert res.status_code == 403
    assert (await act(api, "WO-404", "release")).status_code == 404
