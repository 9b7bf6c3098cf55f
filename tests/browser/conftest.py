"""Browser fixtures: Debian's Chromium (no browser download: Playwright's bundled driver
with ``executable_path``), a CJK font so Chinese pages render (installed with apt when
missing, like ``require_binary``), and a real ``plantsync-cloud serve`` on a free port over
a migrated SQLite file with the web tests' plant (``seed_plant`` of tests/fixtures/plant.py).

Screenshots go to ``$PLANTSYNC_ARTIFACTS/screenshots`` (default
``tests/artifacts/screenshots``, git-ignored)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.fixtures.cloud import ADMIN_HEADERS, add_admin, create_gateway_sync
from tests.fixtures.plant import PASSWORD, WebPlant, seed_plant
from tests.services import free_port, require_binary, wait_port

T = TypeVar("T")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CJK_FONT_PACKAGE = "fonts-wqy-microhei"


def off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own: Playwright's sync API keeps an event loop running
    in this one, where ``asyncio.run`` is refused."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def artifacts_dir() -> Path:
    base = os.environ.get("PLANTSYNC_ARTIFACTS")
    root = Path(base) if base else Path(__file__).resolve().parents[1] / "artifacts"
    out = root / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def require_cjk_font() -> None:
    """A font with simplified Chinese glyphs (else Chinese renders as boxes). Installed by
    ``make system-deps`` before the tests; a test never installs it: it fails, saying so."""
    fc_list = require_binary("fc-list", "fontconfig")
    found = subprocess.run([fc_list, ":lang=zh"], capture_output=True, text=True, check=False)
    if not found.stdout.strip():
        pytest.fail(f"no Chinese font: run `make system-deps` (or as root `apt-get install -y "
                    f"{CJK_FONT_PACKAGE}`) before the tests", pytrace=False)


@dataclass
class WebServer:
    url: str
    plant: WebPlant
    process: subprocess.Popen[bytes]
    log_path: Path

    def ingest(self, records: list[dict[str, Any]]) -> None:
        async def go() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as c:
                await self.plant.ingest(c, records)
        off_loop(lambda: asyncio.run(go()))

    def api(self, path: str) -> Any:
        res = httpx.get(self.url + path, headers=ADMIN_HEADERS, timeout=30)
        assert res.status_code == 200, res.text
        return res.json()


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    directory = tmp_path_factory.mktemp("webcloud")
    db = f"sqlite+aiosqlite:///{directory / 'cloud.db'}"
    cli = [sys.executable, "-m", "cloud.cli"]
    env = dict(os.environ, PLANTSYNC_WEB_REFRESH_S="1")
    env.pop("PLANTSYNC_CLOUD_DB", None)
    res = subprocess.run([*cli, "migrate", "--db", db], env=env, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr
    off_loop(lambda: asyncio.run(add_admin(db)))
    token = off_loop(lambda: create_gateway_sync(db, "gw-hall1"))
    port = free_port()
    log_path = directory / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--db", db, "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_port(port, proc=proc)

        async def seed() -> WebPlant:
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                return await seed_plant(c, ADMIN_HEADERS, "gw-hall1", token)

        plant = off_loop(lambda: asyncio.run(seed()))
        yield WebServer(url, plant, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    chromium = require_binary("chromium")
    require_cjk_font()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def signed_in(browser: Any, web_server: WebServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Any]:
    """A browser page logged in as the planner ``pat`` (English to start)."""
    downloads = tmp_path_factory.mktemp("downloads")
    context = browser.new_context(viewport={"width": 1366, "height": 900},
                                  locale="en-US", accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    page.goto(web_server.url + "/")
    assert "/login" in page.url
    page.fill("input[name=name]", "pat")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(web_server.url + "/")
    page.downloads_dir = downloads  # type: ignore[attr-defined]
    try:
        yield page
    finally:
        context.close()
