"""The anomaly and notification routes answer typed models: every route of
cloud/api/routes/anomalies.py and notify.py names its answer's schema in ``/openapi.json``,
the enumerations there are the database's, and real answers (an anomaly with its links
and history, a channel, a dead notification and its retry) validate against those models
with cloud times written ``2026-12-01T08:00:00Z``. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any, get_args

import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from cloud import notify
from cloud.api.routes import anomalies as anomaly_routes
from cloud.api.routes import notify as notify_routes
from cloud.api.schemas import Page
from cloud.core import clock
from cloud.core.models import (
    ANOMALY_KINDS,
    ANOMALY_STATUSES,
    CHANNEL_KINDS,
    NOTIFICATION_STATUSES,
    SEVERITIES,
)
from cloud.notify.config import EVENTS
from tests.services import free_port

pytestmark = pytest.mark.needs_service("postgresql")

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
T0 = 1_772_438_400_000  # 2026-03-02T08:00:00Z


def cloud_times(doc: Any, where: str = "") -> list[tuple[str, str]]:
    """Every cloud time in an answer (``created``, ``at``, ``next_attempt``, ``*_at``)
    that is set, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "detail":
                continue        # free-form: what was measured or given
            if (key in ("created", "at", "next_attempt") or key.endswith("_at")) \
                    and value is not None:
                found.append((f"{where}.{key}", value))
            else:
                found += cloud_times(value, f"{where}.{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += cloud_times(item, f"{where}[{i}]")
    return found


def assert_cloud_times(doc: Any, least: int) -> None:
    times = cloud_times(doc)
    assert len(times) >= least, times
    bad = [(where, value) for where, value in times
           if not isinstance(value, str) or not ISO.match(value)]
    assert not bad, bad


def validates(model: type[BaseModel], doc: Any) -> Any:
    """``doc`` is an answer of ``model``, and the model writes it back unchanged."""
    parsed = model.model_validate(doc)
    assert parsed.model_dump(mode="json") == doc
    return doc


@pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)
async def test_every_route_names_its_answer_schema(api: Any) -> None:
    spec = api.app.openapi()
    schemas = spec["components"]["schemas"]
    seen = []
    for module in (anomaly_routes, notify_routes):
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            for method in sorted(route.methods or ()):
                op = spec["paths"][route.path][method.lower()]
                code = str(route.status_code or 200)
                schema = op["responses"][code]["content"]["application/json"]["schema"]
                ref = schema.get("$ref", "")
                assert ref.startswith("#/components/schemas/"), (method, route.path, schema)
                name = ref.rsplit("/", 1)[1]
                assert name in schemas and schemas[name].get("properties"), name
                seen.append((method, route.path, name))
    assert len(seen) == 18, seen                  # 18: POST /api/v1/anomalies/bulk (issue 13)
    names = {(m, p): n for m, p, n in seen}
    assert names["POST", "/api/v1/anomalies/bulk"] == "BulkOut"
    assert names["GET", "/api/v1/anomalies"] == "Page_AnomalyOut_"
    assert names["GET", "/api/v1/anomalies/{anomaly_id}"] == "AnomalyDetailOut"
    assert names["GET", "/api/v1/notifications"] == "Page_NotificationOut_"
    created = schemas["AnomalyOut"]["properties"]["created"]
    assert created["type"] == "string" and created["format"] == "date-time"
    assert schemas["AnomalyOut"]["properties"]["ts"]["type"] == "integer"
    test_route = spec["paths"]["/api/v1/notification-channels/{channel_id}/test"]["post"]
    assert "502" in test_route["responses"]


def test_the_answers_enumerations_are_the_databases() -> None:
    assert get_args(anomaly_routes.AnomalyKind) == ANOMALY_KINDS
    assert get_args(anomaly_routes.AnomalyStatus) == ANOMALY_STATUSES
    assert get_args(anomaly_routes.Severity) == SEVERITIES
    assert get_args(notify_routes.ChannelKind) == CHANNEL_KINDS
    assert get_args(notify_routes.NotificationStatus) == NOTIFICATION_STATUSES
    assert get_args(notify_routes.NotificationEvent) == EVENTS


@pytest.fixture
async def plant(api: Any) -> Any:
    """Machine M1 with WO-1 (customer ACME, step 10 mold) dispatched on it from T0."""
    res = await api.post("/api/v1/machines", headers=api.admin, json={
        "gateway_id": "gw-test", "device": "cnc-03", "name": "M1"})
    assert res.status_code == 201, res.text
    api.machine = res.json()["id"]
    assert (await api.put("/api/v1/products/P", json={"name": "P"})).status_code == 200
    assert (await api.post("/api/v1/routings", json={"product": "P", "operations": [
        {"step": 10, "name": "mold", "work_center": "WC"}]})).status_code == 201
    assert (await api.post("/api/v1/work-orders", json={
        "number": "WO-1", "product": "P", "quantity": 100,
        "customer": "ACME"})).status_code == 201
    res = await api.post("/api/v1/work-orders/WO-1/release")
    assert res.status_code == 200, res.text
    op = res.json()["operations"][0]["id"]
    res = await api.post("/api/v1/dispatches", json={
        "machine_id": api.machine, "wo_operation_id": op, "start_ts": T0})
    assert res.status_code == 201, res.text
    return api


