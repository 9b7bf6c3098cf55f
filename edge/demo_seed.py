"""Seeding the demo: a plant that has been running for a week (``make demo``).

Everything goes through the real paths, so what the pages show is what a real plant
would show:

- master data and planner actions through the cloud's REST API (``Api``): machines with
  names and work centers, the ``default`` shift calendar (two shifts with breaks, Sunday
  off, in ``TIMEZONE``), the anomaly settings (``STOP_AFTER_S``), materials with
  receipts, products with BOMs and routings whose ideal cycles are the simulated
  machines' own (``Machine.ideal_cycle_s``), work orders in every state, dispatches,
  stop reasons, anomalies acknowledged and closed, orders closed (one short), a stock
  count;
- the week's machine records from the simulator's machine model run on a virtual clock
  (``protocols.sim.Machine.step``), polled every ``POLL_S`` virtual seconds and derived
  exactly as the gateway derives them (``edge.derive.DeviceDeriver``, the map's rules),
  each with its own timestamp; they are written into the gateway's own buffer
  (``buffer.Outbox``, the file the daemon opens) before the gateway starts, so the
  gateway sends them through its uplink and the cloud's ingest, then continues with the
  live records under higher seqs. Samples are thinned to one a ``SAMPLE_S`` per machine
  (values merged), like a gateway polling its parameters less often.

The machines at the end of the week are saved (``plant.pickle``) and the live plant
(``python -m edge.demo_seed plant``) continues them at real time: the counters go on from
where the history left them, so the gateway's stored baselines fit.

This module talks HTTP to the cloud only (no cloud imports: it belongs to
``plantsync[edge]``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import pickle
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from buffer.records import Record
from buffer.store import Cycle, Outbox
from edge.config import LoadedGateway, load_gateway
from edge.daemon import rules_for
from edge.derive import DeviceDeriver
from edge.simulate import machine_kind, sim_points
from protocols import TagReading
from protocols.sim import REASONS, Machine, SimulatedPlant, make_machine
from protocols.sim.calendar import ShiftSchedule

__all__ = ["CALENDAR", "TIMEZONE", "History", "plan_week", "seed_cloud", "serve_live"]

TIMEZONE = "Asia/Shanghai"
#: Two 12-hour shifts with breaks, Monday to Saturday (a shift belongs to the day it
#: starts: Saturday's night shift ends Sunday 08:00); Sunday is the day off.
CALENDAR: dict[str, Any] = {
    "shifts": [
        {"name": "白班 Day", "start": "08:00", "end": "20:00", "days": [1, 2, 3, 4, 5, 6],
         "breaks": [["12:00", "12:30"], ["17:30", "17:45"]]},
        {"name": "夜班 Night", "start": "20:00", "end": "08:00", "days": [1, 2, 3, 4, 5, 6],
         "breaks": [["00:00", "00:30"], ["04:30", "04:45"]]},
    ],
}
HISTORY_DAYS = 7
POLL_S = 60.0          # virtual seconds between the history's polls (counters, states)
PARAM_S = 120.0        # ... and between its parameter reads
TICK_S = 5.0           # the machine model's step inside a poll
SAMPLE_S = 600.0       # one sample record per machine at most this often
REASON_MIN_S = 300     # the planner names the reason of stops at least this long
STOP_AFTER_S = 2400     # a stop raises an anomaly after this long (a break is 30 min)
WORKERS = 3            # API calls in flight while working the week
H = 3600.0
DAY = 86400.0

#: device -> (name, work center)
MACHINES: dict[str, tuple[str, str]] = {
    "cnc-01": ("数控车床 CNC-01", "机加工 Machining"),
    "cnc-02": ("数控车床 CNC-02", "机加工 Machining"),
    "imm-01": ("注塑机 IMM-01", "注塑 Molding"),
    "imm-02": ("注塑机 IMM-02", "注塑 Molding"),
}
#: product -> (name, program, material lines (material, qty per unit, scrap factor))
PRODUCTS: dict[str, tuple[str, str, list[tuple[str, str, float]]]] = {
    "P-100": ("外壳 Housing", "MOLD-A17-HOUSING", [("M-PA66", "0.042", 0.02),
                                                  ("M-INSERT", "2", 0.0)]),
    "P-200": ("盖 Cap", "MOLD-B02-CAP", [("M-PP", "0.012", 0.02)]),
    "P-300": ("卡扣 Clip", "MOLD-C33-CLIP", [("M-PA66", "0.008", 0.02)]),
    "P-400": ("轴 Shaft", "O1001-SHAFT", [("M-STEEL45", "0.35", 0.03)]),
    "P-500": ("衬套 Bushing", "O2040-BUSHING", [("M-BRASS", "0.08", 0.03)]),
    "P-600": ("法兰 Flange", "O1002-FLANGE", [("M-STEEL45", "0.9", 0.03)]),
}
#: material -> (name, unit, lead time days, safety stock)
MATERIALS: dict[str, tuple[str, str, int, str]] = {
    "M-PA66": ("PA66 树脂 resin", "kg", 7, "200"),
    "M-PP": ("PP 树脂 resin", "kg", 5, "100"),
    "M-INSERT": ("铜嵌件 M4 insert", "pcs", 10, "5000"),
    "M-STEEL45": ("45号钢棒料 steel bar", "kg", 14, "500"),
    "M-BRASS": ("黄铜棒 brass bar", "kg", 10, "80"),
}
#: per machine, the orders it ran this week, in order: (number, product, days of work,
#: how it ends: "done" (the quantity), "over" (8 % past it), "short" (stopped at 80 %),
#: "open" (still running now)). Quantities follow from the days at the machine's rate.
RUNS: dict[str, list[tuple[str, str, float, str]]] = {
    "imm-01": [("WO-2601", "P-100", 1.8, "done"), ("WO-2605", "P-300", 1.3, "over"),
               ("WO-2609", "P-100", 0.0, "open")],
    "imm-02": [("WO-2604", "P-200", 2.6, "done"), ("WO-2608", "P-200", 0.0, "open")],
    "cnc-01": [("WO-2602", "P-400", 1.6, "done"), ("WO-2606", "P-400", 1.5, "short"),
               ("WO-2610", "P-400", 0.0, "open")],
    "cnc-02": [("WO-2603", "P-500", 2.2, "done"), ("WO-2607", "P-600", 0.0, "open")],
}
#: Orders still running now: days of work left and the due date from now (days): on
#: time, at risk (due before it can finish), late (due yesterday).
OPEN_ORDERS: dict[str, tuple[float, float, str]] = {
    "WO-2609": (1.5, 3.0, "华东精密 East China Precision"),
    "WO-2608": (1.0, 0.25, "Acme GmbH"),
    "WO-2610": (1.0, 2.0, "华东精密 East China Precision"),
    "WO-2607": (1.2, -1.0, "Brite Ltd"),
}
#: Orders that never ran: (number, product, quantity, due in days, what happens).
OTHER_ORDERS = [("WO-2611", "P-100", 3000, 5.0, "release"),
                ("WO-2612", "P-500", 2000, 8.0, "draft"),
                ("WO-2613", "P-200", 5000, 4.0, "cancel")]
CUSTOMERS = ["华东精密 East China Precision", "Acme GmbH", "Brite Ltd", "苏州汽配 Suzhou Auto"]


def machine_rate_per_day(m: Machine, program: str) -> float:
    """Good pieces a machine makes in a working day of the calendar, roughly."""
    return 22.5 * H * 0.85 / (m.ideal_cycle_s(program) * 1.07)


# -- the week on a virtual clock ---------------------------------------------------------

@dataclass
class Dispatch:
    device: str
    order: str
    product: str
    start_ms: int
    end_ms: int | None = None
    good: int = 0


@dataclass
class History:
    """What ``plan_week`` made: the records (ts order), the last baselines, the dispatches,
    the orders' quantities and the reason each stop began with."""

    records: list[Record] = field(default_factory=list)
    baselines: dict[tuple[str, str], int] = field(default_factory=dict)
    dispatches: list[Dispatch] = field(default_factory=list)
    quantities: dict[str, int] = field(default_factory=dict)
    completed_ms: dict[str, int] = field(default_factory=dict)
    stop_reasons: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    machines: dict[str, Machine] = field(default_factory=dict)
    end_s: float = 0.0


