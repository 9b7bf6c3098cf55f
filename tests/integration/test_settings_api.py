"""``/api/v1/settings/{key}``: one route for every feature's settings (SQLite).

The feature-specific rules are tested with their features (test_anomalies.py,
test_oee.py); here: the notification settings are reachable (SMTP for email channels),
unknown keys and fields and wrong types are refused naming them, nothing is stored then,
viewers read, only admins write, and every change is audited.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from sqlalchemy import select

from cloud.core.models import AuditEntry, cloud_settings

pytestmark = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)


async def test_one_route_for_every_settings_key(api: Any) -> None:
    res = await api.get("/api/v1/settings", headers=api.viewer)
    assert {"anomalies", "notifications", "oee"} <= set(res.json()["keys"])
    url = "/api/v1/settings/notifications"
    assert (await api.get(url, headers=api.viewer)).json()["smtp"]["port"] == 25
    smtp = {"smtp": {"host": "mail.plant.local", "port": 587, "starttls": True,
                     "from": "mes@plant.local"}}
    assert (await api.put(url, json=smtp)).status_code == 403          # a planner
    for bad, field in (({"smtp": {"port": "twenty-five"}}, "notifications.smtp.port"),
                       ({"smtp": {"hots": "x"}}, "notifications.smtp.hots"),
                       ({"group_window": 5}, "notifications.group_window"),
                       ({"group_window_s": -1}, "notifications.group_window_s"),
                       ([1, 2], "notifications")):
        res = await api.put(url, json=bad, headers=api.admin)
        assert res.status_code == 422, (bad, res.text)
        assert (res.json()["error"], res.json()["field"]) == ("invalid_setting", field)
    assert (await api.get(url)).json()["smtp"]["host"] == ""             # nothing stored
    res = await api.put(url, json=smtp, headers=api.admin)
    assert res.status_code == 200, res.text
    doc = (await api.get(url, headers=api.admin)).json()  # the mail server: admin-only
    assert doc["smtp"]["host"] == "mail.plant.local" and doc["smtp"]["user"] == ""
    assert doc["group_window_s"] == 600                                   # the rest stays
    res = await api.put("/api/v1/settings/nonsense", json={}, headers=api.admin)
    assert res.status_code == 404 and "notifications" in res.json()["detail"]
    async with api.app.state.db.sessions() as s:
        rows = (await s.execute(select(AuditEntry.action, AuditEntry.entity_id)
                                .where(AuditEntry.entity == "settings"))).all()
    assert [tuple(r) for r in rows] == [("settings.put", "notifications")]


async def test_a_stored_value_the_model_no_longer_accepts_falls_back_to_its_default(
        api: Any) -> None:
    """An override stored by an older version that today's model refuses is left out (the
    default applies, the rest of the override stays) and logged, instead of breaking every
    reader of the key."""
    async with api.app.state.db.sessions() as s, s.begin():
        await s.execute(cloud_settings.insert().values(
            key="oee", value={"micro_stop_s": -5, "state_map": {"setup": "running"}},
            updated=datetime.now(UTC), updated_by="an older version"))
    with structlog.testing.capture_logs() as logs:
        doc = (await api.get("/api/v1/settings/oee", headers=api.viewer)).json()
    assert doc == {"micro_stop_s": 120, "state_map": {"setup": "running"}}
    assert [e["key"] for e in logs if e["event"] == "settings_invalid_stored"] == ["oee"]
