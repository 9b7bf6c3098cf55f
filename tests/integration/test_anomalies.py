"""Anomalies end to end: records ingested over the API (in-process ASGI) raise, link, clear
and repeat; the sweep (called with a pinned clock) finds ongoing stops, offline devices,
silent gateways and stock below safety, and escalates; people act on them through the
REST API (lifecycle, roles, audit, settings). SQLite for behaviour; PostgreSQL once, for
what concurrency can break (idempotent raising, escalation and actions racing).

Plant: machines M1 (gw-test/cnc-03) and M2 (gw-test/imm-07); product P (BOM: RESIN 1 kg
per piece; routing step 10 "mold"), product Q (BOM: LABEL); WO-1 (customer ACME) and WO-2
(Globex) for P, released. Times: NOW is the wall clock at set-up, T0 one day earlier
(yesterday's records arrive late).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from cloud.anomalies import (
    acknowledge,
    anomalies_for_work_order,
    close,
    create_manual,
    get_anomaly,
    resolve,
    sweep,
)
from cloud.core.jobs import run_jobs_once
from cloud.core.models import AuditEntry, notification_channels, notifications
from tests.fixtures import ingest as wire
from tests.fixtures.ingest import count_record, record
from tests.fixtures.plant import (
    add_bom,
    add_machine,
    add_routing,
    add_work_order,
    now_ms,
    put_material,
    put_product,
    release,
    start_dispatch,
)

SQLITE = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)
MIN = 60_000
H = 60 * MIN
DAY = 24 * H


async def ingest(api: Any, records: list[dict[str, Any]], *,
                 sent_at: int | None = None) -> dict[str, Any]:
    """The shared ingest (tests/fixtures/ingest.py), sent by default "now" on the
    gateway's clock, so the cloud knows that clock exactly (skew ~0)."""
    return await wire.ingest(api, records, sent_at=sent_at or now_ms())


def alarm(seq: int, ts: int, code: int, active: bool, device: str = "cnc-03") -> dict[str, Any]:
    return record(seq, "alarm", {"code": code, "text": f"alarm text {code}", "active": active},
                  ts=ts, device=device)


def state(seq: int, ts: int, value: str, device: str = "cnc-03") -> dict[str, Any]:
    return record(seq, "state", {"state": value, "prev": None, "code": None}, ts=ts,
                  device=device)


def link(seq: int, ts: int, online: bool, device: str = "cnc-03") -> dict[str, Any]:
    return record(seq, "link", {"online": online, "error": None if online else "timeout"},
                  ts=ts, device=device)


def limit(seq: int, ts: int, tag: str, value: float, active: bool) -> dict[str, Any]:
    return record(seq, "limit", {"tag": tag, "value": value, "lo": 10.0, "hi": 65.0,
                                 "active": active}, ts=ts)


def sample(seq: int, ts: int, device: str = "cnc-03") -> dict[str, Any]:
    return record(seq, "sample", {"values": {"spindle_temp": 41.5}}, ts=ts, device=device)


async def listed(api: Any, **params: Any) -> list[dict[str, Any]]:
    res = await api.get("/api/v1/anomalies", params={"limit": 500, **params})
    assert res.status_code == 200, res.text
    return list(res.json()["items"])


def links(item: dict[str, Any]) -> list[tuple[str, int | None, str | None]]:
    return sorted((x["work_order"], x["step"], x["customer"]) for x in item["links"])


async def audit_actions(api: Any, prefix: str = "anomaly.") -> list[tuple[str, str, str]]:
    async with api.app.state.db.sessions() as s:
        rows = (await s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.entity_id)
                                .where(AuditEntry.action.like(f"{prefix}%"))
                                .order_by(AuditEntry.id))).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def dispatch(api: Any, machine: str, order: str, start: int,
                   end: int | None = None) -> None:
    await start_dispatch(api, api.m[machine], api.ops[order], start, end)


async def op_status(api: Any, number: str) -> str:
    doc = (await api.get(f"/api/v1/work-orders/{number}")).json()
    return str(doc["operations"][0]["status"])


