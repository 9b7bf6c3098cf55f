"""Numbers a plant manager can trust (issue 13), through ingest and the REST routes:
performance over 100 % is capped and flagged (OEE never above 100 %), time before a
machine's first record is no stop, and short alarm and setup stops are downtime named
by their alarm's text.

THE MORNING (2025-06-02 UTC, no calendar: 24/7; window 00:00-10:00). Machine M1 =
gw-test/cnc-03, routing ideal cycle 60 s, 1 cavity; WO-N (500 pieces) dispatched from
07:00, over-produced (600).

    08:00     link online, running        first record: 00:00-08:00 is no data
    08:30     alarm state; alarm 1001 "Spindle overload" active
    08:30:30  running                     30 s < 120 s, but an alarm: downtime,
                                          reason "Spindle overload"
    09:00     setup, 09:01 running        60 s setup: downtime, reason "setup"
    09:30     idle, 09:30:30 running      30 s idle: a micro-stop (speed loss)
    09:59     +600 good                   ideal 600 min in 118.5 min of run time
    10:00     off                         (after the window; the pages' day sees it)

planned 120 min; downtime 1.5 min; run 118.5 min (0.5 micro); performance measured
600 / 118.5 = 5.06 -> capped at 1 with the flag; OEE = 118.5 / 120.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.fixtures.ingest import ingest
from tests.fixtures.plant import (
    PASSWORD,
    add_machine,
    add_routing,
    add_work_order,
    put_product,
    release,
    start_dispatch,
)

MIN = 60_000
sqlite_only = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)


def at(hhmmss: str) -> int:
    h, m, *s = (int(p) for p in hhmmss.split(":"))
    return int(datetime(2025, 6, 2, h, m, s[0] if s else 0, tzinfo=UTC).timestamp() * 1000)


START, END = at("00:00"), at("10:00")


def morning() -> list[dict[str, Any]]:
    def state(name: str, code: int = 0) -> dict[str, Any]:
        return {"kind": "state", "body": {"state": name, "prev": None, "code": code}}

    script: list[tuple[str, dict[str, Any]]] = [
        ("08:00", {"kind": "link", "body": {"online": True, "error": None}}),
        ("08:00", state("running")),
        ("08:30", state("alarm", 3)),
        ("08:30", {"kind": "alarm", "body": {"code": 1001, "text": "Spindle overload",
                                             "active": True}}),
        ("08:30:30", state("running")),
        ("08:30:30", {"kind": "alarm", "body": {"code": 1001, "text": "Spindle overload",
                                                "active": False}}),
        ("09:00", state("setup", 4)),
        ("09:01", state("running")),
        ("09:30", state("idle", 1)),
        ("09:30:30", state("running")),
        ("09:59", {"kind": "count", "body": {"tag": "c_good", "counts": "good",
                                             "delta": 600, "raw_before": 0,
                                             "raw_after": 600, "reset": False}}),
        ("10:00", state("off")),
    ]
    return [{**rec, "seq": i + 1, "ts": at(hhmm), "device": "cnc-03"}
            for i, (hhmm, rec) in enumerate(script)]


@sqlite_only
async def test_morning_numbers(api):
    m1 = await add_machine(api, "cnc-03", "M1")
    await put_product(api, "P-N")
    await add_routing(api, "P-N", [{"step": 10, "name": "mill", "machine_id": m1,
                                    "ideal_cycle_ms": 60_000, "cavities": 1}])
    await add_work_order(api, "WO-N", "P-N", 500)
    [op] = await release(api, "WO-N")
    await start_dispatch(api, m1, op, at("07:00"))
    await ingest(api, morning())

    res = await api.get("/api/v1/oee", params={"start": START, "end": END,
                                               "group_by": "machine"})
    assert res.status_code == 200, res.text
    [row] = res.json()["items"]
    assert (row["planned_ms"], row["run_ms"], row["downtime_ms"], row["micro_stop_ms"]) == (
        120 * MIN, 118.5 * MIN, 1.5 * MIN, 0.5 * MIN)
    assert row["performance"] == 1.0
    assert row["oee"] == pytest.approx(118.5 / 120) and row["oee"] <= 1.0
    [flag] = row["quality_flags"]
    assert flag["code"] == "performance_over_100"
    assert flag["performance_measured"] == pytest.approx(600 / 118.5)
    assert (flag["ideal_ms_per_piece"], flag["measured_ms_per_piece"]) == (60_000, 11_850)
    assert row["losses"]["downtime_by_reason"] == {"Spindle overload": 0.5 * MIN,
                                                   "setup": 1 * MIN}
    assert row["losses"]["speed_loss_ms"] == 0

    [by_order] = (await api.get("/api/v1/oee", params={
        "start": START, "end": END, "group_by": "order"})).json()["items"]
    assert by_order["work_order"] == "WO-N" and by_order["performance"] == 1.0
    assert [f["code"] for f in by_order["quality_flags"]] == ["performance_over_100"]

    res = await api.get("/api/v1/downtime/pareto", params={"start": START, "end": END})
    assert [(i["reason"], i["duration_ms"], i["count"]) for i in res.json()["items"]] == [
        ("setup", MIN, 1), ("Spindle overload", 0.5 * MIN, 1)]

    res = await api.get(f"/api/v1/machines/{m1}/stops", params={"start": START, "end": END})
    stops = [(s["start_ts"], s["state"], s["micro"], s["cause"]) for s in res.json()["items"]]
    assert stops == [(at("08:30"), "alarm", False, "Spindle overload"),
                     (at("09:00"), "setup", False, None),
                     (at("09:30"), "idle", True, None)]

    # the page and its export say it beside the figure, in the reader's language
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api.app),
                                 base_url="http://cloud",
                                 headers={"Accept-Language": "zh-CN"}) as web:
        res = await web.post("/login", data={"name": "vic", "password": PASSWORD,
                                             "next": "/"})
        assert res.status_code == 303, res.text
        period = {"from": "2025-06-01", "to": "2025-06-02", "machine_id": m1}
        page = (await web.get("/oee", params=period)).text
        assert "100.0% <span class=\"data-flag\"" in page
        assert "实测性能开动率 506%，按 100% 显示" in page and "Spindle overload" in page
        res = await web.get("/oee", params={**period, "export": "csv"})
        [line] = list(csv.DictReader(io.StringIO(res.text.lstrip("\ufeff"))))
        assert line["性能开动率"] == "1.0"
        assert line["数据质量"].startswith("实测性能开动率 506%")
        # over-production: on the board, the order list and the order page, and the API
        for path in ("/", "/work-orders", "/work-orders/WO-N"):
            assert 'data-completion="over_produced">超产<' in (await web.get(path)).text, path
    res = await api.get("/api/v1/work-orders/WO-N")
    assert (res.json()["status"], res.json()["completion"]) == ("completed", "over_produced")