def _reading(m: Machine, *, parameters: bool) -> list[TagReading]:
    """What a poll reads (``parameters``: the parameters and samples too, else only
    counters, states and alarms), as the registers hold it."""
    out = []
    for p in m.points:
        if not parameters and p.role in ("parameter", "sample"):
            continue
        value = m.value_of(p)
        spec = p.spec
        if isinstance(value, float):
            if spec.type.is_integer:
                value = round(value / spec.scale) * spec.scale   # what the register holds
            else:
                value = round(value, 3)
        out.append(TagReading(p.name, b"", value))
    return out


def build_machines(gw: LoadedGateway, seed: int, schedule: ShiftSchedule, *,
                   epoch0: float) -> dict[str, Machine]:
    """The gateway's devices as machines working to ``schedule``, cold, their programs
    chosen by the planner (``auto_setup`` off), starting at ``epoch0``."""
    out = {}
    for dev in gw.devices:
        m = make_machine(machine_kind(dev.map), dev.name, sim_points(dev.map), seed=seed,
                         warm=False)
        m.auto_setup = False
        m.schedule = schedule
        m.epoch0 = epoch0
        out[dev.name] = m
    return out


def plan_week(gw: LoadedGateway, *, seed: int, end_s: float,
              days: float = HISTORY_DAYS) -> History:
    """Run the plant for ``days`` up to ``end_s`` (epoch seconds) and derive its records."""
    schedule = ShiftSchedule(CALENDAR, TIMEZONE)
    start_s = end_s - days * DAY
    hist = History(end_s=end_s)
    hist.machines = build_machines(gw, seed, schedule, epoch0=start_s)
    for dev in gw.devices:
        _Week(hist, dev.name, hist.machines[dev.name], DeviceDeriver(
            dev.name, rules_for(dev), heartbeat_s=600.0)).run(start_s, end_s)
    hist.records.sort(key=lambda r: r.ts)
    return hist