@pytest.fixture
async def plant(api: Any) -> Any:
    api.m = {name: await add_machine(api, device, name)
             for name, device in (("M1", "cnc-03"), ("M2", "imm-07"))}
    for code, unit in (("RESIN", "kg"), ("LABEL", "pcs")):
        await put_material(api, code, unit=unit)
    for product, material in (("P", "RESIN"), ("Q", "LABEL")):
        await put_product(api, product)
        await add_bom(api, product, [{"material": material, "qty_per_unit": 1}])
        await add_routing(api, product, [{"step": 10, "name": "mold", "work_center": "WC"}])
    api.ops = {}
    for number, customer in (("WO-1", "ACME"), ("WO-2", "Globex")):
        await add_work_order(api, number, "P", 1000, customer=customer)
        [api.ops[number]] = await release(api, number)
    async with api.app.state.db.sessions() as s:
        from cloud.core.models import work_orders
        api.wo = dict((await s.execute(select(work_orders.c.number, work_orders.c.id)))
                      .tuples().all())
    api.NOW = now_ms()
    api.T0 = api.NOW - DAY
    return api


@SQLITE
async def test_alarms_link_to_the_order_dispatched_at_their_own_time(plant):
    """A batch from yesterday links to yesterday's order, a live alarm to today's; an
    undispatched machine and an unknown device still raise; clear, replay, repeat."""
    api, T0, NOW = plant, plant.T0, plant.NOW
    await dispatch(api, "M1", "WO-1", T0 - H, T0 + 2 * H)
    await dispatch(api, "M1", "WO-2", NOW - 30 * MIN)
    late = [sample(1, T0), alarm(2, T0 + 10 * MIN, 1001, True), sample(3, T0 + 11 * MIN),
            alarm(4, T0 + 15 * MIN, 2002, True, device="imm-07"),
            alarm(5, T0 + 16 * MIN, 7, True, device="press-9"),
            alarm(6, T0 + 20 * MIN, 1001, False)]
    assert (await ingest(api, late))["stored"] == 6
    items = {(i["device"], i["code"]): i for i in await listed(api)}
    assert set(items) == {("cnc-03", "1001"), ("imm-07", "2002"), ("press-9", "7")}
    first = items[("cnc-03", "1001")]
    # cleared within the batch: an alarm closes itself (auto_close, the issue-13 default)
    assert (first["kind"], first["severity"], first["status"]) == ("alarm", "major", "closed")
    assert (first["machine_id"], first["machine"], first["ts"]) == (api.m["M1"], "M1",
                                                                   T0 + 10 * MIN)
    assert first["cleared_ts"] == T0 + 20 * MIN
    assert links(first) == [("WO-1", 10, "ACME")]
    assert first["links"][0]["operation"] == "mold"
    assert items[("imm-07", "2002")]["links"] == []            # no dispatch: kept, unlinked
    assert items[("imm-07", "2002")]["cleared_ts"] is None
    stray = items[("press-9", "7")]
    assert (stray["machine_id"], stray["gateway_id"], stray["links"]) == (None, "gw-test", [])

    # the same batch again raises nothing
    again = await ingest(api, late)
    assert (again["stored"], again["duplicates"]) == (0, 6)
    assert len(await listed(api)) == 3

    # live: the same alarm now links to today's order and repeats yesterday's; raised
    # again while still active (a gateway restart re-reads it) adds nothing
    await ingest(api, [alarm(7, NOW - MIN, 1001, True), alarm(8, NOW - 30_000, 1001, True)])
    live = [i for i in await listed(api, machine_id=api.m["M1"]) if i["id"] != first["id"]]
    assert len(live) == 1
    assert links(live[0]) == [("WO-2", 10, "Globex")]
    assert live[0]["repeat_of"] == first["id"]
    async with api.app.state.db.sessions() as s:
        on_wo1 = await anomalies_for_work_order(s, api.wo["WO-1"])
    assert [i["id"] for i in on_wo1] == [first["id"]]
    assert [i["id"] for i in await listed(api, kind="alarm", status="open")][0] == live[0]["id"]


