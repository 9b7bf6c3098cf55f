"""A write's answer comes after its commit: a commit that fails answers 5xx, never 200.

FastAPI runs the code after a dependency's ``yield`` once the response is on its way unless
the dependency is function-scoped; a request transaction committed there could answer 200
for a change that was rolled back (seen under load on SQLite: a material "saved" with 200,
then 404 on the next request). The commit failure is injected at the engine, the one thing
here that cannot be provoked reliably with a real database.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import event

pytestmark = pytest.mark.asyncio


async def test_a_failed_commit_is_not_answered_as_success(cloud_client: Any) -> None:
    admin = cloud_client.admin_headers
    engine = cloud_client.app.state.db.engine.sync_engine

    def refuse(_conn: Any) -> None:
        raise RuntimeError("injected: the commit did not happen")

    # As a server would: an exception that escapes the app is a 500 on the wire.
    transport = httpx.ASGITransport(app=cloud_client.app, raise_app_exceptions=False)
    event.listen(engine, "commit", refuse)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://cloud") as client:
            res = await client.put("/api/v1/materials/RESIN", headers=admin,
                                   json={"name": "resin", "unit": "kg"})
    finally:
        event.remove(engine, "commit", refuse)
    assert res.status_code >= 500, res.text
    res = await cloud_client.get("/api/v1/materials/RESIN", headers=admin)
    assert res.status_code == 404, res.text
    # The same write succeeds once commits work again.
    res = await cloud_client.put("/api/v1/materials/RESIN", headers=admin,
                                 json={"name": "resin", "unit": "kg"})
    assert res.status_code == 200, res.text
    assert (await cloud_client.get("/api/v1/materials/RESIN", headers=admin)).status_code == 200