class _Week:
    """One machine's week: its orders one after the other, its records and stops."""

    def __init__(self, hist: History, name: str, m: Machine, deriver: DeviceDeriver) -> None:
        self.hist, self.name, self.m, self.deriver = hist, name, m, deriver
        self.queue = list(RUNS.get(name, []))
        self.current: Dispatch | None = None
        self.target = 0
        self.reasons: list[tuple[int, str]] = []
        hist.stop_reasons[name] = self.reasons

    def next_run(self, now_ms: int) -> None:
        m, hist = self.m, self.hist
        number, product, days_of_work, how = self.queue.pop(0)
        program = PRODUCTS[product][1]
        qty = int(round(days_of_work * machine_rate_per_day(m, program), -2))
        if how != "open":
            hist.quantities[number] = qty
        self.target = {"done": qty, "over": int(qty * 1.08), "short": int(qty * 0.8)}.get(
            how, 1 << 62)
        if m.program != program:
            m.changeover(program)
            if m.clock == 0:   # the week starts set up: no changeover first thing
                m.state, m.reason = "idle", "heating"
        self.current = Dispatch(self.name, number, product, now_ms, good=m.good)
        hist.dispatches.append(self.current)

    def run(self, start_s: float, end_s: float) -> None:
        m, hist, name = self.m, self.hist, self.name
        pending: dict[str, Any] = {}
        last_sample = last_param = -1e18
        last_state = m.state
        if self.queue:
            self.next_run(int(start_s * 1000))
        t = start_s
        while t < end_s - 1e-6:
            m.step(POLL_S, max_tick=TICK_S)
            t += POLL_S
            ts = int(t * 1000)
            params = t - last_param >= PARAM_S - 1e-6
            if params:
                last_param = t
            derived = self.deriver.derive(_reading(m, parameters=params), ts=ts, mono=t)
            self.deriver.apply(derived)
            hist.baselines.update(derived.baselines)
            for rec in derived.records:
                if rec.kind == "sample":
                    pending.update(rec.body["values"])
                else:
                    hist.records.append(rec)
            if pending and t - last_sample >= SAMPLE_S:
                hist.records.append(Record(seq=0, ts=ts, device=name, kind="sample",
                                           body={"values": dict(pending)}))
                pending.clear()
                last_sample = t
            if m.state != last_state:
                if m.state != "running":
                    self.reasons.append((ts, m.reason))
                last_state = m.state
            cur = self.current
            if cur is not None and m.good - cur.good >= self.target:
                cur.end_ms = ts + 1
                cur.good = m.good - cur.good
                hist.completed_ms[cur.order] = ts
                self.current = None
                if self.queue:
                    self.next_run(ts + 1)
        cur = self.current
        if cur is not None:
            cur.good = m.good - cur.good
            left_days = OPEN_ORDERS.get(cur.order, (1.0, 0.0, ""))[0]
            hist.quantities[cur.order] = int(round(
                cur.good + left_days * machine_rate_per_day(m, m.program), -2))