@SQLITE
async def test_limits_and_severity_rules_from_settings(plant):
    api, T0 = plant, plant.T0
    res = await api.get("/api/v1/settings/anomalies", headers=api.viewer)
    assert res.status_code == 200 and res.json()["severity"]["limit"] == "minor"
    url = "/api/v1/settings/anomalies"
    body = {"severity_by_code": {"spindle_temp": "critical"}}
    assert (await api.put(url, json=body)).status_code == 403          # planner
    assert (await api.put(url, json=body, headers=api.viewer)).status_code == 403
    for bad, field in (({"severity": {"limit": "huge"}}, "anomalies.severity.limit"),
                       ({"severity": {"nonsense": "minor"}}, "anomalies.severity.nonsense"),
                       ({"offline_after": 5}, "anomalies.offline_after"),
                       ({"stop_after_s": "ten"}, "anomalies.stop_after_s"),
                       ({"scrap_rate": {"threshold": 5}}, "anomalies.scrap_rate.threshold"),
                       ({"severity_by_code": {"1": "loud"}}, "anomalies.severity_by_code.1")):
        res = await api.put(url, json=bad, headers=api.admin)
        assert res.status_code == 422, (bad, res.text)
        assert (res.json()["error"], res.json()["field"]) == ("invalid_setting", field)
    res = await api.put(url, json={**body, "escalate_after_s": 120}, headers=api.admin)
    assert res.status_code == 200, res.text
    assert res.json()["severity_by_code"] == {"spindle_temp": "critical"}
    assert res.json()["escalate_after_s"]["minor"] == 120
    assert res.json()["stop_after_s"] == 600                   # the rest stays
    assert (await audit_actions(api, "settings."))[-1][:2] == ("admin", "settings.put")

    await ingest(api, [limit(1, T0, "spindle_temp", 70.0, True),
                       limit(2, T0 + MIN, "pressure", 3.0, True),
                       limit(3, T0 + 2 * MIN, "spindle_temp", 60.0, False)])
    items = {i["code"]: i for i in await listed(api, kind="limit")}
    assert items["spindle_temp"]["severity"] == "critical"
    assert items["pressure"]["severity"] == "minor"
    assert items["spindle_temp"]["cleared_ts"] == T0 + 2 * MIN
    assert items["pressure"]["cleared_ts"] is None
    assert "70.0" in items["spindle_temp"]["title"]


@SQLITE
async def test_stops_while_dispatched_late_and_ongoing(plant):
    api, T0, NOW = plant, plant.T0, plant.NOW
    await dispatch(api, "M1", "WO-1", T0 - H, T0 + 2 * H)
    await dispatch(api, "M1", "WO-2", NOW - 30 * MIN)
    # yesterday: a 25-minute stop (raised, cleared) and a 5-minute one (not); M2 stood
    # for an hour with nothing dispatched (not a stop anomaly)
    await ingest(api, [state(1, T0, "running"), state(2, T0 + 5 * MIN, "idle"),
                       state(3, T0 + 10 * MIN, "alarm"), state(4, T0 + 30 * MIN, "running"),
                       state(5, T0 + 40 * MIN, "setup"), state(6, T0 + 45 * MIN, "running"),
                       state(7, T0, "idle", device="imm-07"),
                       state(8, T0 + H, "running", device="imm-07")])
    stops = await listed(api, kind="stop")
    assert len(stops) == 1
    assert (stops[0]["ts"], stops[0]["cleared_ts"]) == (T0 + 5 * MIN, T0 + 30 * MIN)
    assert links(stops[0]) == [("WO-1", 10, "ACME")]

    # today: stopped 20 minutes ago and still stopped: the sweep raises it, once
    await ingest(api, [state(9, NOW - 20 * MIN, "idle")])
    assert len(await listed(api, kind="stop")) == 1            # not ended: ingest waits
    await sweep(api.app.state.db, NOW - 11 * MIN)              # only 9 minutes yet
    assert len(await listed(api, kind="stop")) == 1
    await sweep(api.app.state.db, NOW)
    await sweep(api.app.state.db, NOW + MIN)
    stops = await listed(api, kind="stop")
    assert len(stops) == 2
    ongoing = [s for s in stops if s["ts"] == NOW - 20 * MIN][0]
    assert ongoing["cleared_ts"] is None
    assert links(ongoing) == [("WO-2", 10, "Globex")]
    # its end arrives: cleared, not raised again
    await ingest(api, [state(10, NOW - MIN, "running")])
    stops = await listed(api, kind="stop")
    assert len(stops) == 2
    assert [s["cleared_ts"] for s in stops if s["id"] == ongoing["id"]] == [NOW - MIN]


