"""What a caller sends at the edge of what the database holds is refused in the one error
shape, never answered 500 (issue 12, items 10, 11 and 13; SQLite and PostgreSQL):

- an integer beyond its column (PostgreSQL's ``Integer`` stops at 2^31) in a path, a
  query, a body or ingest's ``X-Plantsync-Sent-At`` header;
- a ``q`` longer than any name (SQLite's LIKE stops at 50,000 bytes);
- a work-order number or a code with ``/`` (it could never be reached again);
- the SMTP password file is no setting, and the mail server is admin-only to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from cloud.auth import create_api_token, create_user
from cloud.core.db import Database
from cloud.notify.config import SMTP_PASSWORD_FILE_ENV, SmtpPasswordUnreadable, smtp_password
from tests.fixtures.cloud import ADMIN_HEADERS
from tests.fixtures.ingest import batch_bytes, post_ingest, record

BEYOND_INT32 = 2**31
BEYOND_INT64 = 2**63


def _refused(res: Any, field: str, status: int = 422) -> None:
    assert res.status_code == status, res.text
    assert res.json()["field"] == field and res.json()["detail"], res.text


async def test_integers_beyond_their_column_are_refused_naming_the_field(
        cloud_client: Any) -> None:
    h = ADMIN_HEADERS
    _refused(await cloud_client.get(f"/api/v1/calendars/{BEYOND_INT32}", headers=h),
             "calendar_id")
    _refused(await cloud_client.get(f"/api/v1/notifications?offset={BEYOND_INT64}",
                                    headers=h), "offset")
    _refused(await cloud_client.get(f"/api/v1/anomalies?since_ts={BEYOND_INT64}",
                                    headers=h), "since_ts")
    res = await cloud_client.put("/api/v1/products/P1", headers=h, json={"name": "p"})
    assert res.status_code == 200, res.text
    _refused(await cloud_client.post("/api/v1/work-orders", headers=h, json={
        "number": "WO-BIG", "product": "P1", "quantity": 5, "priority": BEYOND_INT32}),
        "priority")
    _refused(await cloud_client.post("/api/v1/work-orders", headers=h, json={
        "number": "WO-BIG", "product": "P1", "quantity": BEYOND_INT64}), "quantity")
    _refused(await cloud_client.get(f"/api/v1/boms/P1/{BEYOND_INT32}", headers=h),
             "version")


async def test_an_out_of_range_sent_at_header_is_a_400_not_a_500(cloud_client: Any) -> None:
    for value in (str(BEYOND_INT64), "-5", "1e12"):
        res = await post_ingest(cloud_client, [record(1)], headers={
            "X-Plantsync-Sent-At": value, "Accept": "application/json"})
        assert res.status_code == 400, (value, res.text)
        assert res.json()["error"] == "bad_header"


async def test_a_search_longer_than_any_name_is_refused(cloud_client: Any) -> None:
    for path in ("/api/v1/work-orders", "/api/v1/products", "/api/v1/machines"):
        res = await cloud_client.get(path, params={"q": "x" * 50_001}, headers=ADMIN_HEADERS)
        _refused(res, "q")
    res = await cloud_client.get("/api/v1/products", params={"q": "x" * 200},
                                 headers=ADMIN_HEADERS)
    assert res.status_code == 200, res.text


async def test_a_number_or_code_with_a_slash_is_refused_at_creation(cloud_client: Any) -> None:
    h = ADMIN_HEADERS
    _refused(await cloud_client.put("/api/v1/products/P%09X", headers=h,
                                    json={"name": "p"}), "code")
    assert (await cloud_client.put("/api/v1/products/P1", headers=h,
                                   json={"name": "p"})).status_code == 200
    res = await cloud_client.post("/api/v1/work-orders", headers=h, json={
        "number": "WO/1", "product": "P1", "quantity": 5})
    _refused(res, "number")
    assert "'/'" in res.json()["detail"]


async def test_the_mail_server_is_admin_only_and_its_password_no_setting(
        cloud_client: Any, cloud_db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = "/api/v1/settings/notifications"
    res = await cloud_client.put(url, headers=ADMIN_HEADERS,
                                 json={"smtp": {"password_file": "/etc/shadow"}})
    _refused(res, "notifications.smtp.password_file")
    res = await cloud_client.put(url, headers=ADMIN_HEADERS,
                                 json={"smtp": {"host": "mail.plant.local", "user": "mes"}})
    assert res.status_code == 200, res.text
    async with Database(cloud_db_url) as db:
        await create_user(db, "viewer", "viewer", "a-long-password-1")
        _id, token = await create_api_token(db, "viewer")
    seen = (await cloud_client.get(url, headers={"Authorization": f"Bearer {token}"})).json()
    assert (seen["smtp"]["host"], seen["smtp"]["user"]) == ("(hidden)", "(hidden)")
    assert "password_file" not in seen["smtp"]
    seen = (await cloud_client.get(url, headers=ADMIN_HEADERS)).json()
    assert (seen["smtp"]["host"], seen["smtp"]["user"]) == ("mail.plant.local", "mes")

    secret = tmp_path / "smtp_password"
    secret.write_text("s3cret\n", encoding="utf-8")
    monkeypatch.setenv(SMTP_PASSWORD_FILE_ENV, str(secret))
    assert smtp_password() == "s3cret"
    monkeypatch.setenv(SMTP_PASSWORD_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(SmtpPasswordUnreadable) as caught:
        smtp_password()
    assert str(tmp_path) not in str(caught.value)


async def test_a_gateway_going_away_mid_upload_is_no_server_error(cloud_client: Any) -> None:
    """A raw ASGI call whose body ends in ``http.disconnect``: logged at info, no traceback,
    no ``request_failed``."""
    body = batch_bytes("gw-test", [record(1)])
    messages = [{"type": "http.request", "body": body[:10], "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/api/v1/ingest", "raw_path":
             b"/api/v1/ingest", "query_string": b"", "root_path": "", "server": ("cloud", 80),
             "client": ("127.0.0.1", 5000), "headers": [
                 (b"authorization", f"Bearer {cloud_client.token}".encode()),
                 (b"content-type", b"application/msgpack"),
                 (b"content-length", str(len(body)).encode())]}
    with structlog.testing.capture_logs() as logs:
        await cloud_client.app(scope, receive, send)
    events = {e["event"]: e for e in logs}
    assert "request_failed" not in events, logs
    assert events["client_disconnected"]["log_level"] == "info"
    assert "exc_info" not in events["client_disconnected"]
    assert not sent
