"""The plant's time zone (cloud/core/plant.py): an admin sets it through the API or the
settings page, an unknown zone is refused naming the field, every page says which zone
its times are in, and times on the pages move with it (stored times do not)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.fixtures.cloud import ADMIN_HEADERS
from tests.fixtures.plant import PASSWORD


async def _login(c: Any, name: str, role: str) -> str:
    """Log ``c`` in as a new user; the settings page's CSRF token."""
    c.headers.pop("Authorization", None)
    res = await c.post("/api/v1/users", headers=ADMIN_HEADERS,
                       json={"name": name, "role": role, "password": PASSWORD})
    assert res.status_code == 201, res.text
    res = await c.post("/login", data={"name": name, "password": PASSWORD, "next": "/"})
    assert res.status_code == 303, res.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', (await c.get("/settings")).text)
    assert found
    return found.group(1)


async def test_the_api_sets_the_zone_and_refuses_an_unknown_one(cloud_client: Any) -> None:
    c = cloud_client
    res = await c.get("/api/v1/settings/plant", headers=ADMIN_HEADERS)
    assert res.status_code == 200 and res.json() == {"timezone": None}
    res = await c.put("/api/v1/settings/plant", headers=ADMIN_HEADERS,
                      json={"timezone": "Mars/Olympus"})
    assert res.status_code == 422
    assert res.json()["error"] == "invalid_setting"
    assert res.json()["field"] == "plant.timezone"
    res = await c.put("/api/v1/settings/plant", headers=ADMIN_HEADERS,
                      json={"timezone": "Asia/Shanghai"})
    assert res.status_code == 200 and res.json() == {"timezone": "Asia/Shanghai"}


async def test_pages_say_their_zone_and_show_times_in_it(
        cloud_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLANTSYNC_TIMEZONE", raising=False)
    c = cloud_client
    res = await c.put("/api/v1/products/P-TZ", headers=ADMIN_HEADERS,
                      json={"name": "tz part"})
    assert res.status_code in (200, 201), res.text
    res = await c.post("/api/v1/work-orders", headers=ADMIN_HEADERS,
                       json={"number": "WO-TZ", "product": "P-TZ", "quantity": 10,
                             "due": "2026-12-09T15:59:00Z"})
    assert res.status_code == 201, res.text
    csrf = await _login(c, "ada-tz", "admin")
    html = (await c.get("/work-orders/WO-TZ")).text
    assert "UTC (UTC+00:00)" in html and "2026-12-09 15:59" in html

    res = await c.post("/settings/plant", data={"csrf_token": csrf,
                                                "timezone": "Asia/Shanghai"})
    assert res.status_code == 303
    html = (await c.get("/work-orders/WO-TZ")).text
    assert "Asia/Shanghai (UTC+08:00)" in html
    assert "2026-12-09 23:59" in html          # the end of the 9th, Shanghai
    res = await c.get("/api/v1/work-orders/WO-TZ", headers=ADMIN_HEADERS)
    assert res.json()["due"] == "2026-12-09T15:59:00Z"   # stored time unchanged


async def test_the_env_zone_applies_until_an_admin_sets_one(
        cloud_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTSYNC_TIMEZONE", "Europe/Berlin")
    c = cloud_client
    await _login(c, "vic-tz", "viewer")
    html = (await c.get("/settings")).text
    assert "Europe/Berlin (UTC+01:00)" in html
    assert 'id="plant-form"' not in html                  # a viewer cannot change it
    res = await c.post("/settings/plant", data={"timezone": "UTC"})
    assert res.status_code == 403
