"""The edge's /healthz verdict (edge.status.health) from status snapshots, and the status
server answering it: 200 {"status": "ok"} or 503 with each problem's check and reason."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from edge.status import StatusServer, health

OK: dict[str, Any] = {
    "devices": {"cnc-01": {"online": False}},   # a silent PLC is not the daemon's ill health
    "buffer": {"backlog": 3, "oldest_age_s": 2.0, "write_error": None, "stalled_s": 0.0},
    "uplink": {"state": "backing_off", "last_error": "connection refused"},
    "pollers": {"buses": 1, "running": 1},
}


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    return {k: {**OK[k], **sections.get(k, {})} if k in sections else v for k, v in OK.items()}


def checks(snap: dict[str, Any]) -> list[str]:
    return [p["check"] for p in health(snap, stall_s=30, uplink_late_s=600)]


def test_a_running_daemon_is_healthy() -> None:
    assert health(OK) == []


@pytest.mark.parametrize(("snap", "check", "words"), [
    (_with(buffer={"write_error": "disk full (SQLITE_FULL)"}), "buffer", "disk full"),
    (_with(buffer={"stalled_s": 31.0}), "buffer", "waited 31 s"),
    (_with(uplink={"state": "auth_failed", "last_error": "HTTP 401"}), "uplink", "HTTP 401"),
    (_with(uplink={"state": "error", "error": "zeroconf off", "last_error": None}), "uplink",
     "zeroconf off"),
    (_with(buffer={"oldest_age_s": 601.0}), "uplink", "601 s old"),
    (_with(uplink={"state": "discovering"}, buffer={"oldest_age_s": 900.0}), "uplink",
     "discovering"),
    (_with(pollers={"running": 0}), "pollers", "no device poll loop"),
], ids=["disk-full", "stalled", "auth", "uplink-error", "uplink-late", "no-cloud", "pollers"])
def test_each_kind_of_ill_health(snap: dict[str, Any], check: str, words: str) -> None:
    problems = health(snap, stall_s=30, uplink_late_s=600)
    assert [p["check"] for p in problems] == [check]
    assert words in problems[0]["reason"]


def test_a_late_backlog_is_no_problem_while_the_uplink_delivers() -> None:
    assert checks(_with(buffer={"oldest_age_s": 5000.0}, uplink={"state": "draining"})) == []
    assert checks(_with(buffer={"oldest_age_s": 5000.0, "backlog": 0})) == []


async def test_healthz_answers_503_with_the_reasons_then_200() -> None:
    snap = _with(buffer={"write_error": "disk full"})
    async with StatusServer(lambda: snap, port=0) as server, httpx.AsyncClient() as client:
        url = f"http://127.0.0.1:{server.port}/healthz"
        res = await client.get(url)
        assert res.status_code == 503
        assert res.json() == {"status": "unhealthy", "problems": [
            {"check": "buffer", "reason": "cannot store records: disk full"}]}
        snap = OK
        res = await client.get(url)
        assert (res.status_code, res.json()) == (200, {"status": "ok"})
