"""OEE, stops, downtime, calendars and maintenance counters against numbers worked out by
hand (cloud/oee/ has the definitions), through the real ingest API and the REST routes.

THE SCRIPTED DAY (Wednesday 2025-03-12, calendar "two-shift" in Asia/Shanghai, UTC+8,
all times local). Machine M1 = gw-test/cnc-03, micro-stop threshold 120 s (default).

Shifts: A 06:00-14:00, break 10:00-10:30; B 14:00-22:00, break 18:00-18:30.
    planned A = (10:00-06:00) 240 + (14:00-10:30) 210 = 450 min
    planned B = (18:00-14:00) 240 + (22:00-18:30) 210 = 450 min      day = 900 min
Orders: WO-A (product P-A, ideal cycle 30 s, 1 cavity  -> 0.5 min per piece)
        WO-B (product P-B, ideal cycle 60 s, 4 cavities -> 0.25 min per piece)
Dispatches: WO-A [06:30, 12:00), WO-B [12:00, open). 06:00-06:30 is unassigned.

Timeline                                   what it is (stops are "not running" stretches)
05:30 link online, state idle              stop 05:30-06:00: outside the shifts, 0 planned
06:00 running
06:20 +10 good                             unassigned -> unrated piece (no ideal cycle)
07:00 idle, 07:01 running                  60 s  < 120 s: micro-stop, 1 min (A, WO-A)
07:59 +100 good                            WO-A
08:00 alarm 1001, 08:45 running            45 min downtime (A, WO-A); reason "tool change"
                                           is assigned afterwards over the API
09:30:00 idle, 09:31:30 running            90 s micro-stop, 1.5 min (A, WO-A)
10:00 idle, 10:30 running                  30 min stop, all inside the break: 0 planned
10:15 +10 good                             during the break: not in OEE (unplanned time)
  (LATE: 11:00 idle, 11:05 running)        5 min downtime "idle" (A, WO-A)
  (LATE: 11:30 +20 good)                   WO-A
11:59 +300 good, +20 scrap                 WO-A
12:00 setup, 12:40 running                 changeover: 40 min downtime "setup" (A, WO-B)
13:59 +240 good                            WO-B, shift A
15:00 link offline, 15:20 link online      20 min downtime, reason "offline" (B, WO-B)
16:00 idle, 16:01 running                  micro-stop 1 min (B)
17:00 +1000 good, +40 scrap                WO-B
18:29:30 idle, 18:30:30 running            60 s micro-stop across the break's end: only
                                           18:30:00-18:30:30 is planned -> 0.5 min (B)
21:00 +400 good                            WO-B
21:50 idle (still idle at the end)         10 min downtime "idle" in planned time (B)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from cloud.core.models import AuditEntry
from tests.fixtures.ingest import ingest
from tests.fixtures.plant import (
    add_machine,
    add_routing,
    add_work_order,
    put_product,
    release,
    start_dispatch,
)

MIN = 60_000
SHANGHAI = ZoneInfo("Asia/Shanghai")
CALENDAR = {"shifts": [
    {"name": "A", "start": "06:00", "end": "14:00", "days": [1, 2, 3, 4, 5],
     "breaks": [["10:00", "10:30"]]},
    {"name": "B", "start": "14:00", "end": "22:00", "days": [1, 2, 3, 4, 5],
     "breaks": [["18:00", "18:30"]]}],
    "non_working_dates": ["2025-10-01"]}


def at(hhmmss: str, day: str = "2025-03-12", tz: ZoneInfo = SHANGHAI) -> int:
    """Epoch ms of a local time on ``day``."""
    parts = [int(p) for p in hhmmss.split(":")] + [0]
    return int(datetime(*map(int, day.split("-")), parts[0], parts[1], parts[2],
                        tzinfo=tz).timestamp() * 1000)


DAY_START, DAY_END = at("00:00"), at("00:00", "2025-03-13")
# (local time, what, late?) in time order; seq = position + 1
SCRIPT: list[tuple[str, tuple[Any, ...], bool]] = [
    ("05:30", ("link", True), False),
    ("05:30", ("state", "idle", 0), False),
    ("06:00", ("state", "running", 0), False),
    ("06:20", ("good", 10), False),
    ("07:00", ("state", "idle", 0), False),
    ("07:01", ("state", "running", 0), False),
    ("07:59", ("good", 100), False),
    ("08:00", ("state", "alarm", 1001), False),
    ("08:45", ("state", "running", 0), False),
    ("09:30:00", ("state", "idle", 0), False),
    ("09:31:30", ("state", "running", 0), False),
    ("10:00", ("state", "idle", 0), False),
    ("10:15", ("good", 10), False),
    ("10:30", ("state", "running", 0), False),
    ("11:00", ("state", "idle", 0), True),
    ("11:05", ("state", "running", 0), True),
    ("11:30", ("good", 20), True),
    ("11:59", ("good", 300), False),
    ("11:59", ("scrap", 20), False),
    ("12:00", ("state", "setup", 0), False),
    ("12:40", ("state", "running", 0), False),
    ("13:59", ("good", 240), False),
    ("15:00", ("link", False), False),
    ("15:20", ("link", True), False),
    ("16:00", ("state", "idle", 0), False),
    ("16:01", ("state", "running", 0), False),
    ("17:00", ("good", 1000), False),
    ("17:00", ("scrap", 40), False),
    ("18:29:30", ("state", "idle", 0), False),
    ("18:30:30", ("state", "running", 0), False),
    ("21:00", ("good", 400), False),
    ("21:50", ("state", "idle", 0), False),
]


def script_records(device: str = "cnc-03") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(first batch, late batch): wire records of SCRIPT; counter raws run in time order."""
    raw = {"good": 0, "scrap": 0}
    first, late = [], []
    for i, (hhmm, what, is_late) in enumerate(SCRIPT):
        ts = at(hhmm)
        kind = what[0]
        if kind == "link":
            rec = {"kind": "link", "body": {"online": what[1], "error": None}}
        elif kind == "state":
            rec = {"kind": "state", "body": {"state": what[1], "prev": None, "code": what[2]}}
        else:
            before = raw[kind]
            raw[kind] += what[1]
            rec = {"kind": "count", "body": {"tag": f"c_{kind}", "counts": kind,
                                             "delta": what[1], "raw_before": before,
                                             "raw_after": raw[kind], "reset": False}}
        rec.update(seq=i + 1, ts=ts, device=device)
        (late if is_late else first).append(rec)
    return first, late


