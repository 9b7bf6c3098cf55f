"""``make demo`` from a fresh data dir, looked at as a new plant manager would: every page
in Chinese and English, at 1366 and 800 px, with the week of history the demo seeds. One
demo serves every test here (seeding a week takes a minute or two): it starts
everything, prints where to look and counts arriving, its admin signs in, and Ctrl-C
stops every process cleanly (checked when the session ends).

What must hold (each failure names the page, language and width; all are collected and
reported together, so one run shows every problem):

- data present: four machine tiles on the board, digits on every page, no "no machines
  registered";
- OEE per machine over the seeded week between 30 % and 95 % (``/api/v1/oee``), and the
  ``/oee`` page shows no figure above 100 %;
- the downtime Pareto of the week has at least three reasons;
- anomalies per machine per shift: at most ``MAX_ANOMALIES_PER_SHIFT`` (10) on average
  over the week's shifts (two 12-hour shifts a working day, six working days). The demo
  makes about 7 (alarms with their bursts, long stops, limit excursions, scrap rate); a
  shift lead can work about one an hour per machine, more is a storm;
- no material has a negative days of cover (API and inventory page);
- Chinese pages: no state or status code in Latin letters alone (``running``,
  ``in_progress``...), no raw JSON (``{"``, ``\\u738b``) and no action keys
  (``anomaly.acknowledge``);
- no horizontal overflow: ``document.documentElement.scrollWidth <= innerWidth`` at 1366
  and at 800 px;
- screenshots of every page, language and width in ``tests/artifacts/screenshots/``
  (``demo-<page>-<lang>-<width>.png``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import artifacts_dir
from tests.services import free_port

pytestmark = [pytest.mark.needs_service("chromium"), pytest.mark.xdist_group("browser"),
              pytest.mark.timeout(600)]

MAX_ANOMALIES_PER_SHIFT = 10
WEEK_SHIFTS = 12          # 6 working days x 2 shifts (edge/demo_seed.py CALENDAR)
DAY_MS = 86_400_000
PAGES = [("board", "/"), ("wall", "/?wall=1"), ("work-orders", "/work-orders"),
         ("work-order", "/work-orders/WO-2609"), ("work-order-short", "/work-orders/WO-2606"),
         ("anomalies", "/anomalies"), ("oee", "/oee"), ("inventory", "/inventory"),
         ("completeness", "/completeness")]
WIDTHS = (1366, 800)
#: Codes a Chinese page must translate (whole words in the visible text).
CODES = re.compile(r"(?<![\w.-])(running|idle|alarm|setup|offline|unknown|in_progress|"
                   r"released|draft|completed|closed|cancelled|on_time|at_risk|late|"
                   r"acknowledged|resolved|open)(?![\w.-])")
RAW = re.compile(r'\{"|\\u[0-9a-fA-F]{4}|\banomaly\.[a-z_]+\b|\bwork_order\.[a-z_]+\b')


@dataclass
class Demo:
    url: str
    password: str
    token: str
    out: Path
    dir: Path
    proc: subprocess.Popen[bytes]

    def api(self, path: str, **params: Any) -> Any:
        res = httpx.get(self.url + "/api/v1" + path, params=params, timeout=60,
                        headers={"Authorization": f"Bearer {self.token}"})
        assert res.status_code == 200, (path, res.status_code, res.text)
        return res.json()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """``python -m edge.demo`` on a fresh dir, until it says it is running (the week
    seeded, at most four minutes on a busy 2-core box). Session-scoped: xdist may run
    other browser tests between these, and one seeding is enough. At the end Ctrl-C must
    stop every process cleanly (exit 0, "demo stopped", each log written, the gateway
    stopped), checked here since no test can be sure to run last."""
    root = tmp_path_factory.mktemp("demo")
    out_path = root / "demo.out"
    port = free_port()
    env = dict(os.environ)
    env.pop("PLANTSYNC_CLOUD_DB", None)
    with out_path.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edge.demo", "--dir", str(root / "d"),
                                 "--cloud-port", str(port), "--interval", "5",
                                 "--free-ports"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240
        while "plantsync demo is running" not in out_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not come up:\n{out_path.read_text()[-3000:]}")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        password = (root / "d" / "admin-password").read_text().strip()
        with httpx.Client(base_url=url, timeout=60) as c:
            login = c.post("/api/v1/login", json={"name": "admin", "password": password})
            assert login.status_code == 200, login.text
            tok = c.post("/api/v1/me/tokens", json={"name": "browser-test"})
            assert tok.status_code == 201, tok.text
        yield Demo(url, password, tok.json()["token"], out_path, root / "d", proc)
    except BaseException:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        raise
    _stops_cleanly_on_ctrl_c(proc, out_path, root / "d")


def test_the_demo_prints_where_to_look_and_counts_arrive(demo: Demo) -> None:
    counted = re.compile(r"^cnc-01\s+yes\s+\d+\s+([1-9]\d*)\s", re.M)
    deadline = time.monotonic() + 120
    while not counted.search(text := demo.out.read_text()):
        assert demo.proc.poll() is None and time.monotonic() < deadline, text[-3000:]
        time.sleep(0.5)
    assert "cloud API" in text and "gateway status" in text


def _week(demo: Demo) -> tuple[int, int]:
    end = int(time.time() * 1000)
    return end - 7 * DAY_MS, end


def test_the_week_behind_the_demo_holds_up(demo: Demo) -> None:
    start, end = _week(demo)
    problems: list[str] = []
    machines = demo.api("/machines")["items"]
    if len(machines) != 4 or not all(m["work_center"] for m in machines):
        problems.append(f"machines: {machines}")
    for row in demo.api("/oee", start=start, end=end)["items"]:
        if not 0.30 <= row["oee"] <= 0.95:
            problems.append(f"OEE of {row['machine']} over the week: {row['oee']:.3f} "
                            f"(A {row['availability']:.2f} P {row['performance']:.2f} "
                            f"Q {row['quality']:.2f})")
    reasons = [i["reason"] for i in demo.api("/downtime/pareto", start=start, end=end)["items"]
               if i["duration_ms"] > 0]
    if len(reasons) < 3:
        problems.append(f"downtime Pareto of the week has {len(reasons)} reasons: {reasons}")
    per_machine: Counter[int | None] = Counter()
    offset = 0
    while True:
        page = demo.api("/anomalies", since_ts=start, until_ts=end, limit=500, offset=offset)
        per_machine.update(a["machine_id"] for a in page["items"])
        offset += len(page["items"])
        if len(page["items"]) < 500:
            break
    for mid, n in per_machine.items():
        if mid is not None and n / WEEK_SHIFTS > MAX_ANOMALIES_PER_SHIFT:
            problems.append(f"machine {mid}: {n} anomalies in the week, "
                            f"{n / WEEK_SHIFTS:.1f} a shift (bound {MAX_ANOMALIES_PER_SHIFT})")
    if sum(per_machine.values()) == 0:
        problems.append("no anomalies at all in the week")
    for m in demo.api("/materials", limit=500)["items"]:
        stock = demo.api(f"/materials/{m['code']}/stock")
        if stock["days_of_cover"] is not None and stock["days_of_cover"] < 0:
            problems.append(f"{m['code']}: days of cover {stock['days_of_cover']}")
    orders = {o["number"]: o for o in demo.api("/work-orders", limit=500)["items"]}
    statuses = {o["status"] for o in orders.values()}
    for wanted in ("draft", "released", "in_progress", "completed", "closed", "cancelled"):
        if wanted not in statuses:
            problems.append(f"no work order {wanted}: {sorted(statuses)}")
    assert not problems, "\n".join(problems)


def _signed_in(browser: Any, demo: Demo, locale: str) -> tuple[Any, Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900},
                                  locale="zh-CN" if locale == "zh-CN" else "en-US")
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.goto(demo.url + "/login")
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", demo.password)
    page.click("button[type=submit]")
    page.wait_for_url(demo.url + "/")
    page.click(f"form.lang button[value='{locale}']")
    page.wait_for_selector(f"html[lang='{locale}']")
    return context, page


@pytest.mark.parametrize("locale", ["zh-CN", "en"])
def test_every_page_in_both_languages_and_widths(browser: Any, demo: Demo,
                                                 locale: str) -> None:
    shots = artifacts_dir()
    context, page = _signed_in(browser, demo, locale)
    problems: list[str] = []
    try:
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 900})
            for name, path in PAGES:
                where = f"{name} ({locale}, {width} px)"
                page.goto(demo.url + path)
                page.wait_for_load_state("networkidle")
                page.screenshot(path=str(shots / f"demo-{name}-{locale}-{width}.png"),
                                full_page=True)
                text = page.inner_text("body")
                if not re.search(r"\d", text) or "no machines registered" in text.lower():
                    problems.append(f"{where}: no data")
                scroll, inner = page.evaluate(
                    "[document.documentElement.scrollWidth, window.innerWidth]")
                if scroll > inner:
                    problems.append(f"{where}: overflows, scrollWidth {scroll} > {inner}")
                if locale == "zh-CN":
                    codes = sorted(set(CODES.findall(text)))
                    if codes:
                        problems.append(f"{where}: Latin-only codes {codes}")
                    raw = sorted(set(RAW.findall(text)))
                    if raw:
                        problems.append(f"{where}: raw JSON or keys {raw}")
                if name == "board" and page.locator("section.tile").count() != 4:
                    problems.append(f"{where}: {page.locator('section.tile').count()} tiles")
                if name == "oee":
                    over = [float(x) for x in re.findall(r"(\d+(?:\.\d+)?)\s*%", text)
                            if float(x) > 100]
                    if over:
                        problems.append(f"{where}: figures above 100 %: {over[:5]}")
                if name == "inventory":
                    negative = re.findall(r"-\d+(?:\.\d+)?\s*(?:d|天)\b", text)
                    if negative:
                        problems.append(f"{where}: negative days of cover {negative}")
    finally:
        context.close()
    assert not problems, "\n".join(problems)


def _stops_cleanly_on_ctrl_c(proc: subprocess.Popen[bytes], out: Path, data: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"Ctrl-C did not stop the demo within 60 s:\n"
                             f"{out.read_text()[-3000:]}") from None
    text = out.read_text()
    assert code == 0, text[-3000:]
    assert "demo stopped" in text
    for log in ("gateway.log", "cloud.log", "simulate.log"):
        assert (data / log).exists()
    assert "gateway_stopped" in (data / "gateway.log").read_text()
