"""A small plant for the web UI's tests (server-side and browser): users with passwords,
four machines of one gateway, two products, materials and stock, work orders on time, at
risk, late and in draft, dispatches, and records ingested over the real ingest route
(state, link, counts, an alarm, unassigned counts), relative to the wall clock so that
"today" on the board has data. ``seed_plant`` works on any ``httpx.AsyncClient``: the
in-process ASGI client or a real ``plantsync-cloud serve``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgpack

from buffer.records import WIRE_VERSION

PASSWORD = "correct horse battery"
USERS = {"pat": "planner", "vic": "viewer", "ada": "admin"}
H = 3_600_000
MIN = 60_000


@dataclass
class Plant:
    gateway: str
    token: str
    machines: dict[str, int] = field(default_factory=dict)   # device -> machine id
    ops: dict[str, list[int]] = field(default_factory=dict)  # order -> operation ids
    seq: int = 0
    counters: dict[tuple[str, str], int] = field(default_factory=dict)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def ingest(client: httpx.AsyncClient, plant: Plant, recs: list[dict[str, Any]]) -> dict[str, Any]:
    body = msgpack.packb({"v": WIRE_VERSION, "gateway": plant.gateway, "records": recs},
                         use_bin_type=True)
    res = await client.post("/api/v1/ingest", content=body, headers={
        "Authorization": f"Bearer {plant.token}", "Content-Type": "application/msgpack",
        "Accept": "application/json"})
    assert res.status_code == 200, res.text
    return dict(res.json())


def rec(plant: Plant, device: str, kind: str, body: dict[str, Any], ts: int) -> dict[str, Any]:
    return {"seq": plant.next_seq(), "ts": ts, "device": device, "kind": kind, "body": body}


def count(plant: Plant, device: str, n: int, ts: int, counts: str = "good") -> dict[str, Any]:
    tag = f"c_{counts}"
    before = plant.counters.get((device, tag), 0)
    plant.counters[(device, tag)] = before + n
    return rec(plant, device, "count", {"tag": tag, "counts": counts, "delta": n,
                                        "raw_before": before, "raw_after": before + n}, ts)


async def make_users(client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    for name, role in USERS.items():
        res = await client.post("/api/v1/users", headers=admin_headers, json={
            "name": name, "role": role, "password": PASSWORD})
        assert res.status_code in (201, 409), res.text


async def seed_plant(client: httpx.AsyncClient, admin_headers: dict[str, str], gateway: str,
                     token: str) -> Plant:
    """Build the plant through the REST API and the ingest route (see the module doc)."""
    await make_users(client, admin_headers)
    plant = Plant(gateway, token)
    a = admin_headers

    async def ok(res: Any, *codes: int) -> Any:
        r = await res
        assert r.status_code in (codes or (200, 201)), r.text
        return r.json()

    for device, name, wc in (("imm-01", "IMM 1", "注塑"), ("imm-02", "IMM 2", "注塑"),
                             ("cnc-01", "CNC 1", "CNC"), ("cnc-02", "CNC 2", "CNC")):
        doc = await ok(client.post("/api/v1/machines", headers=a, json={
            "gateway_id": gateway, "device": device, "name": name, "work_center": wc}))
        plant.machines[device] = doc["id"]
    for code, name, unit, lead in (("RESIN", "PA66 树脂", "kg", 5), ("INSERT", "铜嵌件 M4", "pcs", 3)):
        await ok(client.put(f"/api/v1/materials/{code}", headers=a, json={
            "name": name, "unit": unit, "lead_time_days": lead}))
    await ok(client.put("/api/v1/materials/INSERT", headers=a, json={
        "name": "铜嵌件 M4", "unit": "pcs", "lead_time_days": 3, "safety_stock": "5000"}))
    await ok(client.put("/api/v1/products/P-100", headers=a, json={"name": "外壳 Housing"}))
    await ok(client.put("/api/v1/products/P-200", headers=a, json={"name": "支架 Bracket"}))
    await ok(client.post("/api/v1/boms", headers=a, json={"product": "P-100", "lines": [
        {"material": "RESIN", "qty_per_unit": "0.125", "scrap_factor": 0.02},
        {"material": "INSERT", "qty_per_unit": 2, "step": 10}]}))
    await ok(client.post("/api/v1/boms", headers=a, json={"product": "P-200", "lines": [
        {"material": "RESIN", "qty_per_unit": "0.05"}]}))
    await ok(client.post("/api/v1/routings", headers=a, json={"product": "P-100", "operations": [
        {"step": 10, "name": "注塑 mold", "machine_id": plant.machines["imm-01"],
         "ideal_cycle_ms": 30000, "cavities": 2},
        {"step": 20, "name": "铣削 mill", "machine_id": plant.machines["cnc-01"],
         "ideal_cycle_ms": 45000}]}))
    await ok(client.post("/api/v1/routings", headers=a, json={"product": "P-200", "operations": [
        {"step": 10, "name": "加工 machining", "machine_id": plant.machines["cnc-02"],
         "ideal_cycle_ms": 60000}]}))
    now = datetime.now(UTC)
    orders = (("WO-1001", "P-100", 500, now + timedelta(days=3), "华东精密", 5, True),
              ("WO-1002", "P-200", 200, now - timedelta(days=1), "Acme GmbH", 3, True),
              ("WO-1003", "P-100", 300, now + timedelta(days=10), "华东精密", 1, False),
              ("WO-1004", "P-200", 100, now + timedelta(hours=12), "Brite Ltd", 8, True))
    for number, product, qty, due, customer, prio, release in orders:
        await ok(client.post("/api/v1/work-orders", headers=a, json={
            "number": number, "product": product, "quantity": qty,
            "due": due.isoformat().replace("+00:00", "Z"), "customer": customer,
            "priority": prio}))
        if release:
            doc = await ok(client.post(f"/api/v1/work-orders/{number}/release", headers=a))
            plant.ops[number] = [op["id"] for op in doc["operations"]]
    for code, qty in (("RESIN", "120"), ("INSERT", "3000")):
        await ok(client.post("/api/v1/stock/receipts", headers=a, json={
            "material": code, "qty": qty, "note": "PO-7781"}))
    t = now_ms()
    start = t - 3 * H
    await ok(client.post("/api/v1/dispatches", headers=a, json={
        "machine_id": plant.machines["imm-01"], "wo_operation_id": plant.ops["WO-1001"][0],
        "start_ts": start}))
    await ok(client.post("/api/v1/dispatches", headers=a, json={
        "machine_id": plant.machines["cnc-02"], "wo_operation_id": plant.ops["WO-1002"][0],
        "start_ts": start}))
    recs: list[dict[str, Any]] = []
    for device in plant.machines:
        recs.append(rec(plant, device, "link", {"online": True}, start - 10 * MIN))
    recs.append(rec(plant, "imm-01", "state", {"state": "running", "code": 1}, start))
    recs.append(rec(plant, "cnc-02", "state", {"state": "running", "code": 1}, start))
    recs.append(rec(plant, "cnc-01", "state", {"state": "running", "code": 1}, start))
    recs.append(rec(plant, "imm-02", "state", {"state": "setup", "code": 3}, start))
    for i in range(1, 18):
        ts = start + i * 10 * MIN
        recs.append(count(plant, "imm-01", 12 + i % 3, ts))
        recs.append(count(plant, "cnc-02", 4 + i % 2, ts))
        if i % 5 == 0:
            recs.append(count(plant, "imm-01", 1, ts + 1000, counts="scrap"))
        if i < 6:
            recs.append(count(plant, "cnc-01", 3, ts))   # no dispatch: unassigned
    recs.append(rec(plant, "cnc-01", "state", {"state": "idle", "code": 0}, start + 60 * MIN))
    recs.append(rec(plant, "cnc-02", "state", {"state": "alarm", "code": 17},
                    start + 95 * MIN))
    recs.append(rec(plant, "cnc-02", "alarm", {"code": 17, "text": "主轴过载 spindle overload",
                                               "active": True}, start + 95 * MIN))
    recs.append(rec(plant, "cnc-02", "state", {"state": "running", "code": 1},
                    start + 125 * MIN))
    recs.append(rec(plant, "cnc-02", "alarm", {"code": 17, "text": "主轴过载 spindle overload",
                                               "active": False}, start + 125 * MIN))
    recs.append(rec(plant, "imm-02", "state", {"state": "alarm", "code": 42}, t - 20 * MIN))
    recs.append(rec(plant, "imm-02", "alarm", {"code": 42, "text": "料筒温度高 barrel hot",
                                               "active": True}, t - 20 * MIN))
    await ingest(client, plant, recs)
    return plant