async def make_day_plant(api: Any) -> dict[str, Any]:
    """M1 on calendar two-shift, orders WO-A/WO-B released and dispatched as scripted."""
    m1 = await add_machine(api, "cnc-03", "M1")
    ops = {}
    for product, cycle, cavities, order, customer in (("P-A", 30_000, 1, "WO-A", "ACME"),
                                                     ("P-B", 60_000, 4, "WO-B", "Globex")):
        await put_product(api, product)
        await add_routing(api, product, [{"step": 10, "name": "mold", "machine_id": m1,
                                          "ideal_cycle_ms": cycle, "cavities": cavities}])
        await add_work_order(api, order, product, 5000, customer=customer)
        [ops[order]] = await release(api, order)
    await start_dispatch(api, m1, ops["WO-A"], at("06:30"), at("12:00"))
    await start_dispatch(api, m1, ops["WO-B"], at("12:00"))
    res = await api.post("/api/v1/calendars", json={
        "name": "two-shift", "timezone": "Asia/Shanghai", "definition": CALENDAR})
    assert res.status_code == 201, res.text
    cal = res.json()["id"]
    res = await api.put(f"/api/v1/machines/{m1}/calendar", json={"calendar_id": cal})
    assert res.status_code == 200 and res.json()["effective"] == "two-shift", res.text
    return {"m1": m1, "ops": ops, "calendar": cal}


async def report(api: Any, group_by: str, **params: Any) -> list[dict[str, Any]]:
    res = await api.get("/api/v1/oee", params={"start": DAY_START, "end": DAY_END,
                                               "group_by": group_by, **params})
    assert res.status_code == 200, res.text
    return res.json()["items"]


def check(row: dict[str, Any], *, planned: float, run: float, down: float, micro: float,
          ideal: float, good: int, scrap: int, unrated: int = 0) -> None:
    """Compare a report row with hand numbers (times in minutes) and the ratios they give."""
    got = {k: row[k] for k in ("planned_ms", "run_ms", "downtime_ms", "micro_stop_ms",
                               "ideal_ms", "good", "scrap", "unrated_pieces")}
    assert got == {"planned_ms": planned * MIN, "run_ms": run * MIN, "downtime_ms": down * MIN,
                   "micro_stop_ms": micro * MIN, "ideal_ms": ideal * MIN, "good": good,
                   "scrap": scrap, "unrated_pieces": unrated}, row
    a, p, q = run / planned, (ideal / run if ideal or not unrated else None), good / (good + scrap)
    assert row["availability"] == pytest.approx(a)
    assert row["quality"] == pytest.approx(q)
    if p is None:
        assert row["performance"] is None and row["oee"] is None
    else:
        assert row["performance"] == pytest.approx(p)
        assert row["oee"] == pytest.approx(a * p * q)
    assert row["losses"]["speed_loss_ms"] == round((run - ideal) * MIN)


@pytest.fixture
async def day(api: Any) -> Any:
    """The scripted day (the module doc) on ``api``: the plant, the first batch (the late
    records held back in ``day.late``) and the reason "tool change" for the 08:00 alarm
    stop, given afterwards by a planner. ``day.m1``: the machine id."""
    plant = await make_day_plant(api)
    first, late = script_records()
    await ingest(api, first)
    res = await api.put(f"/api/v1/machines/{plant['m1']}/stops/{at('08:00')}/reason",
                        json={"reason": "tool change", "note": "insert broke"})
    assert res.status_code == 200, res.text
    api.m1, api.late = plant["m1"], late
    return api