async def write_buffer(path: Path, gateway: str, hist: History, *,
                       max_bytes: int = 256 * 2**20) -> int:
    """Append the history to the gateway's buffer (an hour of records per transaction,
    the last one with the counter baselines); the last seq."""
    path.parent.mkdir(parents=True, exist_ok=True)
    last = 0
    async with Outbox(path, gateway=gateway, max_bytes=max_bytes, synchronous="NORMAL") as ob:
        chunk: list[Record] = []
        hour = None
        for rec in hist.records:
            h = rec.ts // 3_600_000
            if hour is not None and h != hour and chunk:
                last = (await ob.append(Cycle(records=chunk)))[-1]
                chunk = []
            hour = h
            chunk.append(rec)
        seqs = await ob.append(Cycle(records=chunk, baselines=hist.baselines))
        last = seqs[-1] if seqs else last
    return last


# -- the cloud, through its API ----------------------------------------------------------

class Api:
    """A planner's (admin's) calls to the cloud; every call must succeed."""

    def __init__(self, base: str, token: str) -> None:
        self.c = httpx.Client(base_url=base, timeout=60,
                              headers={"Authorization": f"Bearer {token}"})

    def call(self, method: str, path: str, *ok: int, **kw: Any) -> Any:
        res = self.c.request(method, "/api/v1" + path, **kw)
        if res.status_code not in (ok or (200, 201)):
            raise RuntimeError(f"{method} {path}: {res.status_code} {res.text[:300]}")
        return res.json() if res.content else None

    def close(self) -> None:
        self.c.close()


def login(base: str, name: str, password: str) -> Api:
    """Sign in and make an API token for the seeding."""
    with httpx.Client(base_url=base, timeout=60) as c:
        res = c.post("/api/v1/login", json={"name": name, "password": password})
        res.raise_for_status()   # the client keeps the session cookie
        tok = c.post("/api/v1/me/tokens", json={"name": "demo-seed"})
        if tok.status_code not in (200, 201):
            raise RuntimeError(f"cannot make an API token: {tok.status_code} {tok.text}")
        body = tok.json()
    return Api(base, str(body.get("token") or body.get("secret")))


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_master(api: Api, gateway: str, hist: History) -> dict[str, int]:
    """Machines, calendar, materials and receipts, products, BOMs, routings, orders,
    releases and dispatches; the machine ids by device."""
    ids: dict[str, int] = {}
    for device, (name, wc) in MACHINES.items():
        ids[device] = int(api.call("POST", "/machines", json={
            "gateway_id": gateway, "device": device, "name": name, "work_center": wc})["id"])
    api.call("POST", "/calendars", json={"name": "default", "timezone": TIMEZONE,
                                         "definition": CALENDAR})
    # A stop is an anomaly after 40 minutes: longer than a break (the cloud's stop rule
    # does not read the calendar), and alarms are anomalies of their own anyway.
    api.call("PUT", "/settings/anomalies", json={"stop_after_s": STOP_AFTER_S})
    for code, (name, unit, lead, safety) in MATERIALS.items():
        api.call("PUT", f"/materials/{code}", json={"name": name, "unit": unit,
                                                   "lead_time_days": lead,
                                                   "safety_stock": safety})
    device_of = {PRODUCTS[p][1]: d for d, runs in RUNS.items() for _, p, _, _ in runs
                 for _ in [0]}
    for code, (name, program, lines) in PRODUCTS.items():
        api.call("PUT", f"/products/{code}", json={"name": name, "unit": "pcs"})
        api.call("POST", "/boms", json={"product": code, "lines": [
            {"material": mat, "qty_per_unit": q, "scrap_factor": sf} for mat, q, sf in lines]})
        device = next((d for d, runs in RUNS.items() if any(p == code for _, p, _, _ in runs)),
                      device_of.get(program, "imm-01"))
        m = hist.machines[device]
        api.call("POST", "/routings", json={"product": code, "operations": [{
            "step": 10, "name": f"{MACHINES[device][1].split()[0]} {program}",
            "machine_id": ids[device], "ideal_cycle_ms": int(m.ideal_cycle_s(program) * 1000),
            "cavities": m.profile.cavities}]})
    # receipts: what the week's backflush needs and some weeks more
    need: dict[str, float] = {}
    for d in hist.dispatches:
        for mat, q, sf in PRODUCTS[d.product][2]:
            need[mat] = need.get(mat, 0.0) + float(q) * (1 + sf) * max(d.good, 1) * 1.1
    for code in MATERIALS:
        qty = max(need.get(code, 0.0) * 2.2, 500.0)
        for i, share in enumerate((0.6, 0.4)):
            api.call("POST", "/stock/receipts", json={
                "material": code, "qty": f"{qty * share:.0f}", "note": f"PO-77{81 + i} 采购入库"})
    now = hist.end_s
    numbers = [n for runs in RUNS.values() for n, *_ in runs]
    ops: dict[str, int] = {}
    for i, (_device, runs) in enumerate(sorted(RUNS.items())):
        for number, product, _days, how in runs:
            if how == "open":
                _left, due_days, customer = OPEN_ORDERS[number]
                due = now + due_days * DAY
            else:
                due = hist.completed_ms.get(number, int(now * 1000)) / 1000 + 1.5 * DAY
                customer = CUSTOMERS[(numbers.index(number) + i) % len(CUSTOMERS)]
            api.call("POST", "/work-orders", json={
                "number": number, "product": product, "quantity": hist.quantities[number],
                "due": _iso(_end_of_day(due)), "customer": customer,
                "priority": 5 if how == "open" else 3})
            doc = api.call("POST", f"/work-orders/{number}/release")
            ops[number] = int(doc["operations"][0]["id"])
    for number, product, qty, due_days, what in OTHER_ORDERS:
        api.call("POST", "/work-orders", json={
            "number": number, "product": product, "quantity": qty,
            "due": _iso(_end_of_day(now + due_days * DAY)), "customer": CUSTOMERS[3],
            "priority": 1})
        if what == "release":
            api.call("POST", f"/work-orders/{number}/release")
        elif what == "cancel":
            api.call("POST", f"/work-orders/{number}/cancel",
                     json={"reason": "客户取消 cancelled by the customer"})
    for d in hist.dispatches:
        body: dict[str, Any] = {"machine_id": ids[d.device], "wo_operation_id": ops[d.order],
                                "start_ts": d.start_ms}
        if d.end_ms is not None:
            body["end_ts"] = d.end_ms
        api.call("POST", "/dispatches", json=body)
    return ids