@SQLITE
async def test_scrap_rate_over_threshold_in_a_window(plant):
    api, T0 = plant, plant.T0
    await dispatch(api, "M1", "WO-1", T0 - H, T0 + 2 * H)
    await ingest(api, [count_record(1, "c_good", 0, 100, ts=T0 + MIN),
                       count_record(2, "c_scrap", 0, 5, counts="scrap", ts=T0 + 2 * MIN),
                       count_record(3, "c_scrap", 0, 3, counts="scrap", ts=T0 + 2 * MIN,
                                    device="imm-07")])
    assert await listed(api, kind="scrap_rate") == []         # 5 of 105; 3 pieces only
    await ingest(api, [count_record(4, "c_scrap", 5, 15, counts="scrap", ts=T0 + 3 * MIN)])
    found = await listed(api, kind="scrap_rate")
    assert len(found) == 1
    assert found[0]["ts"] == T0 + 3 * MIN
    assert (found[0]["detail"]["scrap"], found[0]["detail"]["total"]) == (15, 115)
    assert links(found[0]) == [("WO-1", 10, "ACME")]
    await ingest(api, [count_record(5, "c_scrap", 15, 25, counts="scrap", ts=T0 + 4 * MIN)])
    assert len(await listed(api, kind="scrap_rate")) == 1      # one per window


@SQLITE
async def test_offline_late_ongoing_with_clock_skew_and_silent_gateway(plant):
    api, T0, NOW = plant, plant.T0, plant.NOW
    db = api.app.state.db
    await dispatch(api, "M1", "WO-1", T0 - H, T0 + 2 * H)
    late = [link(1, T0 + H, False), link(2, T0 + H + 10 * MIN, True),
            link(3, T0 + H, False, device="imm-07"), link(4, T0 + H + 2 * MIN, True,
                                                          device="imm-07")]
    await ingest(api, late)
    await ingest(api, late)
    off = await listed(api, kind="offline")
    assert len(off) == 1
    assert (off[0]["code"], off[0]["ts"], off[0]["cleared_ts"]) == ("link", T0 + H,
                                                                     T0 + H + 10 * MIN)
    assert links(off[0]) == [("WO-1", 10, "ACME")]

    # a gateway whose clock is an hour behind: "2 minutes ago" in its time is not
    # 62 minutes of cloud time
    behind = NOW - H
    await ingest(api, [link(5, behind - 2 * MIN, False)], sent_at=now_ms() - H)
    await sweep(db, NOW)
    assert len(await listed(api, kind="offline")) == 1
    await sweep(db, NOW + 4 * MIN)
    off = [i for i in await listed(api, kind="offline") if i["cleared_ts"] is None]
    assert [(i["code"], i["ts"], i["machine"]) for i in off] == [("link", behind - 2 * MIN,
                                                                  "M1")]
    # nothing heard from the gateway for 10 minutes: every machine of it
    await sweep(db, NOW + 10 * MIN)
    await sweep(db, NOW + 11 * MIN)
    silent = await listed(api, kind="offline", status="open")
    assert sorted((i["machine"], i["code"]) for i in silent if i["code"] == "gateway") == [
        ("M1", "gateway"), ("M2", "gateway")]
    # heard again: the gateway ones clear; M1 comes back online: cleared too
    await ingest(api, [link(6, behind + 10 * MIN, True)], sent_at=now_ms() - H)
    await sweep(db, now_ms() + 1000)
    assert all(i["cleared_ts"] is not None for i in await listed(api, kind="offline"))
    assert [i["cleared_ts"] for i in await listed(api, kind="offline")
            if i["code"] == "link" and i["ts"] == behind - 2 * MIN] == [behind + 10 * MIN]


