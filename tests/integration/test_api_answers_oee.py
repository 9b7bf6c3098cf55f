"""The OEE, calendar, maintenance and settings routes describe their answers: every one
names a response schema in ``/openapi.json`` (whose references all resolve), the calendar
body is documented though the domain checks it, a bad calendar still answers 422
``invalid`` naming the input the way people read it, and real answers write cloud times
as ``2026-12-01T08:00:00Z`` and keep their keys."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from cloud.api.routes import oee as oee_routes
from cloud.api.routes import settings as settings_routes
from cloud.core import clock

pytestmark = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
SHIFTS = [{"name": "A", "start": "06:00", "end": "14:00", "breaks": [["10:00", "10:15"]]}]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [
            r for k, v in node.items() if k != "$ref" for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/components/schemas/"), ref
    return doc["components"]["schemas"][ref.removeprefix("#/components/schemas/")]


def _operations(doc: dict[str, Any], router: Any) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for route in router.routes:
        if not getattr(route, "include_in_schema", False):
            continue
        for method in route.methods:
            out.append((method, route.path, doc["paths"][route.path][method.lower()]))
    return out


async def test_every_route_names_a_response_schema(api: Any) -> None:
    doc = api.app.openapi()
    ops = _operations(doc, oee_routes.router) + _operations(doc, settings_routes.router)
    assert len(ops) >= 25
    for method, path, op in ops:
        ok = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert len(ok) == 1, (method, path, ok)
        [(code, answer)] = ok.items()
        if code == "204":
            assert not answer.get("content"), (method, path)
            continue
        schema = answer["content"]["application/json"]["schema"]
        assert set(schema) == {"$ref"}, (method, path, schema)
        assert _resolve(doc, schema["$ref"])["properties"], (method, path)
        assert op["responses"]["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"}, (method, path)
    # every reference in the document points at a schema it has (a body schema that
    # carried its own ``#/$defs`` would point at the document's root)
    for ref in _refs(doc):
        _resolve(doc, ref)
    names = {_resolve(doc, op["responses"][c]["content"]["application/json"]["schema"]
                      ["$ref"])["title"]
             for _, _, op in ops for c in op["responses"] if c in ("200", "201")}
    assert {"OeeReport", "OeeTrend", "DowntimePareto", "MachineStates", "MachineStops",
            "StopReasonOut", "Page[CalendarOut]", "CalendarOut", "PlannedIntervals",
            "MachineCalendarOut", "Page[CounterOut]", "CounterOut", "SettingsKeys",
            "OeeSettings"} <= names, names
    row = _resolve(doc, "#/components/schemas/OeeRow")["properties"]
    assert {"availability", "performance", "quality", "oee", "losses",
            "unrated_pieces"} <= set(row)
    counter = _resolve(doc, "#/components/schemas/CounterOut")["properties"]
    assert counter["last_reset_at"]["anyOf"][0]["format"] == "date-time"


async def test_the_calendar_body_is_documented(api: Any) -> None:
    doc = api.app.openapi()
    for method in ("post", "put"):
        path = "/api/v1/calendars" + ("/{calendar_id}" if method == "put" else "")
        body = doc["paths"][path][method]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert schema["title"] == "CalendarIn"
        assert set(schema["required"]) == {"name", "timezone", "definition"}
        definition = schema["properties"]["definition"]
        assert definition["additionalProperties"] is False
        shift = definition["properties"]["shifts"]["items"]
        assert set(shift["properties"]) == {"name", "start", "end", "days", "breaks"}
        assert shift["properties"]["start"]["pattern"]
        assert shift["properties"]["days"]["items"] == {"type": "integer", "minimum": 1,
                                                        "maximum": 7}
        assert definition["properties"]["non_working_dates"]["items"]["format"] == "date"
        assert "$defs" not in str(schema)


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"name": " ", "timezone": "UTC", "definition": {"shifts": SHIFTS}}, "name",
     "1..64 characters"),
    ({"name": "c", "timezone": "Mars/Olympus", "definition": {"shifts": SHIFTS}},
     "timezone", "unknown time zone"),
    ({"name": "c", "timezone": "UTC"}, "definition", "expected an object"),
    ({"name": "c", "timezone": "UTC", "definition": {"shift": []}}, "shift", "no such key"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": []}}, "shifts",
     "non-empty list"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        {"name": "A", "start": "6:00", "end": "14:00"}]}}, "shifts[0].start", "HH:MM"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        {"name": "A", "start": "06:00", "end": "14:00", "breaks": [["10:00", "1O:15"]]}]}},
     "shifts[0].breaks[0][1]", "HH:MM"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        *SHIFTS, {"name": "A", "start": "14:00", "end": "22:00"}]}}, "shifts[1].name",
     "the name of another shift"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        *SHIFTS, {"name": "B", "start": "14:00", "end": "22:00",
                  "breaks": [["10:00", "10:15"]]}]}}, "shifts[1].breaks[0]",
     "break outside the shift (10:00-10:15 is not within 14:00-22:00)"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        {"name": "A", "start": "06:00", "end": "14:00",
         "breaks": [["10:00", "10:30"], ["10:15", "10:45"]]}]}}, "shifts[0].breaks[1]",
     "overlaps shifts[0].breaks[0]"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        {"name": "N", "start": "22:00", "end": "06:00"},
        {"name": "E", "start": "05:00", "end": "13:00"}]}}, "shifts[1]",
     "overlaps shifts[0] (N) on weekday"),
    ({"name": "c", "timezone": "UTC", "definition": {"shifts": [
        {"name": "A", "start": "06:00", "end": "14:00", "days": [0]}]}}, "shifts[0].days",
     "ISO weekdays"),
    ({"name": "c", "timezone": "UTC", "definition": {
        "shifts": SHIFTS, "non_working_dates": ["2026-13-01"]}}, "non_working_dates[0]",
     "ISO date"),
])
async def test_a_bad_calendar_names_its_field(api: Any, body: dict[str, Any], field: str,
                                              words: str) -> None:
    res = await api.post("/api/v1/calendars", json=body)
    assert res.status_code == 422, res.text
    answer = res.json()
    assert (answer["error"], answer["field"]) == ("invalid", field), answer
    assert answer["detail"].startswith(f"{field}: ") and words in answer["detail"], answer
    # the same through PUT, and nothing was stored
    good = await api.post("/api/v1/calendars", json={
        "name": "ok", "timezone": "UTC", "definition": {"shifts": SHIFTS}})
    assert good.status_code == 201, good.text
    res = await api.put(f"/api/v1/calendars/{good.json()['id']}", json=body)
    assert (res.status_code, res.json()["error"], res.json()["field"]) == (422, "invalid",
                                                                          field)
    listed = (await api.get("/api/v1/calendars")).json()
    assert [c["name"] for c in listed["items"]] == ["ok"]


async def test_answers_keep_their_keys_and_write_cloud_times_in_utc(
        api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned = datetime(2026, 12, 1, 8, 0, 0, 654321, tzinfo=UTC)
    monkeypatch.setattr(clock, "now", lambda: pinned)
    monkeypatch.setattr(clock, "now_ms", lambda: int(pinned.timestamp() * 1000))
    res = await api.post("/api/v1/machines", headers=api.admin, json={
        "gateway_id": "gw-test", "device": "imm-01", "name": "IMM 1"})
    machine = res.json()["id"]
    res = await api.post("/api/v1/calendars", json={
        "name": "one shift", "timezone": "Europe/Berlin", "definition": {
            "shifts": [{"name": "A", "start": "06:00", "end": "14:00", "days": [5, 1, 1],
                        "breaks": [["12:00", "12:30"], ["10:00", "10:15"]]}],
            "non_working_dates": ["2026-12-25", "2026-12-24", "2026-12-25"]}})
    assert res.status_code == 201, res.text
    # the answer is the normalized definition, in the keys it always had
    assert res.json() == {"id": res.json()["id"], "name": "one shift",
                          "timezone": "Europe/Berlin", "machine_ids": [], "definition": {
                              "shifts": [{"name": "A", "start": "06:00", "end": "14:00",
                                          "days": [1, 5], "breaks": [["10:00", "10:15"],
                                                                     ["12:00", "12:30"]]}],
                              "non_working_dates": ["2026-12-24", "2026-12-25"]}}

    hours = (await api.post("/api/v1/maintenance-counters", json={
        "machine_id": machine, "name": "filter", "metric": "run_hours",
        "threshold_hours": 2})).json()
    cycles = (await api.post("/api/v1/maintenance-counters", json={
        "machine_id": machine, "name": "mold", "metric": "cycles", "threshold": 10})).json()
    # only run-hour counters have hours; a counter never reset has no reset time
    assert {"value_hours", "threshold_hours"} <= set(hours)
    assert not {"value_hours", "threshold_hours"} & set(cycles)
    assert cycles["last_reset_at"] is None
    res = await api.post(f"/api/v1/maintenance-counters/{cycles['id']}/reset")
    assert res.status_code == 200, res.text
    assert res.json()["last_reset_at"] == "2026-12-01T08:00:00Z"
    listed = (await api.get("/api/v1/maintenance-counters", headers=api.viewer)).json()
    assert set(listed) == {"items", "total", "limit", "offset"}
    reset = [c["last_reset_at"] for c in listed["items"] if c["last_reset_at"]]
    assert reset and all(ISO_Z.match(t) for t in reset), reset
    assert (await api.get(f"/api/v1/maintenance-counters/{cycles['id']}")
            ).json()["last_reset_at"] == "2026-12-01T08:00:00Z"

    # record times stay epoch ms; an OEE row by machine has only the machine's key fields
    states = (await api.get("/api/v1/machines/states")).json()
    assert states["now"] == int(pinned.timestamp() * 1000)
    assert [(s["machine_id"], s["state"], s["since_ts"]) for s in states["items"]] == [
        (machine, "offline", None)]
    window = {"start": states["now"] - 86_400_000, "end": states["now"]}
    [row] = (await api.get("/api/v1/oee", params=window)).json()["items"]
    assert (row["machine_id"], row["machine"], row["planned_ms"], row["oee"]) == (
        machine, "IMM 1", 0, None)
    assert not {"shift", "day", "work_order", "customer", "product"} & set(row)
    assert (await api.get("/api/v1/downtime/pareto", params=window)).json() == {
        **window, "items": []}