def _end_of_day(epoch_s: float) -> float:
    """The plant's end of that day (a due date is a day)."""
    local = datetime.fromtimestamp(epoch_s, ZoneInfo(TIMEZONE))
    end = local.replace(hour=23, minute=59, second=0, microsecond=0)
    return end.timestamp()


def seed_after(api: Api, ids: dict[str, int], hist: History) -> dict[str, int]:
    """The planner's week, once the history is in: stop reasons, anomalies worked, orders
    closed (one short), a stock count. Counts of what was done."""
    done = {"reasons": 0, "anomalies_closed": 0, "anomalies_acknowledged": 0}
    start_ms = int((hist.end_s - HISTORY_DAYS * DAY) * 1000)
    end_ms = int(hist.end_s * 1000)
    calls: list[tuple[Any, ...]] = []
    for device, mid in ids.items():
        log = hist.stop_reasons.get(device, [])
        stops = api.call("GET", f"/machines/{mid}/stops",
                         params={"start": start_ms, "end": end_ms})
        for st in stops["items"]:
            if st.get("micro") or st.get("reason") or not st.get("end_ts") or \
                    int(st["end_ts"]) - int(st["start_ts"]) < REASON_MIN_S * 1000:
                continue
            reason = _reason_at(log, int(st["start_ts"]))
            if reason in (None, "", "no_shift", "break"):
                continue
            calls.append((("PUT", f"/machines/{mid}/stops/{st['start_ts']}/reason",
                           {"reason": REASONS.get(reason, reason)}),))
            done["reasons"] += 1
    # anomalies: older than a day are worked to the end; the last day's partly acknowledged
    cutoff = end_ms - int(DAY * 1000)
    todo: list[dict[str, Any]] = []
    while True:
        page = api.call("GET", "/anomalies", params={"limit": 500, "offset": len(todo),
                                                     "status": "open"})
        todo += page["items"]
        if len(page["items"]) < 500:
            break
    def at(ts: int, minutes: int) -> str:
        """An action ``minutes`` after ``ts``, recorded afterwards (the API's ``at``)."""
        when = min(ts + minutes * 60_000, end_ms - 60_000)
        return datetime.fromtimestamp(when / 1000, UTC).isoformat().replace("+00:00", "Z")

    for i, a in enumerate(todo):
        base = f"/anomalies/{a['id']}"
        ts, n = int(a["ts"]), int(a["id"])
        # people respond within minutes and close within an hour or two, as a shift would
        ack, fix, shut = 3 + n * 7 % 20, 15 + n * 13 % 75, 5 + n * 5 % 40
        if ts < cutoff:
            calls.append((
                ("POST", f"{base}/acknowledge", {"assignee": "王工", "at": at(ts, ack),
                                                 "note": "已通知维修 maintenance called"}),
                ("POST", f"{base}/resolve", {"cause": "见停机原因 see the stop reason",
                                             "action": "已处理 fixed and restarted",
                                             "at": at(ts, ack + fix)}),
                ("POST", f"{base}/close", {"at": at(ts, ack + fix + shut)})))
            done["anomalies_closed"] += 1
        elif i % 2 == 0:
            calls.append((("POST", f"{base}/acknowledge",
                           {"assignee": "李班长", "note": "处理中 on it",
                            "at": at(ts, ack)}),))
            done["anomalies_acknowledged"] += 1

    def run(steps: tuple[Any, ...]) -> None:
        for method, path, body in steps:
            api.call(method, path, json=body)

    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(run, calls):
            pass
    for runs in RUNS.values():
        for number, _p, _d, how in runs:
            if how == "short":
                api.call("POST", f"/work-orders/{number}/complete",
                         json={"reason": "材料不足，短交 short: material ran out"})
                api.call("POST", f"/work-orders/{number}/close",
                         json={"reason": "客户接受短交 customer accepted the short delivery"})
            elif how in ("done", "over") and number in ("WO-2601", "WO-2602", "WO-2605"):
                with contextlib.suppress(RuntimeError):   # auto-completed: close it
                    api.call("POST", f"/work-orders/{number}/close")
    stock = api.call("GET", "/materials/M-PA66/stock")
    on_hand = int(stock["balance_u"]) / 1e6
    api.call("POST", "/stock/counts", json={"material": "M-PA66",
                                            "counted": f"{max(on_hand - 3.5, 0):.1f}",
                                            "note": "月度盘点 monthly stock count"})
    return done