async def test_day_per_machine_by_hand(day):
    # planned 900; downtime = alarm 45 + setup 40 + offline 20 + idle 10 = 115
    # run = 900 - 115 = 785 (of which micro-stops 1 + 1.5 + 1 + 0.5 = 4)
    # ideal = WO-A (100 + 300 + 20 scrap) x 0.5 = 210 + WO-B (240 + 1040 + 400) x 0.25 = 420
    #       = 630; unrated: the 10 unassigned pieces; the 10 made in the break don't count
    # good = 10 + 100 + 300 + 240 + 1000 + 400 = 2050, scrap = 20 + 40 = 60
    # A = 785/900 = 0.872, P = 630/785 = 0.803, Q = 2050/2110 = 0.972, OEE = 0.680
    api, m1 = day, day.m1
    [day] = await report(api, "machine")
    assert (day["machine_id"], day["machine"]) == (m1, "M1")
    check(day, planned=900, run=785, down=115, micro=4, ideal=630, good=2050, scrap=60,
          unrated=10)
    assert day["oee"] == pytest.approx(0.680095, abs=1e-6)
    assert day["losses"]["downtime_by_state"] == {
        "alarm": 45 * MIN, "idle": 10 * MIN, "offline": 20 * MIN, "setup": 40 * MIN}
    assert day["losses"]["downtime_by_reason"] == {
        "idle": 10 * MIN, "offline": 20 * MIN, "setup": 40 * MIN, "tool change": 45 * MIN}
    # scrap loss = 20 x 0.5 + 40 x 0.25 = 20 min
    assert day["losses"]["scrap_loss_ms"] == 20 * MIN
    # the same through the function the pages call
    from cloud.oee import oee_report
    async with api.app.state.db.sessions() as s:
        assert await oee_report(s, start_ms=DAY_START, end_ms=DAY_END) == [day]


async def test_day_per_shift_and_per_local_date(day):
    # A: planned 450, downtime alarm 45 + setup 40 = 85, run 365, micro 1 + 1.5 = 2.5
    #    ideal 210 (WO-A) + 240 x 0.25 = 60 (WO-B before 14:00) = 270
    #    good 10 + 100 + 300 + 240 = 650, scrap 20
    #    A = 365/450 = 0.811, P = 270/365 = 0.740, Q = 650/670 = 0.970
    # B: planned 450, downtime offline 20 + idle 10 = 30, run 420, micro 1 + 0.5 = 1.5
    #    ideal (1040 + 400) x 0.25 = 360, good 1400, scrap 40
    #    A = 420/450 = 0.933, P = 360/420 = 0.857, Q = 1400/1440 = 0.972
    api = day
    a, b = await report(api, "shift")
    assert (a["shift"], b["shift"]) == ("A", "B")
    check(a, planned=450, run=365, down=85, micro=2.5, ideal=270, good=650, scrap=20,
          unrated=10)
    check(b, planned=450, run=420, down=30, micro=1.5, ideal=360, good=1400, scrap=40)
    [day] = await report(api, "machine")
    [(key, dayrow)] = [(r["day"], r) for r in await report(api, "day")]
    assert key == "2025-03-12"   # the Shanghai date, though shift A starts on 03-11 in UTC
    assert {k: v for k, v in dayrow.items() if k != "day"} == \
        {k: v for k, v in day.items() if k not in ("machine_id", "machine")}


async def test_day_per_order_and_product(day):
    """Time by dispatch, pieces by attribution."""
    # unassigned 06:00-06:30: planned 30, run 30; 10 pieces without ideal -> P undefined
    # WO-A [06:30,12:00): planned 210 + 90 = 300, downtime alarm 45, run 255, micro 2.5
    #    ideal 420 x 0.5 = 210, good 400, scrap 20: A 0.85, P 210/255 = 0.824, Q 0.952
    # WO-B [12:00,22:00): planned 120 + 450 = 570, downtime 40 + 20 + 10 = 70, run 500,
    #    micro 1.5, ideal 1680 x 0.25 = 420, good 1640, scrap 40: A 0.877, P 0.84, Q 0.976
    api = day
    orders = {r["work_order"]: r for r in await report(api, "order")}
    assert set(orders) == {"WO-A", "WO-B", None}
    assert (orders["WO-A"]["customer"], orders["WO-A"]["product"]) == ("ACME", "P-A")
    check(orders[None], planned=30, run=30, down=0, micro=0, ideal=0, good=10, scrap=0,
          unrated=10)
    check(orders["WO-A"], planned=300, run=255, down=45, micro=2.5, ideal=210, good=400,
          scrap=20)
    check(orders["WO-B"], planned=570, run=500, down=70, micro=1.5, ideal=420, good=1640,
          scrap=40)
    assert orders["WO-B"]["losses"]["downtime_by_reason"] == {
        "idle": 10 * MIN, "offline": 20 * MIN, "setup": 40 * MIN}
    products = {r["product"]: r for r in await report(api, "product")}
    assert {k: v for k, v in products["P-B"].items() if k != "product"} == \
        {k: v for k, v in orders["WO-B"].items()
         if k not in ("work_order", "customer", "product")}


