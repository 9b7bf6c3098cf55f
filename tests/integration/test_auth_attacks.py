"""Issue 12, items 3, 4, 5, 7, 8, 14, 17: the cloud's logins, session cookie, API tokens,
request bodies and serve options under attack, on SQLite and PostgreSQL.

In-process (``cloud_client``) where the app alone is at stake; a real ``plantsync-cloud
serve`` (``cloud_server``, and one started here with HTTPS) where concurrency, raw HTTP or
uvicorn's options are.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cloud.auth import MAX_FAILURES_PER_NAME
from cloud.auth import users as auth_users
from cloud.core.db import Database
from cloud.core.models import LoginAttempt
from tests.fixtures.cloud import ADMIN_HEADERS, ADMIN_TOKEN, CLI, CloudServer, add_admin
from tests.services import free_port, wait_port

PASSWORD = "correct horse battery"
WRONG = "not-the-password"
# the tests on real servers share them: one worker, so each server starts once
on_servers = pytest.mark.xdist_group("auth_attacks_servers")
EVIL = "http://evil.example"


@pytest.fixture
async def client(cloud_client: Any) -> AsyncIterator[Any]:
    cloud_client.headers.pop("Authorization", None)
    yield cloud_client


def from_address(client: Any, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=client.app, client=(host, 4242)),
                             base_url="http://cloud")


async def add_user(client: httpx.AsyncClient, name: str, role: str = "planner",
                   headers: dict[str, str] = ADMIN_HEADERS) -> None:
    res = await client.post("/api/v1/users", headers=headers,
                            json={"name": name, "role": role, "password": PASSWORD})
    assert res.status_code == 201, res.text


async def attempts(db_url: str, name: str) -> list[LoginAttempt]:
    async with Database(db_url) as db, db.sessions() as session:
        return list((await session.execute(select(LoginAttempt).where(
            LoginAttempt.name == name).order_by(LoginAttempt.id))).scalars())


def login(client: httpx.AsyncClient, name: str, password: str, **kw: Any) -> Any:
    return client.post("/api/v1/login", json={"name": name, "password": password}, **kw)


# -- 3: lockouts --------------------------------------------------------------------------

async def test_an_attacker_locks_only_their_own_address_for_doubling_times(client: Any):
    await add_user(client, "victim")
    async with from_address(client, "192.0.2.1") as attacker:
        for _ in range(MAX_FAILURES_PER_NAME):
            assert (await login(attacker, "victim", WRONG)).status_code == 401
        first = await login(attacker, "victim", PASSWORD)  # even the right one: refused
        assert first.status_code == 429 and 590 <= int(first.headers["retry-after"]) <= 601
        for _ in range(3):  # refusals neither count nor extend the lock
            again = await login(attacker, "victim", WRONG)
            assert again.status_code == 429
            assert int(again.headers["retry-after"]) <= int(first.headers["retry-after"])
        # the victim, from an address that has not failed
        assert (await login(client, "victim", PASSWORD)).status_code == 200
        assert [a.ok for a in await attempts(client.app.state.db.url, "victim")] == \
            [False] * MAX_FAILURES_PER_NAME + [True]
        # the lock runs out (the failures moved 601 s back); the next failure locks twice
        # as long
        async with client.app.state.db.sessions() as session, session.begin():
            for row in (await session.execute(select(LoginAttempt))).scalars():
                row.ts -= timedelta(seconds=601)
        assert (await login(attacker, "victim", WRONG)).status_code == 401
        doubled = await login(attacker, "victim", PASSWORD)
        assert doubled.status_code == 429 and 1190 <= int(doubled.headers["retry-after"]) <= 1201


# -- 4: argon2 off the event loop, no connection held ---------------------------------------

async def test_the_password_hash_runs_in_a_thread_holding_no_connection(
        client: Any, monkeypatch: pytest.MonkeyPatch):
    await add_user(client, "hasher")
    real = auth_users.password_hasher
    pool = client.app.state.db.engine.pool
    seen: list[tuple[bool, int]] = []

    class Watching:
        def verify(self, password_hash: str, password: str) -> bool:
            seen.append((threading.current_thread() is threading.main_thread(),
                         pool.checkedout()))
            return real.verify(password_hash, password)

        def check_needs_rehash(self, password_hash: str) -> bool:
            return real.check_needs_rehash(password_hash)

    monkeypatch.setattr(auth_users, "password_hasher", Watching())
    assert (await login(client, "hasher", WRONG)).status_code == 401
    assert (await login(client, "hasher", PASSWORD)).status_code == 200
    assert (await login(client, "nobody", PASSWORD)).status_code == 401
    assert seen == [(False, 0)] * 3


# -- 5: cross-site API requests with the session cookie -----------------------------------------

async def test_cookie_requests_from_another_site_are_refused(client: Any):
    await add_user(client, "planner1")
    res = await login(client, "planner1", PASSWORD)
    csrf = res.headers["x-csrf-token"]
    release = "/api/v1/work-orders/WO-NONE/release"
    text = {"Content-Type": "text/plain"}
    for headers in ({"Origin": EVIL}, {"Origin": "http://cloud:8081"}, {"Origin": "null"},
                    {"Referer": f"{EVIL}/page"}, {"Origin": EVIL, "X-CSRF-Token": "forged"}):
        refused = await client.post(release, content="x", headers={**text, **headers})
        assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed", headers
    upload = await client.post("/api/v1/import/work-orders", headers={"Origin": EVIL},
                               files={"file": ("wo.csv", b"number,product,quantity\n")})
    assert upload.status_code == 403 and upload.json()["error"] == "csrf_failed"
    assert (await client.put("/api/v1/me/locale", json={"locale": "en"},
                             headers={"Origin": EVIL})).status_code == 403
    # the session's own token, this origin, reading, or an API token: through to the route
    for headers in ({"X-CSRF-Token": csrf, "Origin": EVIL}, {"Origin": "http://cloud"},
                    {"Referer": "http://cloud/work-orders"}):
        res = await client.post(release, content="x", headers={**text, **headers})
        assert res.status_code in (404, 422), (headers, res.text)
    assert (await client.get("/api/v1/me", headers={"Origin": EVIL})).headers[
        "x-csrf-token"] == csrf
    client.cookies.clear()
    res = await client.post(release, headers={**ADMIN_HEADERS, "Origin": EVIL})
    assert res.status_code == 404
    # nor may another site log a browser in
    assert (await login(client, "planner1", PASSWORD, headers={"Origin": EVIL})
            ).status_code == 403


# -- 7: API tokens die with a password reset or a disable; admins see and revoke them ------------

async def test_reset_and_disable_revoke_tokens_and_admins_manage_them(client: Any):
    await add_user(client, "ma")
    await add_user(client, "viewer1", "viewer")

    async def new_token() -> dict[str, str]:
        async with from_address(client, "10.9.9.9") as c:
            assert (await login(c, "ma", PASSWORD)).status_code == 200
            res = await c.post("/api/v1/me/tokens", json={"name": "script"})
        return {"Authorization": f"Bearer {res.json()['token']}", "id": str(res.json()["id"])}

    async def works(token: dict[str, str]) -> bool:
        res = await client.get("/api/v1/me", headers={"Authorization": token["Authorization"]})
        assert res.status_code == 200 or res.json()["error"] == "revoked_token", res.text
        return res.status_code == 200

    one = await new_token()
    listed = await client.get("/api/v1/users/ma/tokens", headers=ADMIN_HEADERS)
    assert [(t["id"], t["revoked_at"]) for t in listed.json()["items"]] == [(int(one["id"]), None)]
    res = await client.delete(f"/api/v1/users/ma/tokens/{one['id']}", headers=ADMIN_HEADERS)
    assert res.status_code == 200 and not await works(one)
    assert (await client.delete("/api/v1/users/ma/tokens/999999", headers=ADMIN_HEADERS)
            ).json()["error"] == "unknown_token"
    assert (await client.get("/api/v1/users/nobody/tokens", headers=ADMIN_HEADERS)
            ).json()["error"] == "unknown_user"
    async with from_address(client, "10.8.8.8") as c:
        assert (await login(c, "viewer1", PASSWORD)).status_code == 200
        assert (await c.get("/api/v1/users/ma/tokens")).status_code == 403

    two = await new_token()
    assert await works(two)
    assert (await client.post("/api/v1/users/ma/password", headers=ADMIN_HEADERS,
                              json={"password": PASSWORD})).status_code == 200
    assert not await works(two)

    three = await new_token()
    await client.patch("/api/v1/users/ma", headers=ADMIN_HEADERS, json={"disabled": True})
    await client.patch("/api/v1/users/ma", headers=ADMIN_HEADERS, json={"disabled": False})
    assert not await works(three)  # re-enabled, the old token stays dead
    assert await works(await new_token())


# -- 8: bodies capped by route before they are read --------------------------------------------

async def test_bodies_over_their_routes_cap_are_refused_before_reading(client: Any):
    async def streamed(size: int) -> AsyncIterator[bytes]:  # chunked: no Content-Length
        for _ in range(size // 65536):
            yield b" " * 65536

    too_big = {"error": "too_large"}
    res = await client.post("/api/v1/login", content=b" " * (17 * 1024),
                            headers={"Content-Type": "application/json"})
    assert res.status_code == 413 and res.json().items() >= too_big.items()
    res = await client.post("/login", content=streamed(128 * 1024),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert res.status_code == 413
    res = await client.post("/api/v1/work-orders", content=streamed(2 * 1024 * 1024),
                            headers={"Content-Type": "application/json"})
    assert res.status_code == 413 and "detail" in res.json()  # before the 401
    # an import may be larger than a JSON body (read whole, then refused: not logged in)
    res = await client.post("/api/v1/import/work-orders",
                            files={"file": ("wo.csv", b"x" * (2 * 1024 * 1024))})
    assert res.status_code == 401


def _raw_post(port: int, path: str, declared: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {declared}\r\n\r\n{{".encode())
        answer = b""
        while b"}" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


@on_servers
def test_a_declared_300_mb_body_is_refused_at_once(cloud_server: CloudServer):
    port = int(cloud_server.url.rsplit(":", 1)[1])
    for path in ("/api/v1/login", "/api/v1/import/work-orders"):
        answer = _raw_post(port, path, 300_000_000)
        assert answer.startswith(b"HTTP/1.1 413") and b'"too_large"' in answer, answer


# -- 4: concurrent guesses, against a real server ------------------------------------------------

@on_servers
async def test_concurrent_guesses_are_checked_at_most_the_limit(cloud_server: CloudServer):
    name = "target"
    async with httpx.AsyncClient(base_url=cloud_server.url, timeout=60,
                                 limits=httpx.Limits(max_connections=60)) as api:
        await add_user(api, name, headers=cloud_server.admin_headers)
        answers = await asyncio.gather(*(login(api, name, f"guess-{i:04}-x")
                                         for i in range(60)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [401] * MAX_FAILURES_PER_NAME + [429] * (60 - MAX_FAILURES_PER_NAME)
        # the service kept answering others meanwhile
        assert (await api.get("/api/v1/me", headers=cloud_server.admin_headers)
                ).status_code == 200
    assert len(await attempts(cloud_server.db_url, name)) == MAX_FAILURES_PER_NAME


# -- 14, 17: forwarded headers, docs, HTTPS -----------------------------------------------------

@on_servers
async def test_forwarded_for_is_ignored_without_a_trusted_proxy(cloud_server: CloudServer):
    name = "spoofed"
    async with httpx.AsyncClient(base_url=cloud_server.url, timeout=30) as api:
        await add_user(api, name, headers=cloud_server.admin_headers)
        for i in range(MAX_FAILURES_PER_NAME):
            res = await login(api, name, WRONG, headers={"X-Forwarded-For": f"203.0.113.{i}"})
            assert res.status_code == 401
        res = await login(api, name, WRONG, headers={"X-Forwarded-For": "203.0.113.99"})
        assert res.status_code == 429
        assert (await api.get("/openapi.json")).status_code == 200  # docs open by default
    assert {a.address for a in await attempts(cloud_server.db_url, name)} == {"127.0.0.1"}


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``serve`` on SQLite with HTTPS (a self-signed certificate), 127.0.0.1 as trusted
    proxy and the docs behind a login: (https URL, database URL)."""
    directory = tmp_path_factory.mktemp("https")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    db_url = f"sqlite+aiosqlite:///{directory / 'cloud.db'}"
    env = {k: v for k, v in os.environ.items() if k != "PLANTSYNC_CLOUD_DB"}
    subprocess.run([*CLI, "migrate", "--db", db_url], env=env, check=True,
                   capture_output=True, timeout=120)
    asyncio.run(add_admin(db_url))
    port = free_port()
    log_path = directory / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--db", db_url, "--port", str(port), "--no-zeroconf",
             "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
             "--trusted-proxy", "127.0.0.1", "--docs", "login"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    try:
        wait_port(port)
        yield f"https://127.0.0.1:{port}", db_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        print(Path(log_path).read_text(errors="replace"))


@on_servers
async def test_https_serve_with_a_trusted_proxy_and_docs_behind_login(
        https_server: tuple[str, str]):
    url, db_url = https_server
    async with httpx.AsyncClient(base_url=url, verify=False, timeout=30) as api:
        assert (await api.get("/openapi.json")).status_code == 401
        docs = await api.get("/docs")
        assert docs.status_code == 303 and docs.headers["location"] == "/login?next=%2Fdocs"
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        assert (await api.get("/openapi.json", headers=admin)).json()["info"]["title"]
        assert (await api.get("/redoc", headers=admin)).status_code == 200
        await add_user(api, "tls", headers=admin)
        res = await login(api, "tls", PASSWORD)
        assert res.status_code == 200 and "secure" in res.headers["set-cookie"].lower()
        assert (await api.get("/docs")).status_code == 200  # with the session
        res = await login(api, "tls", WRONG, headers={"X-Forwarded-For": "198.51.100.7"})
        assert res.status_code == 401
    assert [a.address for a in await attempts(db_url, "tls")] == ["127.0.0.1", "198.51.100.7"]