@SQLITE
async def test_stock_below_safety_links_orders_using_the_material(plant):
    api, NOW = plant, plant.NOW
    db = api.app.state.db
    assert (await api.put("/api/v1/materials/RESIN", json={
        "name": "RESIN", "unit": "kg", "safety_stock": 100})).status_code == 200
    for number, product in (("WO-3", "P"), ("WO-4", "Q")):
        assert (await api.post("/api/v1/work-orders", json={
            "number": number, "product": product, "quantity": 5})).status_code == 201
    await api.post("/api/v1/work-orders/WO-4/release")          # LABEL only
    assert any(j.name == "anomaly_sweep" for j in api.app.state.jobs)
    await run_jobs_once(api.app, NOW)
    low = await listed(api, kind="stock_low")
    assert len(low) == 1
    assert (low[0]["material"], low[0]["machine_id"], low[0]["severity"]) == ("RESIN", None,
                                                                              "minor")
    assert links(low[0]) == [("WO-1", None, "ACME"), ("WO-2", None, "Globex"),
                             ("WO-3", None, None)]               # WO-3: draft, current BOM
    await sweep(db, NOW + 400_000)
    assert len(await listed(api, kind="stock_low")) == 1        # one per shortage
    assert (await api.post("/api/v1/stock/receipts",
                           json={"material": "RESIN", "qty": 500})).status_code == 201
    await sweep(db, NOW + 800_000)
    assert (await listed(api, kind="stock_low"))[0]["cleared_ts"] == NOW + 800_000
    assert (await api.post("/api/v1/stock/issues",
                           json={"material": "RESIN", "qty": 450})).status_code == 201
    await sweep(db, NOW + 1_000_000)                            # checked at most every 300 s
    assert len(await listed(api, kind="stock_low")) == 1
    await sweep(db, NOW + 1_200_000)
    again = await listed(api, kind="stock_low", status="open", open_first=False)
    assert len(again) == 2
    assert again[0]["repeat_of"] == again[1]["id"] and again[0]["cleared_ts"] is None


@SQLITE
async def test_severe_quality_anomaly_holds_the_operation_until_resolved(plant):
    api, NOW = plant, plant.NOW
    await dispatch(api, "M1", "WO-1", NOW - H)
    await ingest(api, [count_record(1, "c_good", 0, 3, ts=NOW - 30 * MIN)])
    assert await op_status(api, "WO-1") == "in_progress"
    body = {"kind": "quality", "title": "burrs on the housing", "severity": "critical",
            "machine_id": api.m["M1"]}
    for bad, field in (({"kind": "alarm"}, "kind"), ({"severity": "huge"}, "severity"),
                       ({"machine_id": 999}, "machine_id"), ({"work_order": "nope"},
                                                             "work_order"),
                       ({"material": "nope"}, "material"), ({"title": " "}, "title")):
        res = await api.post("/api/v1/anomalies", json={**body, **bad})
        assert res.status_code == 422, res.text
        assert res.json()["field"] == field
    assert (await api.post("/api/v1/anomalies", json=body,
                           headers=api.viewer)).status_code == 403
    assert await listed(api) == []
    res = await api.post("/api/v1/anomalies", json=body)
    assert res.status_code == 201, res.text
    doc = res.json()
    assert (doc["created_by"], doc["status"]) == ("pat", "open")
    assert links(doc) == [("WO-1", 10, "ACME")]
    assert doc["held_operations"] == [api.ops["WO-1"]]
    assert await op_status(api, "WO-1") == "on_hold"
    # a minor one naming an order that has not started links the order alone, holds nothing
    res = await api.post("/api/v1/anomalies", json={
        "kind": "material", "title": "wrong resin lot", "work_order": "WO-2",
        "material": "RESIN"})
    assert res.status_code == 201, res.text
    assert ("WO-2", None, "Globex") in links(res.json())
    assert res.json()["held_operations"] == [] and res.json()["severity"] == "minor"

    res = await api.post(f"/api/v1/anomalies/{doc['id']}/resolve",
                         json={"cause": "worn deburring tool", "action": "tool replaced"})
    assert res.status_code == 200, res.text
    assert res.json()["acknowledged_by"] == "pat"              # resolving acknowledges
    assert await op_status(api, "WO-1") == "in_progress"
    actions = [a[1] for a in await audit_actions(api, "")
               if a[1].startswith("anomaly.") or a[1] in ("operation.stop", "operation.resume")]
    assert actions == ["operation.stop", "anomaly.hold", "anomaly.create", "anomaly.create",
                       "anomaly.resolve", "operation.resume", "anomaly.release_hold"]