async def test_day_stops_and_downtime_pareto(day):
    api, m1 = day, day.m1
    res = await api.get(f"/api/v1/machines/{m1}/stops",
                        params={"start": at("06:00"), "end": at("13:00")})
    got = [(s["start_ts"], s["duration_ms"], s["state"], s["micro"], s["reason"])
           for s in res.json()["items"]]
    assert got == [(at("07:00"), 1 * MIN, "idle", True, None),
                   (at("08:00"), 45 * MIN, "alarm", False, "tool change"),
                   (at("09:30"), 90_000, "idle", True, None),
                   (at("10:00"), 30 * MIN, "idle", False, None),
                   (at("12:00"), 40 * MIN, "setup", False, None)]
    pareto = (await api.get("/api/v1/downtime/pareto",
                            params={"start": DAY_START, "end": DAY_END})).json()["items"]
    assert pareto == [{"reason": "tool change", "duration_ms": 45 * MIN, "count": 1},
                      {"reason": "setup", "duration_ms": 40 * MIN, "count": 1},
                      {"reason": "offline", "duration_ms": 20 * MIN, "count": 1},
                      {"reason": "idle", "duration_ms": 10 * MIN, "count": 1}]


async def test_day_late_batch_changes_only_its_shift_and_order(day):
    # 11:00-11:05 idle: +5 min downtime "idle" in A and WO-A; 11:30 +20 good on WO-A
    #    (+10 min ideal). A: downtime 90, run 360, ideal 280, good 670 -> A 0.8,
    #    P 280/360 = 0.778, Q 670/690. WO-A: downtime 50, run 250, ideal 220, good 420.
    #    Day: downtime 120, run 780, ideal 640, good 2070. Shift B does not change.
    api = day
    _a, b = await report(api, "shift")
    orders = {r["work_order"]: r for r in await report(api, "order")}
    await ingest(api, day.late)
    [day2] = await report(api, "machine")
    check(day2, planned=900, run=780, down=120, micro=4, ideal=640, good=2070, scrap=60,
          unrated=10)
    a2, b2 = await report(api, "shift")
    check(a2, planned=450, run=360, down=90, micro=2.5, ideal=280, good=670, scrap=20,
          unrated=10)
    assert b2 == b
    orders2 = {r["work_order"]: r for r in await report(api, "order")}
    check(orders2["WO-A"], planned=300, run=250, down=50, micro=2.5, ideal=220, good=420,
          scrap=20)
    assert orders2["WO-B"] == orders["WO-B"] and orders2[None] == orders[None]
    pareto = (await api.get("/api/v1/downtime/pareto",
                            params={"start": DAY_START, "end": DAY_END})).json()["items"]
    assert pareto[-1] == {"reason": "idle", "duration_ms": 15 * MIN, "count": 2}
    # per shift and order at once: WO-B has time in both shifts
    cells = {(r["shift"], r["work_order"]): r["planned_ms"]
             for r in await report(api, "shift,order")}
    assert cells == {("A", None): 30 * MIN, ("A", "WO-A"): 300 * MIN,
                     ("A", "WO-B"): 120 * MIN, ("B", "WO-B"): 450 * MIN}


# -- SQLite only from here ---------------------------------------------------------------

sqlite_only = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)


async def audit_actions(api: Any, prefix: str) -> list[tuple[str, str, dict[str, Any]]]:
    async with api.app.state.db.sessions() as s:
        rows = (await s.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.detail)
                                .where(AuditEntry.action.like(f"{prefix}%"))
                                .order_by(AuditEntry.id))).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


@pytest.fixture
async def full_day(api: Any, cloud_db_url: str) -> Any:
    """SQLite only: the scripted day with every record (the late ones in seq order).
    ``full_day.m1``, ``full_day.calendar``: the machine's and its calendar's ids."""
    plant = await make_day_plant(api)
    first, late = script_records()
    await ingest(api, sorted(first + late, key=lambda r: r["seq"]))
    api.m1, api.calendar = plant["m1"], plant["calendar"]
    return api


async def idle_from_21_45(api: Any) -> None:
    """A late record: the machine went idle at 21:45 already (not 21:50)."""
    await ingest(api, [{"seq": 33, "ts": at("21:45"), "device": "cnc-03", "kind": "state",
                        "body": {"state": "idle", "prev": "running", "code": 0}}])


async def put_oee_settings(api: Any, **settings: Any) -> None:
    res = await api.put("/api/v1/settings/oee", json=settings, headers=api.admin)
    assert res.status_code == 200, res.text


@sqlite_only
async def test_board_shows_each_machine_state_at_pinned_times(full_day):
    from cloud.oee import current_states

    api, m1 = full_day, full_day.m1
    async with api.app.state.db.sessions() as s:
        setup = (await current_states(s, at("12:10")))[m1]
        offline = (await current_states(s, at("15:10")))[m1]
        alarm = (await current_states(s, at("08:10")))[m1]
        idle = (await current_states(s, at("21:55")))[m1]
    assert (setup["state"], setup["device_state"], setup["since_ts"], setup["online"]) == \
        ("setup", "setup", at("12:00"), True)
    assert setup["dispatch"] == {"work_order": "WO-B", "step": 10, "operation": "mold",
                                 "customer": "Globex", "good": 1640, "quantity": 5000,
                                 "since_ts": at("12:00")}
    assert (offline["state"], offline["since_ts"], offline["online"]) == \
        ("offline", at("15:00"), False)
    assert (alarm["state"], alarm["device_state"], alarm["code"]) == ("down", "alarm", 1001)
    assert alarm["dispatch"]["work_order"] == "WO-A"
    assert (idle["state"], idle["since_ts"]) == ("idle", at("21:50"))
    res = await api.get("/api/v1/machines/states", headers=api.viewer)
    assert res.status_code == 200, res.text
    assert [(r["machine_id"], r["state"]) for r in res.json()["items"]] == [(m1, "idle")]