async def test_an_anomaly_with_links_and_history(plant: Any) -> None:
    api = plant
    res = await api.post("/api/v1/anomalies", json={
        "kind": "quality", "title": "flash on the parting line", "severity": "major",
        "machine_id": api.machine, "ts": T0 + 60_000, "detail": {"pieces": 3}})
    assert res.status_code == 201, res.text
    doc = validates(anomaly_routes.AnomalyDetailOut, res.json())
    assert [(x["work_order"], x["step"], x["operation"], x["customer"])
            for x in doc["links"]] == [("WO-1", 10, "mold", "ACME")]
    assert doc["ts"] == T0 + 60_000 and doc["detail"] == {"pieces": 3}
    assert_cloud_times(doc, least=2)            # created, the history's one step

    res = await api.post(f"/api/v1/anomalies/{doc['id']}/acknowledge",
                         json={"assignee": "lee", "note": "looking"})
    assert res.status_code == 200, res.text
    doc = validates(anomaly_routes.AnomalyDetailOut, res.json())
    assert [h["action"] for h in doc["history"]] == ["anomaly.create", "anomaly.acknowledge"]
    assert doc["history"][1]["detail"] == {"assignee": "lee", "note": "looking"}
    assert_cloud_times(doc, least=4)            # + acknowledged_at, a second step

    page = (await api.get("/api/v1/anomalies", headers=api.viewer)).json()
    validates(Page[anomaly_routes.AnomalyOut], page)
    assert page["total"] == 1 and "history" not in page["items"][0]
    assert_cloud_times(page, least=2)
    stats = (await api.get("/api/v1/anomalies/stats", headers=api.viewer,
                           params={"since_ts": T0, "until_ts": T0 + 3_600_000})).json()
    validates(anomaly_routes.AnomalyStatsOut, stats)
    assert stats["total"] == 1 and stats["by_kind"] == {"quality": 1}


async def test_a_channel_and_a_dead_notification(plant: Any) -> None:
    api = plant
    res = await api.put("/api/v1/settings/notifications", headers=api.admin,
                        json={"max_attempts": 1})
    assert res.status_code == 200, res.text
    # a port nobody listens on: the one attempt fails, the message is dead
    target = f"http://127.0.0.1:{free_port()}/hook?token=0123456789abcdef"
    res = await api.post("/api/v1/notification-channels", headers=api.admin, json={
        "name": "ops hook", "kind": "webhook", "target": target, "secret": "s3cret-key",
        "min_severity": "info"})
    assert res.status_code == 201, res.text
    channel = validates(notify_routes.ChannelOut, res.json())
    assert channel["has_secret"] and "0123456789abcdef" not in channel["target"]
    assert_cloud_times(channel, least=1)
    listed = (await api.get("/api/v1/notification-channels", headers=api.viewer)).json()
    validates(Page[notify_routes.ChannelOut], listed)

    res = await api.post("/api/v1/anomalies", json={
        "kind": "operator", "title": "no operator on M1", "machine_id": api.machine})
    assert res.status_code == 201, res.text
    assert await notify.deliver(api.app.state.db, clock.now_ms()) == 0

    res = await api.get("/api/v1/notifications", headers=api.viewer,
                        params={"status": "dead"})
    assert res.status_code == 200, res.text
    page = validates(Page[notify_routes.NotificationOut], res.json())
    assert page["total"] == 1
    dead = page["items"][0]
    assert (dead["status"], dead["attempts"], dead["event"]) == ("dead", 1, "opened")
    assert dead["channel"] == {"id": channel["id"], "name": "ops hook", "kind": "webhook"}
    assert dead["last_error"] and "0123456789abcdef" not in dead["last_error"]
    assert dead["sent_at"] is None
    assert_cloud_times(dead, least=2)           # created, next_attempt

    res = await api.post(f"/api/v1/notifications/{dead['id']}/retry")
    assert res.status_code == 200, res.text
    again = validates(notify_routes.NotificationOut, res.json())
    assert (again["status"], again["attempts"]) == ("pending", 0)
    assert_cloud_times(again, least=2)

    res = await api.delete(f"/api/v1/notification-channels/{channel['id']}",
                           headers=api.admin)
    assert res.status_code == 200, res.text
    assert validates(notify_routes.ChannelDeletedOut, res.json()) == {
        "deleted": channel["id"], "notifications_removed": 1}
