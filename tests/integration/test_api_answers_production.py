"""Typed answers of the production, dispatch, inventory, audit, users and gateways routes,
and the rules the web shows answered by the API too, on SQLite and PostgreSQL:

- every route of those six modules names its answer's schema in ``/openapi.json`` (a
  ``$ref`` to a component that is an object with declared properties, not a bare
  ``additionalProperties`` map); the ingest names it for msgpack and JSON alike;
- a work order's ``due_status`` over the API (list and detail) is what the web shows
  (cloud/web/reports.py ``order_rows``, the rule of the work-order pages) for an on-time
  order (behind its line by less than the margin thanks to its good pieces), an at-risk
  one (no pieces, half its time gone), a late one, a closed one completed late, and none
  for an order without a due date;
- ``GET /api/v1/gateways`` shows a silent gateway as provisional, a live one and one that
  never sent as not, the page as provisional on every page of the list, no revoked
  gateway, and is refused to a gateway token (403);
- every cloud time in a handful of real answers reads ``2026-12-01T08:00:00Z``.

The cloud's clock (cloud.core.clock) is pinned where the rule depends on it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute

from cloud.api.routes import audit, dispatch, gateways, inventory, production, users
from cloud.auth import create_gateway, revoke_gateway
from cloud.core import clock as cloud_clock
from cloud.web import reports
from tests.fixtures.ingest import batch_bytes, count_record, record
from tests.fixtures.plant import make_plant

pytestmark = pytest.mark.needs_service("postgresql")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
MINUTE = 60_000
T0_MS = 1_700_000_000_000
OWNED = (production, dispatch, inventory, audit, users, gateways)
# cloud times in answers (record times are epoch ms and named ts/*_ts/*_ms, except the
# audit entry's ts, a cloud time)
CLOUD_TIMES = frozenset({"created", "updated", "due", "released_at", "started_at",
                         "completed_at", "closed_at", "cancelled_at", "revoked_at",
                         "last_used_at", "last_seen", "backlog_at"})


class Clock:
    """The cloud's clock, pinned: ``now`` (cloud time) and ``ms`` (epoch ms)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.ms: int | None = None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cloud_clock, "now", lambda: c.now)
    real_ms = cloud_clock.now_ms
    monkeypatch.setattr(cloud_clock, "now_ms", lambda: real_ms() if c.ms is None else c.ms)
    return c


def gateway_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack",
            "Accept": "application/json"}


async def ingest(api: Any, gateway: str, token: str, records: list[dict[str, Any]]) -> None:
    res = await api.post("/api/v1/ingest", content=batch_bytes(gateway, records),
                         headers=gateway_headers(token))
    assert res.status_code == 200, res.text


# -- OpenAPI ------------------------------------------------------------------------------