@sqlite_only
async def test_stop_reasons_only_at_a_stop_start_by_planners_and_admins_audited(full_day):
    api, m1 = full_day, full_day.m1
    url = f"/api/v1/machines/{m1}/stops/{{}}/reason"
    res = await api.put(url.format(at("08:10")), json={"reason": "tool change"})
    assert res.status_code == 422 and res.json()["field"] == "start_ts", res.text
    assert str(at("08:00")) in res.json()["detail"]          # says where the stop began
    res = await api.put(url.format(at("08:00")), json={"reason": " "})
    assert (res.status_code, res.json()["field"]) == (422, "reason")
    res = await api.put(f"/api/v1/machines/9999/stops/{at('08:00')}/reason",
                        json={"reason": "x"})
    assert res.status_code == 404
    res = await api.put(url.format(at("08:00")), json={"reason": "x"}, headers=api.viewer)
    assert (res.status_code, res.json()["error"]) == (403, "forbidden")
    res = await api.put(url.format(at("12:00")), json={"reason": "changeover WO-A -> WO-B"},
                        headers=api.admin)
    assert res.status_code == 200, res.text
    assert await audit_actions(api, "stop.") == [
        ("admin", "stop.reason", {"start_ts": at("12:00"), "reason": "changeover WO-A -> WO-B",
                                  "note": None, "previous": None, "state": "setup"})]
    [day] = await report(api, "machine")
    assert day["losses"]["downtime_by_reason"]["changeover WO-A -> WO-B"] == 40 * MIN


@sqlite_only
async def test_a_stop_reason_stays_with_its_stop_when_a_late_record_moves_its_start(full_day):
    """A late record shows the last stop began at 21:45, not 21:50: its reason stays."""
    api, m1 = full_day, full_day.m1
    url = f"/api/v1/machines/{m1}/stops/{{}}/reason"
    res = await api.put(url.format(at("21:50")), json={"reason": "no material"})
    assert res.status_code == 200, res.text
    await idle_from_21_45(api)
    res = await api.get(f"/api/v1/machines/{m1}/stops",
                        params={"start": at("21:00"), "end": DAY_END})
    [last] = res.json()["items"]
    assert (last["start_ts"], last["end_ts"], last["reason"]) == (at("21:45"), None,
                                                                  "no material")
    [day] = await report(api, "machine")
    assert day["losses"]["downtime_by_reason"]["no material"] == 15 * MIN


@sqlite_only
async def test_micro_stop_threshold_setting_makes_short_stops_downtime(full_day):
    """A 30 s threshold makes the 60 s and 90 s stops downtime (the day with the late
    21:45 idle record)."""
    api = full_day
    await idle_from_21_45(api)
    assert (await api.get("/api/v1/settings/oee", headers=api.viewer)).json() == \
        {"micro_stop_s": 120, "state_map": {}}
    res = await api.put("/api/v1/settings/oee", json={"micro_stop_s": 30})
    assert res.status_code == 403                              # planners may not
    for bad, field in (({"micro_stop_s": -1}, "oee.micro_stop_s"),
                       ({"state_map": {"auto": "flying"}}, "oee.state_map.auto"),
                       ({"micro_stop": 1}, "oee.micro_stop")):
        res = await api.put("/api/v1/settings/oee", json=bad, headers=api.admin)
        assert (res.status_code, res.json()["field"]) == (422, field), res.text
    res = await api.put("/api/v1/settings/oee", json={"micro_stop_s": 30}, headers=api.admin)
    assert res.status_code == 200 and res.json()["micro_stop_s"] == 30, res.text
    # downtime 120 + 5 (21:45) + micro-stops 1 + 1.5 + 1 + 0.5 = 129; run 900 - 129 = 771
    [day] = await report(api, "machine")
    check(day, planned=900, run=771, down=129, micro=0, ideal=640, good=2070, scrap=60,
          unrated=10)
    assert day["losses"]["downtime_by_state"]["idle"] == (15 + 5 + 1 + 1.5 + 1 + 0.5) * MIN


@sqlite_only
async def test_state_map_setting_counts_setup_as_running(full_day):
    """With the 30 s threshold and the late 21:45 record: run 771 min, and the 40-minute
    changeover (setup) counts as run once setup maps to running."""
    from cloud.oee import current_states

    api, m1 = full_day, full_day.m1
    await idle_from_21_45(api)
    await put_oee_settings(api, micro_stop_s=30)
    res = await api.put("/api/v1/settings/oee", json={"state_map": {"setup": "running"}},
                        headers=api.admin)
    assert res.status_code == 200, res.text
    async with api.app.state.db.sessions() as s:
        assert (await current_states(s, at("12:10")))[m1]["state"] == "running"
    [day] = await report(api, "machine")
    assert day["run_ms"] == 811 * MIN                          # the changeover counts as run
    res = await api.get("/api/v1/oee/trend", params={"start": DAY_START, "end": DAY_END})
    assert [(r["day"], r["run_ms"]) for r in res.json()["items"]] == [("2025-03-12",
                                                                       811 * MIN)]