async def operator_anomaly(api: Any) -> tuple[int, str]:
    """A new operator anomaly on M2 (open); its id and URL."""
    res = await api.post("/api/v1/anomalies", json={"kind": "operator", "title": "no operator",
                                                    "machine_id": api.m["M2"]})
    assert res.status_code == 201, res.text
    return res.json()["id"], f"/api/v1/anomalies/{res.json()['id']}"


async def closed_after_90_and_900_s(api: Any) -> dict[str, Any]:
    """A material anomaly acknowledged 90 s and closed 900 s after it was raised (pinned
    clock, through the domain functions); its document."""
    t = datetime.now(UTC)
    async with api.app.state.db.sessions() as s, s.begin():
        b = (await create_manual(s, "pat", "material", "short of labels", now=t))["id"]
        await acknowledge(s, "pat", b, now=t + timedelta(seconds=90))
        await resolve(s, "pat", b, "late delivery", "expedited", now=t + timedelta(seconds=600))
        return await close(s, "pat", b, now=t + timedelta(seconds=900))


@SQLITE
async def test_only_planners_and_admins_act_on_an_anomaly(plant):
    api = plant
    _, url = await operator_anomaly(api)
    gateway = {"Authorization": f"Bearer {api.token}"}
    for action, body in (("acknowledge", {}), ("resolve", {"cause": "c", "action": "a"}),
                         ("close", {}), ("assign", {"assignee": "li"}), ("reopen", {})):
        for headers, status in ((api.viewer, 403), (gateway, 403)):
            assert (await api.post(f"{url}/{action}", json=body,
                                   headers=headers)).status_code == status
    assert (await api.get(url, headers=api.viewer)).status_code == 200
    assert (await api.get("/api/v1/anomalies/999")).status_code == 404
    assert (await api.post("/api/v1/anomalies/999/close")).status_code == 404


@SQLITE
async def test_an_anomaly_moves_only_by_allowed_transitions_and_keeps_its_history(plant):
    api = plant
    _, url = await operator_anomaly(api)
    res = await api.post(f"{url}/close")
    assert res.status_code == 409
    assert (res.json()["error"], res.json()["current"]) == ("invalid_state", "open")
    assert res.json()["allowed"] == ["acknowledge", "resolve", "assign"]
    res = await api.post(f"{url}/acknowledge", json={"assignee": "wang", "note": "on my way"})
    assert res.status_code == 200, res.text
    doc = res.json()
    assert (doc["status"], doc["assignee"], doc["acknowledged_by"]) == ("acknowledged", "wang",
                                                                        "pat")
    assert doc["response_s"] is not None and doc["response_s"] >= 0
    assert doc["closure_s"] is None and doc["age_s"] is not None
    assert (await api.post(f"{url}/acknowledge")).status_code == 409
    res = await api.post(f"{url}/resolve", json={"action": "called in"})
    assert (res.status_code, res.json()["field"]) == (422, "cause")
    assert (await api.post(f"{url}/assign", json={"assignee": "li"})).json()["assignee"] == "li"
    res = await api.post(f"{url}/resolve", json={"cause": "sick leave", "action": "called in"})
    assert res.json()["status"] == "resolved"
    assert (await api.post(f"{url}/resolve", json={"cause": "x", "action": "y"})
            ).status_code == 409
    res = await api.post(f"{url}/close")
    doc = res.json()
    assert (doc["status"], doc["closed_by"], doc["age_s"]) == ("closed", "pat", None)
    assert doc["closure_s"] >= doc["response_s"]
    assert (await api.post(f"{url}/assign", json={"assignee": "x"})).status_code == 409
    assert (await api.post(f"{url}/reopen", json={"note": "again"})).json()["status"] == \
        "acknowledged"
    history = (await api.get(url)).json()["history"]
    assert [h["action"] for h in history] == ["anomaly.create", "anomaly.acknowledge",
                                              "anomaly.assign", "anomaly.resolve",
                                              "anomaly.close", "anomaly.reopen"]
    assert history[1]["detail"]["note"] == "on my way"