async def test_every_owned_route_names_its_answer_schema(api: Any) -> None:
    doc = (await api.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    checked = []
    for module in OWNED:
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            for method in route.methods:
                op = doc["paths"][route.path][method.lower()]
                ok = [code for code in op["responses"] if code.startswith("2")]
                assert len(ok) == 1, (method, route.path, op["responses"].keys())
                content = op["responses"][ok[0]]["content"]
                for media, body in content.items():
                    ref = body.get("schema", {}).get("$ref", "")
                    assert ref.startswith("#/components/schemas/"), (method, route.path, media)
                    schema = schemas[ref.rsplit("/", 1)[1]]
                    assert schema["type"] == "object" and schema["properties"], ref
                    assert schema.get("additionalProperties") is not True, ref
                checked.append((method, route.path))
    assert len(checked) > 50
    ingest_answer = doc["paths"]["/api/v1/ingest"]["post"]["responses"]["200"]["content"]
    assert set(ingest_answer) == {"application/json", "application/msgpack"}
    assert doc["paths"]["/api/v1/gateways"]["get"]["responses"]["200"]["content"][
        "application/json"]["schema"]["$ref"].endswith("/GatewaysPage")
    work_order = schemas["WorkOrderOut"]["properties"]
    assert work_order["due_status"]["anyOf"][0]["enum"] == ["on_time", "at_risk", "late"]
    assert work_order["due"]["anyOf"][0]["format"] == "date-time"


# -- due status ---------------------------------------------------------------------------

async def test_due_status_over_the_api_is_the_webs(api: Any, clock: Clock) -> None:
    t = clock.now
    machine = await make_plant(api)
    orders = {"WO-ON": t + timedelta(days=4), "WO-RISK": t + timedelta(days=4),
              "WO-LATE": t + timedelta(days=1), "WO-CLOSED-LATE": t + timedelta(days=1),
              "WO-NO-DUE": None}
    ops = {}
    for number, due in orders.items():
        res = await api.post("/api/v1/work-orders", json={
            "number": number, "product": "P-100", "quantity": 10,
            "due": due.strftime("%Y-%m-%dT%H:%M:%SZ") if due else None})
        assert res.status_code == 201, res.text
        if due is not None:
            res = await api.post(f"/api/v1/work-orders/{number}/release")
            assert res.status_code == 200, res.text
            ops[number] = max(res.json()["operations"], key=lambda o: o["step"])["id"]
    # WO-ON's last operation makes 6 of its 10 pieces
    res = await api.post("/api/v1/dispatches", json={
        "machine_id": machine, "wo_operation_id": ops["WO-ON"], "start_ts": T0_MS})
    assert res.status_code == 201, res.text
    await ingest(api, api.gateway, api.token,
                 [count_record(1, "c_good", 0, 6, ts=T0_MS + 1000)])

    clock.now = t + timedelta(days=2)   # half of WO-ON's and WO-RISK's time is gone
    for action in ("complete", "close"):
        res = await api.post(f"/api/v1/work-orders/WO-CLOSED-LATE/{action}")
        assert res.status_code == 200, res.text

    listed = {o["number"]: o for o in
              (await api.get("/api/v1/work-orders", headers=api.viewer)).json()["items"]}
    detail = {n: (await api.get(f"/api/v1/work-orders/{n}", headers=api.viewer)).json()
              for n in orders}
    async with api.app.state.db.sessions() as session:
        rows, _ = await reports.order_rows(session, reports.OrderQuery(), limit=50, offset=0,
                                           now=cloud_clock.now())
    web = {r["number"]: r["due_status"] for r in rows}
    assert web == {"WO-ON": "on_time", "WO-RISK": "at_risk", "WO-LATE": "late",
                   "WO-CLOSED-LATE": "late", "WO-NO-DUE": None}
    assert {n: o["due_status"] for n, o in listed.items()} == web
    assert {n: o["due_status"] for n, o in detail.items()} == web
    assert (listed["WO-ON"]["good"], detail["WO-ON"]["good"]) == (6, 6)
    assert detail["WO-CLOSED-LATE"]["status"] == "closed"
    # closed with none of its pieces made: short, in the three places alike
    completion = {r["number"]: r["completion"] for r in rows}
    assert completion == {"WO-ON": None, "WO-RISK": None, "WO-LATE": None,
                          "WO-CLOSED-LATE": "short_closed", "WO-NO-DUE": None}
    assert {n: o["completion"] for n, o in listed.items()} == completion
    assert {n: o["completion"] for n, o in detail.items()} == completion


# -- gateways' freshness ------------------------------------------------------------------

async def test_gateways_list_says_which_reports_are_provisional(api: Any, clock: Clock) -> None:
    db = api.app.state.db
    live_token = await create_gateway(db, "gw-live")
    await create_gateway(db, "gw-never")
    await create_gateway(db, "gw-gone")
    await revoke_gateway(db, "gw-gone")
    now = T0_MS + 60 * MINUTE
    clock.ms = now - 30 * MINUTE                  # gw-test's last batch: half an hour ago
    await ingest(api, api.gateway, api.token, [record(1, ts=clock.ms - 1000)])
    clock.ms = now - MINUTE                       # gw-live's: a minute ago
    await ingest(api, "gw-live", live_token, [record(1, ts=clock.ms - 1000, device="imm-07")])
    clock.ms = now

    res = await api.get("/api/v1/gateways", headers=api.viewer)
    assert res.status_code == 200, res.text
    page = res.json()
    items = {g["id"]: g for g in page["items"]}
    assert list(items) == ["gw-live", "gw-never", "gw-test"]   # by id, none revoked
    assert (page["total"], page["provisional"]) == (3, True)
    assert (items["gw-test"]["state"], items["gw-test"]["provisional"]) == ("silent", True)
    assert (items["gw-live"]["state"], items["gw-live"]["provisional"]) == ("live", False)
    assert (items["gw-never"]["state"], items["gw-never"]["provisional"]) == ("never", False)
    assert items["gw-never"]["last_seen"] is None
    assert items["gw-live"]["last_seen"] == cloud_clock.iso(cloud_clock.from_ms(now - MINUTE))
    assert items["gw-test"]["last_seen"] == cloud_clock.iso(
        cloud_clock.from_ms(now - 30 * MINUTE))
    assert items["gw-live"]["newest_ts"] == now - MINUTE - 1000
    # the page's provisional speaks for the whole list, not just its items
    first = (await api.get("/api/v1/gateways", params={"limit": 1},
                           headers=api.viewer)).json()
    assert [g["id"] for g in first["items"]] == ["gw-live"] and first["provisional"] is True

    # once gw-test sends again, nothing is provisional
    await ingest(api, api.gateway, api.token, [record(2, ts=now - 500)])
    page = (await api.get("/api/v1/gateways", headers=api.viewer)).json()
    assert page["provisional"] is False
    assert {g["id"]: g["state"] for g in page["items"]} == {
        "gw-live": "live", "gw-never": "never", "gw-test": "live"}

    # a person route: a gateway's token is refused
    res = await api.get("/api/v1/gateways", headers={"Authorization": f"Bearer {api.token}"})
    assert (res.status_code, res.json()["error"]) == (403, "gateway_not_allowed"), res.text


# -- one timestamp format -----------------------------------------------------------------

def cloud_times(doc: Any, found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Every (key, value) of a cloud-time field in ``doc``, nested, that is not null."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in CLOUD_TIMES and value is not None:
                found.append((key, value))
            else:
                cloud_times(value, found)
    elif isinstance(doc, list):
        for value in doc:
            cloud_times(value, found)
    return found


async def test_every_cloud_time_reads_one_way(api: Any) -> None:
    await make_plant(api)
    res = await api.post("/api/v1/work-orders", json={
        "number": "WO-1", "product": "P-100", "quantity": 5,
        "due": "2026-12-01T16:00:00.123+08:00"})
    assert res.status_code == 201, res.text
    assert res.json()["due"] == "2026-12-01T08:00:00Z"
    assert (await api.post("/api/v1/work-orders/WO-1/release")).status_code == 200
    await ingest(api, api.gateway, api.token, [record(1)])
    assert (await api.post("/api/v1/me/tokens", json={"name": "ci"})).status_code == 201
    answers = [(await api.get(path, headers=api.admin)).json() for path in (
        "/api/v1/work-orders", "/api/v1/work-orders/WO-1", "/api/v1/boms",
        "/api/v1/routings/P-100/current", "/api/v1/users", "/api/v1/gateways",
        f"/api/v1/gateways/{api.gateway}")]
    answers.append((await api.get("/api/v1/me/tokens")).json())
    found = cloud_times(answers, [])
    keys = {key for key, _ in found}
    assert {"created", "updated", "due", "released_at", "last_seen"} <= keys, keys
    audit_log = (await api.get("/api/v1/audit", headers=api.admin)).json()["items"]
    assert audit_log
    found += [("ts", e["ts"]) for e in audit_log]
    assert [(key, value) for key, value in found if not ISO.match(value)] == []