@sqlite_only
async def test_calendar_edits_are_checked_and_viewers_may_not_edit(full_day):
    api, m1, cal = full_day, full_day.m1, full_day.calendar
    listed = (await api.get("/api/v1/calendars", headers=api.viewer)).json()["items"]
    assert [(c["name"], c["machine_ids"]) for c in listed] == [("two-shift", [m1])]
    res = await api.delete(f"/api/v1/calendars/{cal}")
    assert res.status_code == 409 and "assigned" in res.json()["detail"]
    res = await api.post("/api/v1/calendars", json={"name": "two-shift", "timezone": "UTC",
                                                    "definition": CALENDAR})
    assert res.status_code == 409
    bad = {"shifts": [{**CALENDAR["shifts"][0]}, {**CALENDAR["shifts"][1],
                                                  "breaks": [["10:00", "10:15"]]}]}
    res = await api.put(f"/api/v1/calendars/{cal}", json={
        "name": "two-shift", "timezone": "Asia/Shanghai", "definition": bad})
    assert (res.status_code, res.json()["field"]) == (422, "shifts[1].breaks[0]"), res.text
    assert "break outside the shift" in res.json()["detail"]
    for method, path, body in (("POST", "/api/v1/calendars", {"name": "x"}),
                               ("PUT", f"/api/v1/machines/{m1}/calendar", {"calendar_id": None}),
                               ("DELETE", f"/api/v1/calendars/{cal}", None)):
        res = await api.request(method, path, json=body, headers=api.viewer)
        assert res.status_code == 403, (method, path)


