"""Users, roles, sessions, API tokens and rate-limited logins, on SQLite and PostgreSQL.

Through the in-process app (``cloud_client``: a gateway ``gw-test`` and the admin user
with ``ADMIN_TOKEN``) and, for the CLI, ``plantsync-cloud`` subprocesses.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends
from sqlalchemy import select

from cloud.api.deps import require
from cloud.auth import MAX_FAILURES_PER_ADDRESS, MAX_FAILURES_PER_NAME, Actor
from cloud.core.audit import audit
from cloud.core.db import Database
from cloud.core.models import ApiToken, AuditEntry, LoginAttempt, Session, User
from tests.fixtures.cloud import ADMIN_HEADERS, CLI

PASSWORD = "correct horse battery"


@pytest.fixture
async def client(cloud_client: Any) -> AsyncIterator[Any]:
    """``cloud_client`` without the gateway's Authorization header (tests choose)."""
    cloud_client.headers.pop("Authorization", None)
    yield cloud_client


def other_address(client: Any, host: str) -> httpx.AsyncClient:
    """A client of the same app that connects from ``host``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app, client=(host, 4242)),
                             base_url="http://cloud")


async def add_user(client: Any, name: str, role: str = "viewer",
                   password: str = PASSWORD) -> None:
    res = await client.post("/api/v1/users", headers=ADMIN_HEADERS,
                            json={"name": name, "role": role, "password": password})
    assert res.status_code == 201, res.text


async def token_for(client: Any, name: str) -> dict[str, str]:
    """Log ``name`` in on a separate cookie jar and make an API token."""
    async with other_address(client, "10.9.9.9") as c:
        assert (await c.post("/api/v1/login", json={"name": name, "password": PASSWORD})
                ).status_code == 200
        res = await c.post("/api/v1/me/tokens", json={"name": "script"})
    assert res.status_code == 201, res.text
    return {"Authorization": f"Bearer {res.json()['token']}"}


async def rows(client: Any, model: Any, *where: Any) -> list[Any]:
    db: Database = client.app.state.db
    async with db.sessions() as session:
        return list((await session.execute(select(model).where(*where).order_by(
            *model.__table__.primary_key.columns))).scalars())


async def test_login_me_locale_logout(client: Any):
    await add_user(client, "li.wei", "planner")
    res = await client.post("/api/v1/login", json={"name": "li.wei", "password": PASSWORD})
    assert res.status_code == 200
    assert res.json() == {"name": "li.wei", "role": "planner", "locale": None}
    cookie = res.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie
    me = await client.get("/api/v1/me")
    assert me.json() == {"name": "li.wei", "role": "planner", "locale": None, "kind": "user"}
    assert (await client.put("/api/v1/me/locale", json={"locale": "zh-CN"})).status_code == 200
    bad = await client.put("/api/v1/me/locale", json={"locale": "fr"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert (await client.get("/api/v1/me")).json()["locale"] == "zh-CN"
    relogin = await client.post("/api/v1/login", json={"name": "li.wei", "password": PASSWORD})
    assert relogin.json()["locale"] == "zh-CN"
    assert (await client.post("/api/v1/logout")).status_code == 200
    client.cookies.clear()
    gone = await client.get("/api/v1/me")
    assert gone.status_code == 401 and gone.json()["error"] == "missing_token"
    # an old cookie after logout is refused
    res = await client.post("/api/v1/login", json={"name": "li.wei", "password": PASSWORD})
    secret = res.cookies["plantsync_session"]
    await client.post("/api/v1/logout")
    client.cookies.set("plantsync_session", secret)
    assert (await client.get("/api/v1/me")).json()["error"] == "session_expired"


async def test_secure_cookie_over_https(client: Any):
    await add_user(client, "sec")
    res = await client.post("https://cloud/api/v1/login",
                            json={"name": "sec", "password": PASSWORD})
    assert res.status_code == 200 and "secure" in res.headers["set-cookie"].lower()


async def test_wrong_password_and_unknown_user_look_alike(client: Any):
    await add_user(client, "wang")
    wrong = await client.post("/api/v1/login", json={"name": "wang", "password": "x" * 12})
    unknown = await client.post("/api/v1/login", json={"name": "nobody", "password": "x" * 12})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"error": "bad_credentials",
                                              "detail": "wrong user name or password"}
    attempts = await rows(client, LoginAttempt)
    assert sorted((a.name, a.ok, a.address) for a in attempts) == [
        ("nobody", False, "127.0.0.1"), ("wang", False, "127.0.0.1")]
    entries = await rows(client, AuditEntry, AuditEntry.action == "login.failed")
    assert {e.entity_id for e in entries} == {"wang", "nobody"}
    assert all(e.detail["reason"] == "bad_credentials" for e in entries)


async def test_rate_limit_per_user(client: Any):
    await add_user(client, "zhao")
    # a success resets the count
    for _ in range(MAX_FAILURES_PER_NAME - 1):
        await client.post("/api/v1/login", json={"name": "zhao", "password": "nope-nope-1"})
    assert (await client.post("/api/v1/login", json={"name": "zhao", "password": PASSWORD})
            ).status_code == 200
    for _ in range(MAX_FAILURES_PER_NAME):
        res = await client.post("/api/v1/login", json={"name": "zhao", "password": "nope-nope"})
        assert res.status_code == 401
    blocked = await client.post("/api/v1/login", json={"name": "zhao", "password": PASSWORD})
    assert blocked.status_code == 429 and blocked.json()["error"] == "too_many_attempts"
    assert 500 <= int(blocked.headers["retry-after"]) <= 601
    # only from this address (issue 12 item 3: nobody can lock a user out from elsewhere),
    # while another user logs in fine from here
    async with other_address(client, "10.0.0.7") as elsewhere:
        res = await elsewhere.post("/api/v1/login", json={"name": "zhao", "password": PASSWORD})
        assert res.status_code == 200
    await add_user(client, "qian")
    assert (await client.post("/api/v1/login", json={"name": "qian", "password": PASSWORD})
            ).status_code == 200
    limited = await rows(client, AuditEntry, AuditEntry.action == "login.failed",
                         AuditEntry.entity_id == "zhao")
    assert [e.detail["reason"] for e in limited].count("rate_limited") == 1
    # a refused attempt is audited, not counted as an attempt (issue 12 item 3)
    assert len(await rows(client, LoginAttempt, LoginAttempt.name == "zhao")) == 11


async def test_rate_limit_per_address(client: Any):
    await add_user(client, "sun")
    async with other_address(client, "192.0.2.66") as sprayer:
        for i in range(MAX_FAILURES_PER_ADDRESS):
            res = await sprayer.post("/api/v1/login",
                                     json={"name": f"guess{i}", "password": "hunter2hunter2"})
            assert res.status_code == 401
        res = await sprayer.post("/api/v1/login", json={"name": "sun", "password": PASSWORD})
        assert res.status_code == 429 and int(res.headers["retry-after"]) > 0
    # the user is not locked out from elsewhere
    assert (await client.post("/api/v1/login", json={"name": "sun", "password": PASSWORD})
            ).status_code == 200
    entries = await rows(client, AuditEntry, AuditEntry.action == "login.failed",
                         AuditEntry.entity_id == "sun")
    assert [(e.actor, e.detail) for e in entries] == [
        ("login:192.0.2.66", {"address": "192.0.2.66", "reason": "rate_limited"})]


async def test_disabled_user(client: Any):
    await add_user(client, "zhou", "planner")
    token = await token_for(client, "zhou")
    assert (await client.post("/api/v1/login", json={"name": "zhou", "password": PASSWORD})
            ).status_code == 200
    res = await client.patch("/api/v1/users/zhou", headers=ADMIN_HEADERS,
                             json={"disabled": True})
    assert res.status_code == 200 and res.json()["disabled"] is True
    assert (await client.get("/api/v1/me")).status_code == 401  # session ended
    res = await client.get("/api/v1/me", headers=token)
    assert res.status_code == 401 and res.json()["error"] == "user_disabled"
    res = await client.post("/api/v1/login", json={"name": "zhou", "password": PASSWORD})
    assert res.status_code == 401 and res.json()["error"] == "user_disabled"
    await client.patch("/api/v1/users/zhou", headers=ADMIN_HEADERS, json={"disabled": False})
    # disabling revoked the token for good (issue 12 item 7)
    res = await client.get("/api/v1/me", headers=token)
    assert res.status_code == 401 and res.json()["error"] == "revoked_token"
    changes = await rows(client, AuditEntry, AuditEntry.action == "user.update")
    assert [(e.actor, e.detail) for e in changes] == [("admin", {"disabled": True}),
                                                      ("admin", {"disabled": False})]


async def test_roles_on_admin_routes_and_require(client: Any):
    await add_user(client, "viewer1", "viewer")
    await add_user(client, "planner1", "planner")
    viewer, planner = await token_for(client, "viewer1"), await token_for(client, "planner1")
    gateway = {"Authorization": f"Bearer {client.token}"}
    new = {"name": "x1", "role": "viewer", "password": PASSWORD}
    for headers in (viewer, planner):
        res = await client.post("/api/v1/users", headers=headers, json=new)
        assert res.status_code == 403 and res.json()["error"] == "forbidden"
        assert (await client.get("/api/v1/users", headers=headers)).status_code == 403
    res = await client.get("/api/v1/users", headers=gateway)
    assert res.status_code == 403 and res.json()["error"] == "gateway_not_allowed"
    assert (await client.get("/api/v1/me", headers=gateway)).status_code == 403
    assert (await client.get("/api/v1/users")).status_code == 401
    res = await client.get("/api/v1/users", headers={"Authorization": "Bearer psu_nothing"})
    assert res.status_code == 401 and res.json()["error"] == "unknown_token"
    listed = await client.get("/api/v1/users", headers=ADMIN_HEADERS)
    assert [u["name"] for u in listed.json()["items"]] == ["admin", "planner1", "viewer1"]

    # require() on routes like the other cloud modules will declare them
    app = client.app

    @app.post("/test/planner-action")
    async def planner_action(actor: Annotated[Actor, Depends(require("planner"))]
                             ) -> dict[str, Any]:
        async with app.state.db.sessions() as session, session.begin():
            await audit(session, actor, "thing.do", "thing", 7, {"why": "test"})
        return {"name": actor.name, "kind": actor.kind}

    @app.get("/test/gateway-ok")
    async def gateway_ok(actor: Annotated[Actor, Depends(require("viewer", allow_gateway=True))]
                         ) -> dict[str, Any]:
        return {"name": actor.name, "gateway_id": actor.gateway_id}

    assert (await client.post("/test/planner-action", headers=viewer)).status_code == 403
    assert (await client.post("/test/planner-action", headers=gateway)).status_code == 403
    res = await client.post("/test/planner-action", headers=planner)
    assert res.json() == {"name": "planner1", "kind": "token"}
    assert (await client.post("/test/planner-action", headers=ADMIN_HEADERS)).status_code == 200
    assert (await client.get("/test/gateway-ok", headers=gateway)).json() == {
        "name": "gateway:gw-test", "gateway_id": "gw-test"}
    assert (await client.get("/test/gateway-ok", headers=viewer)).status_code == 200
    done = await rows(client, AuditEntry, AuditEntry.action == "thing.do")
    assert [(e.actor, e.entity, e.entity_id, e.detail) for e in done] == [
        ("planner1", "thing", "7", {"why": "test"}), ("admin", "thing", "7", {"why": "test"})]
    with pytest.raises(ValueError):
        require("superuser")


async def test_admin_user_management(client: Any):
    await add_user(client, "ma", "viewer")
    dup = await client.post("/api/v1/users", headers=ADMIN_HEADERS,
                            json={"name": "ma", "role": "viewer", "password": PASSWORD})
    assert dup.status_code == 409 and dup.json()["error"] == "user_exists"
    short = await client.post("/api/v1/users", headers=ADMIN_HEADERS,
                              json={"name": "hu", "role": "viewer", "password": "short"})
    assert short.status_code == 422 and "at least 10" in short.json()["detail"]
    res = await client.patch("/api/v1/users/ma", headers=ADMIN_HEADERS, json={"role": "planner"})
    assert res.json()["role"] == "planner"
    assert (await client.patch("/api/v1/users/nobody", headers=ADMIN_HEADERS,
                               json={"role": "planner"})).status_code == 404
    # the last admin cannot be demoted or disabled
    res = await client.patch("/api/v1/users/admin", headers=ADMIN_HEADERS,
                             json={"disabled": True})
    assert res.status_code == 422 and "no enabled admin" in res.json()["detail"]
    assert (await client.get("/api/v1/me", headers=ADMIN_HEADERS)).status_code == 200
    # a new password works, the old does not, sessions end
    assert (await client.post("/api/v1/login", json={"name": "ma", "password": PASSWORD})
            ).status_code == 200
    res = await client.post("/api/v1/users/ma/password", headers=ADMIN_HEADERS,
                            json={"password": "another long one"})
    assert res.status_code == 200
    assert (await client.get("/api/v1/me")).status_code == 401
    assert (await client.post("/api/v1/login", json={"name": "ma", "password": PASSWORD})
            ).status_code == 401
    assert (await client.post("/api/v1/login",
                              json={"name": "ma", "password": "another long one"})
            ).status_code == 200
    actions = [e.action for e in await rows(client, AuditEntry, AuditEntry.entity_id == "ma")]
    assert actions[:3] == ["user.create", "user.update", "user.set_password"]


async def test_api_tokens(client: Any):
    await add_user(client, "gao", "planner")
    await add_user(client, "lin", "planner")
    token = await token_for(client, "gao")
    me = await client.get("/api/v1/me", headers=token)
    assert me.json() == {"name": "gao", "role": "planner", "locale": None, "kind": "token"}
    listed = (await client.get("/api/v1/me/tokens", headers=token)).json()["items"]
    assert len(listed) == 1 and listed[0]["name"] == "script" and "token" not in listed[0]
    assert listed[0]["last_used_at"] is not None
    token_id = listed[0]["id"]
    # another user cannot revoke it
    lin = await token_for(client, "lin")
    assert (await client.delete(f"/api/v1/me/tokens/{token_id}", headers=lin)
            ).status_code == 404
    res = await client.delete(f"/api/v1/me/tokens/{token_id}", headers=token)
    assert res.status_code == 200 and res.json()["revoked_at"]
    res = await client.get("/api/v1/me", headers=token)
    assert res.status_code == 401 and res.json()["error"] == "revoked_token"
    # a user token never ingests
    res = await client.post("/api/v1/ingest", headers={**lin, "Content-Type":
                                                       "application/msgpack"}, content=b"")
    assert res.status_code == 403 and res.json()["error"] == "not_a_gateway"
    actions = [e.action for e in await rows(client, AuditEntry, AuditEntry.entity == "api_token")]
    assert actions == ["api_token.create", "api_token.create", "api_token.revoke"]


async def test_secrets_never_stored_in_clear(client: Any):
    await add_user(client, "he", "viewer")
    token = (await token_for(client, "he"))["Authorization"].removeprefix("Bearer ")
    [user] = await rows(client, User, User.name == "he")
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
    db: Database = client.app.state.db
    async with db.sessions() as session:
        dump = repr([tuple(r) for t in (User, ApiToken, Session, AuditEntry, LoginAttempt)
                     for r in (await session.execute(select(t.__table__))).all()])
    assert PASSWORD not in dump and token not in dump
    assert token.startswith("psu_")


def cli(db_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTSYNC_CLOUD")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([*CLI, "admin", *args, "--db", db_url], input=stdin,
                          capture_output=True, text=True, timeout=60, env=env, check=False)


async def test_cli_create_user_token_password(client: Any, cloud_db_url: str):
    if cloud_db_url.startswith("sqlite"):  # refused before the database is opened: once
        short = cli(cloud_db_url, "create-user", "chen", "--role", "planner", stdin="short\n")
        assert short.returncode == 1 and "at least 10" in short.stderr
        empty = cli(cloud_db_url, "create-user", "chen", "--role", "planner", stdin="")
        assert empty.returncode == 1 and "empty" in empty.stderr
        missing = cli(cloud_db_url, "create-token", "nobody")
        assert missing.returncode == 1 and "no user 'nobody'" in missing.stderr
    ok = cli(cloud_db_url, "create-user", "chen", "--role", "planner", stdin=PASSWORD + "\n")
    assert ok.returncode == 0, ok.stderr
    res = await client.post("/api/v1/login", json={"name": "chen", "password": PASSWORD})
    assert res.json()["role"] == "planner"
    made = cli(cloud_db_url, "create-token", "chen", "--name", "erp")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["name"] == "chen" and me.json()["kind"] == "token"
    pw = cli(cloud_db_url, "set-password", "chen", stdin="brand new password\n")
    assert pw.returncode == 0, pw.stderr
    assert (await client.post("/api/v1/login",
                              json={"name": "chen", "password": "brand new password"})
            ).status_code == 200
    assert [e.actor for e in await rows(client, AuditEntry, AuditEntry.entity_id == "chen")
            ] == ["cli", "cli"]


async def test_session_expiry_idle_and_absolute(client: Any):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    await add_user(client, "tang")
    assert (await client.post("/api/v1/login", json={"name": "tang", "password": PASSWORD})
            ).status_code == 200
    db: Database = client.app.state.db
    now = datetime.now(UTC)
    async with db.sessions() as session, session.begin():  # 11 h idle: still valid, slides
        await session.execute(update(Session).values(expires_at=now + timedelta(hours=1)))
    assert (await client.get("/api/v1/me")).status_code == 200
    [row] = await rows(client, Session)
    assert row.expires_at > now + timedelta(hours=11)
    async with db.sessions() as session, session.begin():  # logged in 7 days ago: over
        await session.execute(update(Session).values(created=now - timedelta(days=7),
                                                     expires_at=now - timedelta(seconds=1)))
    res = await client.get("/api/v1/me")
    assert res.status_code == 401 and res.json()["error"] == "session_expired"


async def test_prune_job_deletes_old_attempts_and_ended_sessions(client: Any):
    """The hourly ``prune`` job: login attempts past 30 days and ended sessions go; recent
    attempts (the rate limit's window) and live sessions stay; the audit log is untouched."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from cloud.core.jobs import run_jobs_once

    await add_user(client, "pruned")
    for _ in range(2):
        assert (await client.post("/api/v1/login", json={"name": "pruned", "password": PASSWORD})
                ).status_code == 200
    assert (await client.post("/api/v1/login", json={"name": "pruned", "password": "wrong!"})
            ).status_code == 401
    db: Database = client.app.state.db
    now = datetime.now(UTC)
    first, second = await rows(client, Session)
    async with db.sessions() as session, session.begin():
        await session.execute(update(LoginAttempt).where(LoginAttempt.ok.is_(True))
                              .values(ts=now - timedelta(days=31)))
        await session.execute(update(Session).where(Session.id == first.id)
                              .values(expires_at=now - timedelta(seconds=1)))
    audit_before = len(await rows(client, AuditEntry))
    await run_jobs_once(client.app, int(now.timestamp() * 1000))
    assert [a.ok for a in await rows(client, LoginAttempt)] == [False]
    assert [s.id for s in await rows(client, Session)] == [second.id]
    assert len(await rows(client, AuditEntry)) == audit_before
    await run_jobs_once(client.app, int(now.timestamp() * 1000))    # idempotent
    assert len(await rows(client, LoginAttempt)) == 1


async def test_a_fresh_database_has_no_users_and_no_default_login(cloud_db_url: str):
    """Migrations create no user (the demo makes its own, with a password it prints), so
    no common default logs in; the API asks who is calling."""
    from cloud.app import create_app

    async with Database(cloud_db_url) as db, db.sessions() as session:
        assert (await session.execute(select(User))).all() == []
        assert (await session.execute(select(ApiToken))).all() == []
    app = create_app(cloud_db_url)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://cloud") as c:
            for name, password in (("admin", "admin"), ("admin", "password"),
                                   ("admin", "123456"), ("admin", "plantsync"),
                                   ("root", "root"), ("administrator", "admin"),
                                   ("plantsync", "plantsync"), ("demo", "demo")):
                res = await c.post("/api/v1/login", json={"name": name, "password": password})
                assert (res.status_code, res.json()["error"]) == (401, "bad_credentials"), \
                    (name, password, res.text)
                assert "plantsync_session" not in res.cookies
            res = await c.get("/api/v1/me")
            assert (res.status_code, res.json()["error"]) == (401, "missing_token")
            res = await c.get("/", follow_redirects=False)
            assert res.status_code == 303 and res.headers["location"].startswith("/login")
    finally:
        await app.state.db.dispose()