@SQLITE
async def test_response_and_closure_times_are_exact(plant):
    doc = await closed_after_90_and_900_s(plant)
    assert (doc["response_s"], doc["closure_s"]) == (90.0, 900.0)


@SQLITE
async def test_actions_recorded_afterwards_keep_their_own_times(plant):
    """A shift lead enters from the shift log, an hour later, what was done: the times
    given (``at``) are kept and response and closure count from when it happened; a time
    before the anomaly or its previous step, or in the future, is refused naming ``at``."""
    api = plant
    happened = now_ms() - 2 * H

    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")

    res = await api.post("/api/v1/anomalies", json={
        "kind": "operator", "title": "no operator", "machine_id": api.m["M2"],
        "ts": happened})
    url = f"/api/v1/anomalies/{res.json()['id']}"
    for when in (happened - 60_000, now_ms() + H):
        res = await api.post(f"{url}/acknowledge", json={"at": iso(when)})
        assert res.status_code == 422 and res.json()["field"] == "at", res.text
    res = await api.post(f"{url}/acknowledge", json={"at": iso(happened + 600_000)})
    assert res.status_code == 200, res.text
    res = await api.post(f"{url}/resolve", json={"cause": "c", "action": "a",
                                                 "at": iso(happened + 300_000)})
    assert res.status_code == 422 and res.json()["field"] == "at"   # before the response
    await api.post(f"{url}/resolve", json={"cause": "c", "action": "a",
                                          "at": iso(happened + 1_800_000)})
    doc = (await api.post(f"{url}/close", json={"at": iso(happened + 2_400_000)})).json()
    assert (doc["response_s"], doc["closure_s"]) == (600.0, 2400.0)


@SQLITE
async def test_stats_repeats_and_the_open_first_list(plant):
    """Three anomalies: an operator one gone through its whole life and reopened
    (acknowledged), a material one closed after 900 s, and the operator one again on the
    same machine (open, a repeat)."""
    api, NOW = plant, plant.NOW
    a, url = await operator_anomaly(api)
    for action, body in (("acknowledge", {"assignee": "wang"}), ("assign", {"assignee": "li"}),
                         ("resolve", {"cause": "sick leave", "action": "called in"}),
                         ("close", {}), ("reopen", {"note": "again"})):
        res = await api.post(f"{url}/{action}", json=body)
        assert res.status_code == 200, (action, res.text)
    await closed_after_90_and_900_s(api)
    res = await api.post("/api/v1/anomalies", json={"kind": "operator", "title": "again",
                                                    "machine_id": api.m["M2"]})
    assert res.json()["repeat_of"] == a
    stats = (await api.get("/api/v1/anomalies/stats", params={
        "since_ts": NOW - H, "until_ts": now_ms() + H})).json()
    assert (stats["total"], stats["open"], stats["unacknowledged"]) == (3, 2, 1)
    assert (stats["closure_rate"], stats["repeat_rate"]) == (round(1 / 3, 4), round(1 / 3, 4))
    assert stats["by_kind"] == {"operator": 2, "material": 1}
    assert stats["mean_closure_s"] == 900.0
    page = (await api.get("/api/v1/anomalies", params={"limit": 2, "offset": 0})).json()
    assert (page["total"], len(page["items"])) == (3, 2)
    assert [i["status"] for i in page["items"]] == ["open", "acknowledged"]   # open first
    assert (await api.get("/api/v1/anomalies", params={"status": "nope"})).status_code == 422
    async with api.app.state.db.sessions() as s:
        from cloud.anomalies import open_anomalies_by_machine
        assert await open_anomalies_by_machine(s) == {api.m["M2"]: 2}