@sqlite_only
async def test_planned_time_follows_the_machine_calendar_audited(full_day):
    """The calendar's planned stretches; none of its own and no "default": around the
    clock; a calendar named "default" for every unassigned machine; then it may go."""
    api, m1, cal = full_day, full_day.m1, full_day.calendar
    res = await api.get(f"/api/v1/calendars/{cal}/planned",
                        params={"start": DAY_START, "end": DAY_END})
    assert [(p["shift"], (p["end"] - p["start"]) // MIN) for p in res.json()["items"]] == \
        [("A", 240), ("A", 210), ("B", 240), ("B", 210)]
    # no calendar of its own and no "default": around the clock, in UTC days, from when
    # the machine was first heard from (05:30 local = 21:30 UTC on 03-11): 18.5 h
    res = await api.put(f"/api/v1/machines/{m1}/calendar", json={"calendar_id": None})
    assert res.json()["effective"] == "24/7"
    [day] = await report(api, "machine")
    assert day["planned_ms"] == (24 * 60 - 330) * MIN
    assert [(r["day"], r["planned_ms"] // MIN) for r in await report(api, "day")] == \
        [("2025-03-11", 150), ("2025-03-12", 16 * 60)]
    # a calendar named "default" is every unassigned machine's calendar
    res = await api.put(f"/api/v1/calendars/{cal}", json={
        "name": "default", "timezone": "Asia/Shanghai", "definition": CALENDAR})
    assert res.status_code == 200, res.text
    [day] = await report(api, "machine")
    assert day["planned_ms"] == 900 * MIN
    res = await api.delete(f"/api/v1/calendars/{cal}")
    assert res.status_code == 204
    assert [a for _, a, _ in await audit_actions(api, "calendar.")] == [
        "calendar.create", "calendar.update", "calendar.delete"]


@sqlite_only
async def test_dst_day_and_non_working_day(api, cloud_db_url):
    """A 24-hour shift in Europe/Berlin: 23 h on 2025-03-30, 25 h on 2025-10-26; the
    non-working date 2025-10-01 has no planned time, so its availability is undefined.
    The machine runs all the time and counts nothing: performance 0, OEE 0."""
    berlin = ZoneInfo("Europe/Berlin")
    m2 = await add_machine(api, "imm-07", "M2")
    res = await api.post("/api/v1/calendars", json={
        "name": "round the clock", "timezone": "Europe/Berlin", "definition": {
            "shifts": [{"name": "D", "start": "00:00", "end": "00:00"}],
            "non_working_dates": ["2025-10-01"]}})
    assert res.status_code == 201, res.text
    await api.put(f"/api/v1/machines/{m2}/calendar", json={"calendar_id": res.json()["id"]})
    await ingest(api, [{"seq": 1, "ts": at("00:00", "2025-03-01", berlin), "device": "imm-07",
                        "kind": "state", "body": {"state": "running", "prev": None,
                                                  "code": 0}}])

    async def one_day(day: str, next_day: str) -> dict[str, Any]:
        res = await api.get("/api/v1/oee", params={
            "start": at("00:00", day, berlin), "end": at("00:00", next_day, berlin),
            "machine_id": m2})
        [row] = res.json()["items"]
        return row

    spring = await one_day("2025-03-30", "2025-03-31")
    assert (spring["planned_ms"], spring["run_ms"]) == (23 * 60 * MIN, 23 * 60 * MIN)
    assert (spring["availability"], spring["performance"], spring["quality"],
            spring["oee"]) == (1.0, 0.0, None, 0.0)
    autumn = await one_day("2025-10-26", "2025-10-27")
    assert autumn["planned_ms"] == autumn["run_ms"] == 25 * 60 * MIN
    holiday = await one_day("2025-10-01", "2025-10-02")
    assert (holiday["machine_id"], holiday["planned_ms"], holiday["availability"],
            holiday["oee"]) == (m2, 0, None, None)
    # a machine never heard from has no planned time (no data is not downtime)
    m3 = await add_machine(api, "ghost", "M3")
    res = await api.get("/api/v1/oee", params={
        "start": at("00:00", "2025-03-30", berlin), "end": at("00:00", "2025-03-31", berlin)})
    assert [(r["machine_id"], r["planned_ms"], r["availability"])
            for r in res.json()["items"]] == [(m2, 23 * 60 * MIN, 1.0), (m3, 0, None)]
    res = await api.get("/api/v1/oee", params={"start": 5, "end": 5})
    assert (res.status_code, res.json()["field"]) == (422, "end")
    res = await api.get("/api/v1/oee", params={"start": 0, "end": 5, "group_by": "week"})
    assert (res.status_code, res.json()["field"]) == (422, "group_by")
    res = await api.get("/api/v1/oee", params={"start": 0, "end": 5, "machine_id": 999})
    assert res.status_code == 404


def imm_state(seq: int, hhmm: str, name: str) -> dict[str, Any]:
    return {"seq": seq, "ts": at(hhmm), "device": "imm-07", "kind": "state",
            "body": {"state": name, "prev": None, "code": 0}}


def imm_shots(seq: int, hhmm: str, before: int, n: int) -> dict[str, Any]:
    return {"seq": seq, "ts": at(hhmm), "device": "imm-07", "kind": "count",
            "body": {"tag": "shots", "counts": "good", "delta": n, "raw_before": before,
                     "raw_after": before + n, "reset": False}}


@pytest.fixture
async def imm7(api: Any, cloud_db_url: str) -> Any:
    """SQLite only. IMM 7 (gw-test/imm-07) molds CAP with a 4-cavity mold (WO-C,
    dispatched from 05:00): running 06:00-09:00, 400 pieces at 07:00. ``imm7.m``: its id."""
    m = await add_machine(api, "imm-07", "IMM 7")
    await put_product(api, "CAP", name="cap")
    await add_routing(api, "CAP", [{"step": 10, "name": "mold", "work_center": "molding",
                                    "ideal_cycle_ms": 20_000, "cavities": 4}])
    await add_work_order(api, "WO-C", "CAP", 10_000)
    [op] = await release(api, "WO-C")
    await start_dispatch(api, m, op, at("05:00"))
    await ingest(api, [imm_state(1, "06:00", "running"), imm_shots(2, "07:00", 0, 400),
                       imm_state(3, "09:00", "idle")])
    api.m = m
    return api


@pytest.fixture
async def counters(imm7: Any) -> Any:
    """Two counters of IMM 7 counting since 00:00: "filter" (run hours, 2 h) and "mold
    service" (cycles, 150). ``counters.hours_id``, ``counters.cycles_id``."""
    api = imm7
    ids = []
    for body in ({"name": "filter", "metric": "run_hours", "threshold_hours": 2},
                 {"name": "mold service", "metric": "cycles", "threshold": 150}):
        res = await api.post("/api/v1/maintenance-counters",
                             json={"machine_id": api.m, "since_ts": at("00:00"), **body})
        assert res.status_code == 201, res.text
        ids.append(res.json()["id"])
    api.hours_id, api.cycles_id = ids
    return api


async def maintenance_anomalies(api: Any) -> list[tuple[int, int, str | None, int | None]]:
    from cloud.core.models import anomalies

    async with api.app.state.db.sessions() as s:
        return [tuple(r) for r in (await s.execute(
            select(anomalies.c.id, anomalies.c.ts, anomalies.c.code,
                   anomalies.c.machine_id).where(anomalies.c.kind == "maintenance")
            .order_by(anomalies.c.id))).all()]


async def due_id(api: Any, counter: int) -> int | None:
    from cloud.core.models import maintenance_counters

    async with api.app.state.db.sessions() as s:
        return (await s.execute(select(maintenance_counters.c.due_anomaly_id).where(
            maintenance_counters.c.id == counter))).scalar()


async def both_due(api: Any) -> None:
    """The job at 11:00 (filter due since 08:00), 200 more shots at 08:00 (150 cycles:
    the mold service due then), the job again; each job run twice."""
    from cloud.oee import check_maintenance

    db = api.app.state.db
    for _ in range(2):
        await check_maintenance(db, at("11:00"))
    await ingest(api, [imm_shots(4, "08:00", 400, 200)])
    for _ in range(2):
        await check_maintenance(db, at("11:00"))


@sqlite_only
async def test_maintenance_counters_are_checked_and_show_their_value(imm7):
    """Run hours: running 06:00-09:00 (3 h) against 2 h -> due. Cycles: a 4-cavity mold,
    400 pieces = 100 cycles against 150 -> not due."""
    from cloud.oee import check_maintenance

    api, m = imm7, imm7.m
    assert any(j.name == "maintenance" and j.fn is check_maintenance
               for j in api.app.state.jobs)
    res = await api.post("/api/v1/maintenance-counters", headers=api.viewer, json={
        "machine_id": m, "name": "filter", "metric": "run_hours", "threshold": 1})
    assert res.status_code == 403
    res = await api.post("/api/v1/maintenance-counters", json={
        "machine_id": m, "name": "filter", "metric": "run_hours", "threshold": 0})
    assert (res.status_code, res.json()["field"]) == (422, "threshold")
    res = await api.post("/api/v1/maintenance-counters", json={
        "machine_id": m, "name": "filter", "metric": "run_hours", "threshold_hours": 2,
        "since_ts": at("00:00")})
    assert res.status_code == 201, res.text
    assert (res.json()["value"], res.json()["percent"], res.json()["due"]) == \
        (3 * 60 * MIN, 150.0, True)
    res = await api.post("/api/v1/maintenance-counters", json={
        "machine_id": m, "name": "mold service", "metric": "cycles", "threshold": 150,
        "since_ts": at("00:00")})
    assert (res.json()["value"], res.json()["percent"], res.json()["due"]) == \
        (100, 66.67, False)
    res = await api.post("/api/v1/maintenance-counters", json={
        "machine_id": m, "name": "filter", "metric": "cycles", "threshold": 5})
    assert res.status_code == 409


@sqlite_only
async def test_a_due_counter_raises_one_anomaly_at_the_moment_it_became_due(counters):
    from cloud.oee import check_maintenance

    api, m, hours_id, cycles_id = counters, counters.m, counters.hours_id, counters.cycles_id
    db = api.app.state.db
    # two runs of the job: one anomaly, at the moment the 2nd run hour was reached
    for _ in range(2):
        await check_maintenance(db, at("11:00"))
    [(first_id, ts, code, machine)] = await maintenance_anomalies(api)
    assert (ts, code, machine) == (at("08:00"), "filter", m)
    assert await due_id(api, hours_id) == first_id and await due_id(api, cycles_id) is None
    # 200 more shots at 08:00 -> 150 cycles (4 cavities): due with that record
    await ingest(api, [imm_shots(4, "08:00", 400, 200)])
    for _ in range(2):
        await check_maintenance(db, at("11:00"))
    found = await maintenance_anomalies(api)
    assert [(a[1], a[2]) for a in found] == [(at("08:00"), "filter"),
                                             (at("08:00"), "mold service")]


@sqlite_only
async def test_a_reset_counts_from_then_and_every_counter_change_is_audited(counters):
    """Both counters due (``both_due``). A reset over the API (now = wall clock) is
    audited, clears the due anomaly and counts from now; one pinned at 08:30 counts 0.5 h
    until 09:00, and from 10:00 the 2 h are reached at 11:30: a new anomaly."""
    from cloud.oee import check_maintenance
    from cloud.oee.maintenance import reset_counter

    api, m, hours_id, cycles_id = counters, counters.m, counters.hours_id, counters.cycles_id
    db = api.app.state.db
    await both_due(api)
    first_id = (await maintenance_anomalies(api))[0][0]
    res = await api.post(f"/api/v1/maintenance-counters/{hours_id}/reset", headers=api.viewer)
    assert res.status_code == 403
    res = await api.post(f"/api/v1/maintenance-counters/{hours_id}/reset")
    assert res.status_code == 200, res.text
    assert (res.json()["value"], res.json()["due"], res.json()["due_anomaly_id"],
            res.json()["last_reset_by"]) == (0, False, None, "pat")
    [(actor, action, detail)] = await audit_actions(api, "maintenance.reset")
    assert (actor, action, detail["value"], detail["due_anomaly_id"],
            detail["previous_since_ts"]) == ("pat", "maintenance.reset", 3 * 60 * MIN,
                                             first_id, at("00:00"))
    async with db.sessions() as s, s.begin():
        await reset_counter(s, "pat", hours_id, at("08:30"))
    await check_maintenance(db, at("11:00"))
    assert len(await maintenance_anomalies(api)) == 2
    await ingest(api, [imm_state(5, "10:00", "running")])
    await check_maintenance(db, at("12:00"))
    await check_maintenance(db, at("12:00"))
    found = await maintenance_anomalies(api)
    assert [(a[1], a[2]) for a in found][2:] == [(at("11:30"), "filter")]
    assert await due_id(api, hours_id) == found[2][0]

    listed = (await api.get("/api/v1/maintenance-counters",
                            params={"machine_id": m}, headers=api.viewer)).json()["items"]
    assert [(c["name"], c["metric"]) for c in listed] == [("filter", "run_hours"),
                                                          ("mold service", "cycles")]
    res = await api.patch(f"/api/v1/maintenance-counters/{cycles_id}", json={"threshold": 300})
    assert (res.json()["threshold"], res.json()["due"]) == (300, False)
    res = await api.delete(f"/api/v1/maintenance-counters/{cycles_id}")
    assert res.status_code == 204
    assert [a for _, a, _ in await audit_actions(api, "maintenance.")] == [
        "maintenance.create", "maintenance.create", "maintenance.reset", "maintenance.reset",
        "maintenance.update", "maintenance.delete"]
