"""The stock ledger through the REST API, on SQLite and PostgreSQL (Alembic-migrated):
receipts, issues, scrap, adjustments, counts; the moves list; balances == ledger sum after
every step; safety stock (computed and manual), days of cover, shortages; bad input.

The cloud reads its clock through ``cloud.core.clock.now_ms`` (the ts of API
moves and the end of the usage windows); the tests pin it, so nothing depends on today's
date. Backflush moves carry their count record's ts, so usage is built from backdated
count records on a dispatched order.

Plant: machine gw-test/cnc-03, product P, one operation; order WO-1 (1000 pieces)
dispatched from NOW-40d. BOM: RESIN 0.5 kg per piece (scrap backflushes too), INSERT 2 per
good piece. Materials: RESIN (kg, lead 4 d), INSERT (pcs, lead 10 d, manual safety 150),
BOX (pcs, lead 30 d, only issued by hand), IDLE (pcs, lead 5 d, never used).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from sqlalchemy import func, select

from cloud import inventory
from cloud.core import clock as cloud_clock
from cloud.core.jobs import run_jobs_once
from cloud.core.models import AuditEntry, stock_moves
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
DAY = 86_400_000
NOW = 1_760_000_000_000  # 2025-10-09, a fixed "now"
U = 1_000_000


class Clock:
    t = NOW


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(cloud_clock, "now_ms", lambda: c.t)   # the cloud's one clock
    return c


async def ledger_ok(api: Any) -> dict[str, int]:
    """Assert ledger sum == balances; the balances by material code."""
    async with api.app.state.db.sessions() as s:
        assert await inventory.ledger_mismatches(s) == []
    out = {}
    for code in ("RESIN", "INSERT", "BOX", "IDLE"):
        res = await api.get(f"/api/v1/materials/{code}/stock")
        assert res.status_code == 200, res.text
        out[code] = res.json()["balance_u"]
    return out


async def post(api: Any, path: str, **body: Any) -> Any:
    return await api.post(f"/api/v1/stock/{path}", json=body)


@pytest.fixture
async def plant(api: Any, clock: Clock) -> Any:
    machine = await add_machine(api, "cnc-03", "CNC 3")
    for code, unit, lead, safety in (("RESIN", "kg", 4, None), ("INSERT", "pcs", 10, 150),
                                     ("BOX", "pcs", 30, None), ("IDLE", "pcs", 5, None)):
        await put_material(api, code, name=code.lower(), unit=unit, lead_time_days=lead,
                           safety_stock=safety)
    await put_product(api, "P", name="part")
    await add_bom(api, "P", [{"material": "RESIN", "qty_per_unit": "0.5", "backflush_scrap": True},
                             {"material": "INSERT", "qty_per_unit": 2}])
    await add_routing(api, "P", [{"step": 10, "name": "mold", "machine_id": machine}])
    await add_work_order(api, "WO-1", "P", 1000)
    [op] = await release(api, "WO-1")
    await start_dispatch(api, machine, op, NOW - 40 * DAY)
    api.clock = clock
    return api


# -- the ledger's history, step by step (each step's test runs the steps before it) ------

RECEIPTS = (("receipts", {"material": "RESIN", "qty": "200"}, 200 * U),
            ("receipts", {"material": "INSERT", "qty": 500}, 500 * U),
            ("receipts", {"material": "BOX", "qty": 20.0}, 20 * U))
COUNTS = (("INSERT", "115", -5 * U), ("IDLE", 7, 7 * U), ("BOX", "8.000", 0))


async def booked(api: Any, path: str, **body: Any) -> Any:
    res = await post(api, path, **body)
    assert res.status_code == 201, res.text
    return res


async def book_receipts(api: Any) -> list[Any]:
    """Receipts booked 40 days ago: a decimal string, an integer and a float quantity."""
    api.clock.t = NOW - 40 * DAY
    return [await booked(api, path, **body) for path, body, _ in RECEIPTS]


async def produce(api: Any) -> None:
    """100 good at -35 d (outside the 30-day window), 60 good at -20 d, 30 good + 10 scrap
    at -3 d (inside the 7-day window); the BOM backflushes RESIN 0.5 kg a piece, scrap
    included, and 2 INSERT a good piece."""
    await ingest(api, [
        count_record(1, "c_good", 0, 100, ts=NOW - 35 * DAY),
        count_record(2, "c_good", 100, 160, ts=NOW - 20 * DAY),
        count_record(3, "c_good", 160, 190, ts=NOW - 3 * DAY),
        count_record(4, "c_scrap", 0, 10, counts="scrap", ts=NOW - 3 * DAY + 1)])


async def book_issue_scrap_adjustments(api: Any) -> list[Any]:
    """An issue of 12 BOX to the order 10 days ago; yesterday 5 kg RESIN scrapped and
    adjusted by -2.5 and +1 kg."""
    api.clock.t = NOW - 10 * DAY
    moves = [await booked(api, "issues", material="BOX", qty="12", work_order="WO-1",
                          note="packing")]
    api.clock.t = NOW - DAY
    moves.append(await booked(api, "scrap", material="RESIN", qty="5", note="wet"))
    moves.append(await booked(api, "adjustments", material="RESIN", qty="-2.5"))
    moves.append(await booked(api, "adjustments", material="RESIN", qty=1))
    return moves


async def book_counts(api: Any) -> list[Any]:
    """Counts: INSERT 115, IDLE 7 (no balance row yet), BOX 8 (as booked), then IDLE 0."""
    moves = [await booked(api, "counts", material=code, counted=counted)
             for code, counted, _ in COUNTS]
    moves.append(await booked(api, "counts", material="IDLE", counted=0))
    return moves


@pytest.fixture
async def stocked(plant: Any) -> Any:
    """The whole history booked; the clock back at NOW."""
    await book_receipts(plant)
    await produce(plant)
    await book_issue_scrap_adjustments(plant)
    await book_counts(plant)
    plant.clock.t = NOW
    return plant


async def test_receipts_book_decimal_integer_and_float_quantities(plant):
    api = plant
    assert await ledger_ok(api) == {"RESIN": 0, "INSERT": 0, "BOX": 0, "IDLE": 0}
    for res, (_, _, bal) in zip(await book_receipts(api), RECEIPTS, strict=True):
        assert res.status_code == 201, res.text
        doc = res.json()
        assert (doc["kind"], doc["qty_u"], doc["balance_u"]) == ("receipt", bal, bal)
    assert await ledger_ok(api) == {"RESIN": 200 * U, "INSERT": 500 * U, "BOX": 20 * U,
                                    "IDLE": 0}


async def test_production_backflushes_the_bom_per_piece(plant):
    """RESIN 0.5 kg a piece (scrap too): 50 + 30 + 20 kg; INSERT 2 a good piece: 380."""
    api = plant
    await book_receipts(api)
    await produce(api)
    assert await ledger_ok(api) == {"RESIN": (200 - 50 - 30 - 20) * U,
                                    "INSERT": (500 - 380) * U, "BOX": 20 * U, "IDLE": 0}


async def test_issue_scrap_and_adjustments_move_the_balance(plant):
    api = plant
    await book_receipts(api)
    await produce(api)
    issue, scrap, minus, plus = await book_issue_scrap_adjustments(api)
    assert issue.status_code == 201, issue.text
    assert (issue.json()["qty_u"], issue.json()["work_order"]) == (-12 * U, "WO-1")
    assert scrap.status_code == 201 and scrap.json()["qty_u"] == -5 * U, scrap.text
    assert minus.status_code == 201 and minus.json()["qty_u"] == -2_500_000, minus.text
    assert plus.status_code == 201 and plus.json()["qty_u"] == U, plus.text
    assert await ledger_ok(api) == {"RESIN": 93_500_000, "INSERT": 120 * U, "BOX": 8 * U,
                                    "IDLE": 0}


async def test_counts_book_the_difference(plant):
    """INSERT 120 -> 115, IDLE (no balance row yet) 0 -> 7, BOX as booked: a zero move
    that documents the count; IDLE back to 0."""
    api = plant
    await book_receipts(api)
    await produce(api)
    await book_issue_scrap_adjustments(api)
    *counted_moves, res = await book_counts(api)
    for move, (_code, counted, diff) in zip(counted_moves, COUNTS, strict=True):
        assert move.status_code == 201, move.text
        doc = move.json()
        assert (doc["kind"], doc["qty_u"]) == ("count", diff)
        assert doc["counted_u"] == doc["balance_u"] == round(float(counted) * U)
    assert res.json()["qty_u"] == -7 * U
    bal = await ledger_ok(api)
    assert bal == {"RESIN": 93_500_000, "INSERT": 115 * U, "BOX": 8 * U, "IDLE": 0}


async def test_usage_safety_stock_and_days_of_cover(stocked):
    """Read at NOW: 30-day window (NOW-30d, NOW], 7-day window (NOW-7d, NOW]."""
    api = stocked
    bal = await ledger_ok(api)
    docs = {c: (await api.get(f"/api/v1/materials/{c}/stock")).json()
            for c in ("RESIN", "INSERT", "BOX", "IDLE")}
    # RESIN: used 30 + 20 (backflush) + 5 (scrap) kg in 30 d; 20 + 5 in 7 d; adjustments
    # and the 35-day-old backflush are not usage
    used30 = {"RESIN": 55 * U, "INSERT": 180 * U, "BOX": 12 * U, "IDLE": 0}
    used7 = {"RESIN": 25 * U, "INSERT": 60 * U, "BOX": 0, "IDLE": 0}
    lead = {"RESIN": 4, "INSERT": 10, "BOX": 30, "IDLE": 5}
    for code, doc in docs.items():
        daily30 = Fraction(used30[code], 30)
        daily7 = Fraction(used7[code], 7)
        assert doc["balance_u"] == bal[code]
        assert doc["avg_daily_usage_30d_u"] == round(daily30), code
        assert doc["avg_daily_usage_7d_u"] == round(daily7), code
        assert doc["lead_time_days"] == lead[code]
        if code == "INSERT":
            assert (doc["safety_stock_u"], doc["safety_stock_source"]) == (150 * U, "manual")
        else:
            assert doc["safety_stock_source"] == "computed"
            assert doc["safety_stock_u"] == round(daily30 * lead[code] * Fraction(3, 2)), code
        cover = None if daily7 == 0 else round(float(bal[code] / daily7), 2)
        assert doc["days_of_cover"] == cover, code
    # by hand: RESIN 55/30*4*1.5 = 11 kg (93.5 kg: fine, 26.18 days at 25/7 kg a day);
    # BOX 12/30*30*1.5 = 18 > 8 (short, no cover figure: nothing used in 7 d);
    # INSERT manual 150 > 115 (short; 115 / (60/7) = 13.42 days); IDLE safety 0
    assert docs["RESIN"]["safety_stock_u"] == 11 * U and docs["RESIN"]["days_of_cover"] == 26.18
    assert docs["BOX"]["safety_stock_u"] == 18 * U
    assert docs["INSERT"]["days_of_cover"] == 13.42


async def test_shortages_are_below_safety_stock_lowest_cover_first(stocked):
    api = stocked
    docs = {c: (await api.get(f"/api/v1/materials/{c}/stock")).json()
            for c in ("RESIN", "INSERT", "BOX", "IDLE")}
    assert [d["below_safety_stock"] for d in docs.values()] == [False, True, True, False]
    res = await api.get("/api/v1/stock/shortages", headers=api.viewer)
    assert res.status_code == 200, res.text
    assert [d["material"] for d in res.json()["items"]] == ["INSERT", "BOX"]  # lowest cover first


async def test_a_manual_safety_stock_overrides_the_computed_one_until_cleared(stocked):
    api = stocked
    res = await api.put("/api/v1/materials/RESIN", json={
        "name": "resin", "unit": "kg", "lead_time_days": 4, "safety_stock": "100"})
    assert res.status_code == 200, res.text
    doc = (await api.get("/api/v1/materials/RESIN/stock")).json()
    assert (doc["safety_stock_u"], doc["safety_stock_source"]) == (100 * U, "manual")
    assert {d["material"] for d in (await api.get("/api/v1/stock/shortages")).json()["items"]} \
        == {"INSERT", "BOX", "RESIN"}
    res = await api.put("/api/v1/materials/RESIN", json={
        "name": "resin", "unit": "kg", "lead_time_days": 4, "safety_stock": None})
    assert res.status_code == 200, res.text
    assert (await api.get("/api/v1/materials/RESIN/stock")).json()["safety_stock_u"] == 11 * U


async def test_usage_windows_follow_the_clock(stocked):
    """400 days later nothing was used: only the manual safety stock signals."""
    api, clock = stocked, stocked.clock
    clock.t = NOW + 400 * DAY
    items = (await api.get("/api/v1/stock/shortages")).json()["items"]
    assert [(d["material"], d["safety_stock_u"], d["days_of_cover"]) for d in items] \
        == [("INSERT", 150 * U, None)]
    assert (await api.get("/api/v1/materials/RESIN/stock")).json()["safety_stock_u"] == 0
    await ledger_ok(api)


async def test_moves_list_paginated_and_filtered(plant):
    api, clock = plant, plant.clock
    clock.t = NOW - 5 * DAY
    for i in range(7):
        assert (await post(api, "receipts", material="RESIN", qty=i + 1)).status_code == 201
    await post(api, "issues", material="RESIN", qty="2", work_order="WO-1")
    await post(api, "receipts", material="BOX", qty="3", work_order="WO-1")
    await post(api, "scrap", material="BOX", qty="1")
    await ingest(api, [count_record(1, "c_good", 0, 4, ts=NOW - 4 * DAY)])  # 2 backflush moves
    await ledger_ok(api)

    everything = (await api.get("/api/v1/stock/moves", params={"limit": 1000})).json()
    assert everything["next_before_id"] is None
    all_items = everything["items"]
    assert len(all_items) == 12
    assert [m["id"] for m in all_items] == sorted((m["id"] for m in all_items), reverse=True)

    async def pages(**params: Any) -> list[dict[str, Any]]:
        """Every page of 3 (12 moves: at most 4 pages, or the paging does not end)."""
        out: list[dict[str, Any]] = []
        before = None
        for _ in range(5):
            q = {**params, "limit": 3, **({"before_id": before} if before else {})}
            res = await api.get("/api/v1/stock/moves", params=q, headers=api.viewer)
            assert res.status_code == 200, res.text
            page = res.json()
            assert len(page["items"]) <= 3
            out += page["items"]
            before = page["next_before_id"]
            if before is None:
                return out
        raise AssertionError(f"more than 5 pages of 3 for {params}: {out}")

    assert await pages() == all_items
    for params, pred in (
            ({"material": "RESIN"}, lambda m: m["material"] == "RESIN"),
            ({"kind": "receipt"}, lambda m: m["kind"] == "receipt"),
            ({"kind": "backflush"}, lambda m: m["kind"] == "backflush"),
            ({"work_order": "WO-1"}, lambda m: m["work_order"] == "WO-1"),
            ({"material": "BOX", "work_order": "WO-1"},
             lambda m: m["material"] == "BOX" and m["work_order"] == "WO-1")):
        want = [m for m in all_items if pred(m)]
        assert want, params
        assert await pages(**params) == want, params
    wo = await pages(work_order="WO-1")
    assert sorted((m["material"], m["kind"]) for m in wo) == [
        ("BOX", "receipt"), ("INSERT", "backflush"), ("RESIN", "backflush"), ("RESIN", "issue")]
    bf = [m for m in wo if m["kind"] == "backflush"]
    assert {(m["gateway_id"], m["seq"], m["ts"], m["user"]) for m in bf} == {
        ("gw-test", 1, NOW - 4 * DAY, None)}
    issue = next(m for m in wo if m["kind"] == "issue")
    assert (issue["user"], issue["ts"], issue["qty_u"]) == ("pat", NOW - 5 * DAY, -2 * U)
    assert (await pages(material="NOPE")) == []
    res = await api.get("/api/v1/stock/moves", params={"limit": 0})
    assert res.status_code == 422 and "limit" in res.text


BAD = [
    # (path, body, status, words the detail must name)
    ("receipts", {"material": "NOPE", "qty": 1}, 404, ["NOPE"]),
    ("issues", {"material": "NOPE", "qty": 1}, 404, ["NOPE"]),
    ("counts", {"material": "NOPE", "counted": 1}, 404, ["NOPE"]),
    ("receipts", {"material": "RESIN", "qty": 1, "work_order": "WO-404"}, 422, ["WO-404"]),
    ("receipts", {"material": "RESIN", "qty": 0}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": "0.000"}, 422, ["qty"]),
    ("issues", {"material": "RESIN", "qty": -1}, 422, ["qty"]),
    ("scrap", {"material": "RESIN", "qty": "-0.5"}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": "abc"}, 422, ["qty", "abc"]),
    ("receipts", {"material": "RESIN", "qty": "1,5"}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": "1.0000001"}, 422, ["qty", "6 decimals"]),
    ("receipts", {"material": "RESIN", "qty": "NaN"}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": "Infinity"}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": "1e30"}, 422, ["qty"]),
    ("receipts", {"material": "RESIN", "qty": ""}, 422, ["qty"]),
    ("receipts", {"material": "RESIN"}, 422, ["qty"]),
    ("receipts", {"qty": 1}, 422, ["material"]),
    ("receipts", {"material": "RESIN", "qty": [1]}, 422, ["qty"]),
    ("adjustments", {"material": "RESIN", "qty": 0}, 422, ["qty"]),
    ("adjustments", {"material": "RESIN", "qty": "-0"}, 422, ["qty"]),
    ("adjustments", {"material": "RESIN", "qty": "--1"}, 422, ["qty"]),
    ("adjustments", {"material": "RESIN", "qty": "-x"}, 422, ["qty"]),
    ("adjustments", {"material": "RESIN", "qty": "-1e30"}, 422, ["qty"]),
    ("counts", {"material": "RESIN", "counted": -1}, 422, ["counted"]),
    ("counts", {"material": "RESIN", "counted": "lots"}, 422, ["counted"]),
    ("counts", {"material": "RESIN", "counted": "1e30"}, 422, ["counted"]),
    ("counts", {"material": "RESIN"}, 422, ["counted"]),
]


async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(plant):
    api = plant
    assert (await post(api, "receipts", material="RESIN", qty=10)).status_code == 201
    before = await ledger_ok(api)
    db = api.app.state.db

    async def counts() -> tuple[int, int]:
        async with db.sessions() as s:
            return ((await s.execute(select(func.count()).select_from(stock_moves))).scalar_one(),
                    (await s.execute(select(func.count()).select_from(AuditEntry))).scalar_one())

    n = await counts()
    wrong = []
    for path, body, status, words in BAD:
        res = await post(api, path, **body)
        detail = str(res.json()["detail"]) if res.status_code < 500 else res.text
        if res.status_code != status or not all(w in detail for w in words):
            wrong.append((path, body, res.status_code, detail))
    assert wrong == []
    res = await post(api, "counts", material="RESIN", counted="-3")
    assert res.json() == {"error": "invalid_stock_move", "field": "counted",
                          "detail": "counted '-3' is negative"}
    res = await post(api, "receipts", material="RESIN", qty="1e30")
    assert (res.status_code, res.json()["field"]) == (422, "qty")
    assert await counts() == n
    assert await ledger_ok(api) == before
    # roles: a viewer reads but may not book, a gateway token neither
    res = await api.post("/api/v1/stock/receipts", headers=api.viewer,
                         json={"material": "RESIN", "qty": 1})
    assert res.status_code == 403
    gw = {"Authorization": f"Bearer {api.token}"}
    assert (await api.post("/api/v1/stock/receipts", headers=gw,
                           json={"material": "RESIN", "qty": 1})).status_code == 403
    assert (await api.get("/api/v1/stock/shortages", headers=gw)).status_code == 403
    assert (await api.get("/api/v1/materials/RESIN/stock", headers=api.viewer)).status_code == 200
    assert (await api.get("/api/v1/materials/NOPE/stock")).status_code == 404
    assert await counts() == n


async def test_a_backflush_below_zero_is_booked_negative_and_raises_a_stock_anomaly(plant):
    """Nothing received: 30 good at -3 d backflush RESIN 15 kg and INSERT 60 anyway (the
    parts were made). The balance shows -15 kg (negative), days of cover 0 (never
    negative), the material is a shortage with a safety stock of 0, and the anomalies
    sweep raises its stock anomaly. A receipt puts it back: no longer a shortage."""
    api = plant
    await ingest(api, [count_record(1, "c_good", 0, 30, ts=NOW - 3 * DAY)])
    doc = (await api.get("/api/v1/materials/RESIN/stock")).json()
    assert (doc["balance_u"], doc["negative"], doc["days_of_cover"],
            doc["below_safety_stock"]) == (-15 * U, True, 0.0, True)
    assert [d["material"] for d in (await api.get("/api/v1/stock/shortages")).json()[
        "items"]] == ["INSERT", "RESIN"]
    await run_jobs_once(api.app, NOW)
    low = (await api.get("/api/v1/anomalies", params={"kind": "stock_low"})).json()["items"]
    assert sorted(a["material"] for a in low) == ["INSERT", "RESIN"]
    await booked(api, "receipts", material="RESIN", qty="100")
    doc = (await api.get("/api/v1/materials/RESIN/stock")).json()
    assert (doc["negative"], doc["below_safety_stock"]) == (False, False)
    assert doc["days_of_cover"] > 0
    await ledger_ok(api)