@SQLITE
async def test_escalation_when_not_acknowledged(plant):
    api = plant
    db = api.app.state.db
    async with db.sessions() as s, s.begin():
        await s.execute(insert(notification_channels).values(
            name="ops", kind="webhook", target="http://127.0.0.1:9/hook", min_severity="info",
            kinds=None, enabled=True, created=datetime.now(UTC)))
    res = await api.post("/api/v1/anomalies", json={"kind": "quality", "title": "scratches",
                                                    "severity": "major"})
    a = res.json()["id"]
    t = now_ms()
    await sweep(db, t + 100_000)
    assert (await get_anomaly_doc(api, a))["escalation_level"] == 0
    await sweep(db, t + 901_000)                                # major: 900 s
    await sweep(db, t + 902_000)
    doc = await get_anomaly_doc(api, a)
    assert doc["escalation_level"] == 1 and doc["escalated_at"] is not None
    await sweep(db, t + 1_802_000)
    assert (await get_anomaly_doc(api, a))["escalation_level"] == 2
    await api.post(f"/api/v1/anomalies/{a}/acknowledge")
    await sweep(db, t + 9_000_000)
    assert (await get_anomaly_doc(api, a))["escalation_level"] == 2
    assert [x for x in await audit_actions(api) if x[1] == "anomaly.escalate"] == [
        ("system", "anomaly.escalate", str(a))] * 2
    async with db.sessions() as s:
        events = sorted((await s.execute(select(notifications.c.event))).scalars().all())
    assert events == ["escalated", "escalated", "opened"]


async def get_anomaly_doc(api: Any, anomaly_id: int) -> dict[str, Any]:
    async with api.app.state.db.sessions() as s:
        return await get_anomaly(s, anomaly_id)


@pytest.mark.needs_service("postgresql")
@pytest.mark.parametrize("cloud_db_url", ["postgresql"], indirect=True)
async def test_concurrent_sweeps_ingest_and_actions_raise_and_act_once(plant):
    """PostgreSQL: replays racing each other, three sweeps at once, two people
    acknowledging at once: every anomaly exists once, escalates once, and one of the two
    acknowledgements wins (the other gets 409)."""
    api, T0, NOW = plant, plant.T0, plant.NOW
    db = api.app.state.db
    await dispatch(api, "M1", "WO-1", T0 - H, T0 + 2 * H)
    await dispatch(api, "M1", "WO-2", NOW - 30 * MIN)
    batch = [alarm(1, T0 + MIN, 1001, True), link(2, T0 + H, False),
             link(3, T0 + H + 10 * MIN, True), state(4, NOW - 5 * MIN, "idle"),
             count_record(5, "c_good", 0, 20, ts=T0 + 2 * MIN),
             count_record(6, "c_scrap", 0, 10, counts="scrap", ts=T0 + 3 * MIN),
             count_record(7, "c_scrap", 0, 1, counts="scrap", ts=T0 + 3 * MIN,
                          device="imm-07")]
    await asyncio.gather(*(ingest(api, batch) for _ in range(3)))
    assert sorted(i["kind"] for i in await listed(api)) == ["alarm", "offline", "scrap_rate"]
    assert (await api.put("/api/v1/materials/RESIN", json={
        "name": "RESIN", "unit": "kg", "safety_stock": 1})).status_code == 200
    later = NOW + 16 * MIN                                     # silent gateway, major due
    await asyncio.gather(*(sweep(db, later) for _ in range(3)))
    kinds = sorted((i["kind"], i["code"]) for i in await listed(api))
    assert kinds == [("alarm", "1001"), ("offline", "gateway"), ("offline", "gateway"),
                     ("offline", "link"), ("scrap_rate", None), ("stock_low", None),
                     ("stop", None)]
    alarm_doc = [i for i in await listed(api, kind="alarm")][0]
    assert alarm_doc["escalation_level"] == 1
    assert links(alarm_doc) == [("WO-1", 10, "ACME")]
    url = f"/api/v1/anomalies/{alarm_doc['id']}/acknowledge"
    answers = await asyncio.gather(api.post(url), api.post(url, headers=api.admin))
    assert sorted(r.status_code for r in answers) == [200, 409]
    assert [x[1] for x in await audit_actions(api)].count("anomaly.acknowledge") == 1