def _reason_at(log: Sequence[tuple[int, str]], ts: int) -> str | None:
    best = None
    for when, reason in log:
        if when > ts:
            break
        best = reason
    return best


def seed_cloud(api: Api, gateway: str, hist: History, buffer_path: Path
               ) -> tuple[dict[str, int], int]:
    """Put the master data of ``hist`` (``plan_week``) in and write its records into the
    gateway's buffer. Returns the machine ids and the history's last seq (the gateway
    must have sent it before ``seed_after``)."""
    ids = seed_master(api, gateway, hist)
    last = asyncio.run(write_buffer(buffer_path, gateway, hist))
    return ids, last


def save_machines(path: Path, hist: History) -> None:
    with path.open("wb") as fh:
        pickle.dump(hist.machines, fh)


# -- the live plant: the week's machines, going on at real time --------------------------

async def serve_live(gw: LoadedGateway, machines: dict[str, Machine], *, wait_scale: float,
                     stop: asyncio.Event) -> None:
    """Serve ``machines`` (restored) at ``gw``'s endpoints at real time until ``stop``."""
    plant = SimulatedPlant(speed=1.0)
    now = time.time()
    for dev in gw.devices:
        m = machines[dev.name]
        m.epoch0 = now - m.clock
        m.wait_scale = wait_scale
        plant.add(dev.name, m, m.points, dev.endpoint)
    await plant.start(live=True)
    print("ready", flush=True)
    try:
        await stop.wait()
    finally:
        await plant.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.demo_seed")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plant", help="serve the saved machines at real time")
    p.add_argument("--config", required=True)
    p.add_argument("--machines", required=True)
    p.add_argument("--speed", type=float, default=1.0, help="shortens waits, never cycles")
    args = parser.parse_args(argv)
    gw = load_gateway(Path(args.config))
    with Path(args.machines).open("rb") as fh:
        machines = pickle.load(fh)   # the demo's own file, written by plan_week
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_live(gw, machines, wait_scale=args.speed, stop=stop)

    asyncio.run(run())
    Path(args.machines).write_bytes(pickle.dumps(machines))   # the next demo goes on here
    return 0


if __name__ == "__main__":
    sys.exit(main())
