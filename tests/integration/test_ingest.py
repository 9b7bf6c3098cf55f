"""Cloud ingest over real HTTP against a `plantsync-cloud serve` subprocess, on SQLite and
PostgreSQL (the ``cloud_server`` fixture is parametrized over both)."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import msgpack
import pytest

from tests.fixtures.cloud import CLI, CloudServer, GatewayCredentials
from tests.fixtures.ingest import batch_bytes, count_record, post_batch, record

pytestmark = pytest.mark.needs_service("postgresql")


def status(server: CloudServer, gw: GatewayCredentials) -> dict:
    res = httpx.get(f"{server.url}/api/v1/gateways/{gw.id}", headers=server.admin_headers)
    assert res.status_code == 200, res.text
    return res.json()


def test_happy_path_acks_and_status(cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    res = post_batch(cloud_server.url, cloud_gateway, [record(1), record(2, "link", {"online": True, "error": None}), record(3)])
    assert res.status_code == 200, res.text
    assert res.json() == {"acked_through": 3, "stored": 3, "duplicates": 0}
    doc = status(cloud_server, cloud_gateway)
    assert doc["last_seq"] == 3
    assert doc["records_stored"] == 3
    assert doc["gaps"] == [] and doc["missing"] == 0
    assert doc["last_seen"] is not None and doc["revoked_at"] is None


def test_answer_is_msgpack_by_default(cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    res = httpx.post(f"{cloud_server.url}/api/v1/ingest", headers=cloud_gateway.headers,
                     content=batch_bytes(cloud_gateway.id, [record(1)]))
    assert res.status_code == 200
    assert res.headers["content-type"] == "application/msgpack"
    assert msgpack.unpackb(res.content)["acked_through"] == 1
    # application/x-msgpack is accepted too
    res = httpx.post(f"{cloud_server.url}/api/v1/ingest",
                     headers={**cloud_gateway.headers, "Content-Type": "application/x-msgpack"},
                     content=batch_bytes(cloud_gateway.id, [record(2)]))
    assert msgpack.unpackb(res.content)["acked_through"] == 2


def test_replay_is_harmless(cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    batch = [record(s) for s in range(1, 11)]
    first = post_batch(cloud_server.url, cloud_gateway, batch).json()
    again = post_batch(cloud_server.url, cloud_gateway, batch).json()
    assert first == {"acked_through": 10, "stored": 10, "duplicates": 0}
    assert again == {"acked_through": 10, "stored": 0, "duplicates": 10}
    assert status(cloud_server, cloud_gateway)["records_stored"] == 10


def test_out_of_order_and_overlapping_batches(cloud_server: CloudServer,
                                              cloud_gateway: GatewayCredentials):
    def ack(seqs: range) -> int:
        res = post_batch(cloud_server.url, cloud_gateway, [record(s) for s in seqs])
        assert res.status_code == 200, res.text
        return res.json()["acked_through"]

    assert ack(range(21, 31)) == 30
    # 1..5 arrive late; 6..20 are still missing, so the ack cannot jump to 30
    assert ack(range(1, 6)) == 5
    # 6..20 close the hole: everything through 30 is held now
    assert ack(range(6, 21)) == 30
    # an overlapping resend changes nothing
    assert ack(range(15, 26)) == 30
    doc = status(cloud_server, cloud_gateway)
    assert doc["records_stored"] == 30 and doc["gaps"] == [] and doc["last_seq"] == 30


def test_token_of_another_gateway_is_refused(cloud_server: CloudServer,
                                             cloud_gateway: GatewayCredentials):
    other = cloud_server.create_gateway()
    res = post_batch(cloud_server.url, cloud_gateway, [record(1)], gateway=other.id)
    assert res.status_code == 403
    assert res.json()["error"] == "other_gateway"
    assert other.id in res.json()["detail"] and cloud_gateway.id in res.json()["detail"]
    assert status(cloud_server, other)["records_stored"] == 0
    assert status(cloud_server, cloud_gateway)["records_stored"] == 0


def test_missing_unknown_and_revoked_tokens(cloud_server: CloudServer,
                                            cloud_gateway: GatewayCredentials):
    url = f"{cloud_server.url}/api/v1/ingest"
    body = batch_bytes(cloud_gateway.id, [record(1)])
    res = httpx.post(url, content=body, headers={"Content-Type": "application/msgpack"})
    assert res.status_code == 401 and res.json()["error"] == "missing_token"
    assert res.headers["www-authenticate"] == "Bearer"
    res = httpx.post(url, content=body, headers={**cloud_gateway.headers,
                                                 "Authorization": "Bearer psg_nope"})
    assert res.status_code == 401 and res.json()["error"] == "unknown_token"

    assert post_batch(cloud_server.url, cloud_gateway, [record(1)]).status_code == 200
    out = subprocess.run([*CLI, "admin", "revoke-gateway", cloud_gateway.id, "--db",
                          cloud_server.db_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"gateway {cloud_gateway.id} revoked" in out.stdout
    res = post_batch(cloud_server.url, cloud_gateway, [record(2)])
    assert res.status_code == 401
    assert res.json()["error"] == "revoked_token" and "revoked" in res.json()["detail"]
    doc = status(cloud_server, cloud_gateway)
    assert doc["records_stored"] == 1 and doc["revoked_at"] is not None
    # a revoked token cannot read its status either
    res = httpx.get(f"{cloud_server.url}/api/v1/gateways/{cloud_gateway.id}",
                    headers=cloud_gateway.headers)
    assert res.status_code == 401


def test_bad_msgpack_and_wrong_content_type(cloud_server: CloudServer,
                                            cloud_gateway: GatewayCredentials):
    url = f"{cloud_server.url}/api/v1/ingest"
    res = httpx.post(url, headers=cloud_gateway.headers, content=b"\xc1\xc1 not msgpack")
    assert res.status_code == 400 and res.json()["error"] == "bad_msgpack"
    res = httpx.post(url, headers={**cloud_gateway.headers, "Content-Type": "application/json"},
                     content=b"{}")
    assert res.status_code == 415
    assert status(cloud_server, cloud_gateway)["records_stored"] == 0


def test_wrong_schema_names_the_field_and_stores_nothing(cloud_server: CloudServer,
                                                         cloud_gateway: GatewayCredentials):
    bad = count_record(2, "part_count", 0, 5)
    bad["body"]["delta"] = "five"
    res = post_batch(cloud_server.url, cloud_gateway, [record(1), bad])
    assert res.status_code == 422
    assert res.json()["error"] == "bad_record"
    assert res.json()["field"] == "records[1].body.delta"
    assert "records[1].body.delta" in res.json()["detail"]
    assert status(cloud_server, cloud_gateway)["records_stored"] == 0


def test_oversize_body_is_413(cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    url = f"{cloud_server.url}/api/v1/ingest"
    big = b"\x00" * (8 * 1024 * 1024 + 1)
    res = httpx.post(url, headers=cloud_gateway.headers, content=big, timeout=60)
    assert res.status_code == 413 and res.json()["error"] == "too_large"

    def chunks():  # no Content-Length: the server must count while reading
        for _ in range(9):
            yield b"\x00" * (1024 * 1024)

    res = httpx.post(url, headers=cloud_gateway.headers, content=chunks(), timeout=60)
    assert res.status_code == 413
    assert status(cloud_server, cloud_gateway)["records_stored"] == 0


def test_counters_with_reset_and_continuity_break(cloud_server: CloudServer,
                                                  cloud_gateway: GatewayCredentials):
    recs = [
        count_record(1, "part_count", 0, 5),
        record(2),
        count_record(3, "part_count", 5, 8),
        count_record(4, "scrap_count", 10, 11, counts="scrap"),
        count_record(5, "part_count", 8, 2, reset=True),      # PLC reboot: delta = 2
        count_record(6, "part_count", 2, 4),
        count_record(7, "part_count", 7, 9),                  # break: expected 4, got 7
        count_record(8, "part_count", 0, 3, device="imm-07"),  # other device
    ]
    assert post_batch(cloud_server.url, cloud_gateway, recs).json()["acked_through"] == 8
    res = httpx.get(f"{cloud_server.url}/api/v1/gateways/{cloud_gateway.id}/devices/cnc-03/counters",
                    headers=cloud_gateway.headers)
    assert res.status_code == 200, res.text
    doc = res.json()
    assert doc["totals"] == {"good": 5 + 3 + 2 + 2 + 2, "scrap": 1, "total": 0}
    part, scrap = doc["tags"]
    assert part["tag"] == "part_count" and part["counts"] == "good"
    assert part["good"] == 14 and part["records"] == 5 and part["resets"] == 1
    assert (part["first_raw"], part["last_raw"]) == (0, 9)
    assert part["breaks"] == [{"seq": 7, "ts": recs[6]["ts"], "after_seq": 6,
                               "expected_raw_before": 4, "raw_before": 7, "raw_after": 9}]
    assert scrap["tag"] == "scrap_count" and scrap["scrap"] == 1 and scrap["breaks"] == []
    assert (scrap["first_raw"], scrap["last_raw"]) == (10, 11)


def test_gaps_listing_with_explaining_gap_records(cloud_server: CloudServer,
                                                  cloud_gateway: GatewayCredentials):
    gap = record(7, "gap", {"dropped": 3, "first_seq": 4, "last_seq": 6, "reason": "quota"},
                 device="gateway")
    # the buffer dropped samples 4..6 and says so in seq 7; 9..11 are simply not here
    res = post_batch(cloud_server.url, cloud_gateway, [record(1), record(2), record(3), gap,
                                                       record(8), record(12)])
    assert res.json()["acked_through"] == 12  # holes inside a batch never block the ack
    doc = status(cloud_server, cloud_gateway)
    assert doc["last_seq"] == 12 and doc["records_stored"] == 6 and doc["missing"] == 6
    first, second = doc["gaps"]
    assert (first["first_seq"], first["last_seq"], first["missing"]) == (4, 6, 3)
    assert first["explained"] is True
    assert first["explained_by"] == [{"seq": 7, "ts": gap["ts"], "device": "gateway",
                                      "dropped": 3, "first_seq": 4, "last_seq": 6,
                                      "reason": "quota"}]
    assert (second["first_seq"], second["last_seq"]) == (9, 11)
    assert second["explained"] is False and second["explained_by"] == []
    # An empty batch asks where we are: up to the first unexplained hole.
    assert post_batch(cloud_server.url, cloud_gateway, []).json()["acked_through"] == 8


def test_first_records_missing_do_not_block_the_empty_batch_ack(
        cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    # a gateway whose buffer started before it was registered: first seq here is 100
    assert post_batch(cloud_server.url, cloud_gateway, [record(100), record(101)]).json()[
        "acked_through"] == 101
    assert post_batch(cloud_server.url, cloud_gateway, []).json()["acked_through"] == 101
    gaps = status(cloud_server, cloud_gateway)["gaps"]
    assert gaps == [{"first_seq": 1, "last_seq": 99, "missing": 99, "before_first_record": True,
                     "explained": False, "explained_by": []}]


def test_read_access(cloud_server: CloudServer, cloud_gateway: GatewayCredentials):
    other = cloud_server.create_gateway()
    base = f"{cloud_server.url}/api/v1/gateways"
    own = httpx.get(f"{base}/{cloud_gateway.id}", headers=cloud_gateway.headers)
    assert own.status_code == 200 and own.json()["id"] == cloud_gateway.id
    for path in (other.id, f"{other.id}/devices/cnc-03/counters"):
        res = httpx.get(f"{base}/{path}", headers=cloud_gateway.headers)
        assert res.status_code == 403 and res.json()["error"] == "other_gateway"
        assert httpx.get(f"{base}/{path}", headers=cloud_server.admin_headers).status_code == 200
    assert httpx.get(f"{base}/nope", headers=cloud_server.admin_headers).status_code == 404
    assert httpx.get(f"{base}/{cloud_gateway.id}").status_code == 401
    # the admin token reads but does not ingest
    res = httpx.post(f"{cloud_server.url}/api/v1/ingest",
                     headers={**cloud_server.admin_headers, "Content-Type": "application/msgpack"},
                     content=batch_bytes(cloud_gateway.id, [record(1)]))
    assert res.status_code == 403 and res.json()["error"] == "not_a_gateway"


def test_clock_skew_from_header_and_heuristic(cloud_server: CloudServer,
                                              cloud_gateway: GatewayCredentials):
    now_ms = int(time.time() * 1000)
    # the gateway's clock is 10 minutes ahead of ours and says so in the header
    sent_at = now_ms + 600_000
    post_batch(cloud_server.url, cloud_gateway, [record(1, ts=sent_at - 1000)],
               headers={"X-Plantsync-Sent-At": str(sent_at)})
    doc = status(cloud_server, cloud_gateway)
    assert doc["clock_skew_exact"] is True
    assert -600_000 <= doc["clock_skew_ms"] < 0  # received after sent_at - 600 s
    # a backlog from yesterday without the header says nothing about the clock
    post_batch(cloud_server.url, cloud_gateway, [record(2, ts=now_ms - 86_400_000)])
    doc2 = status(cloud_server, cloud_gateway)
    assert (doc2["clock_skew_ms"], doc2["clock_skew_exact"]) == (doc["clock_skew_ms"], True)
    # a record from the future is always the gateway's clock
    post_batch(cloud_server.url, cloud_gateway, [record(3, ts=now_ms + 3_600_000)])
    doc3 = status(cloud_server, cloud_gateway)
    assert doc3["clock_skew_exact"] is False and doc3["clock_skew_ms"] < -3_000_000
    res = post_batch(cloud_server.url, cloud_gateway, [record(4)],
                     headers={"X-Plantsync-Sent-At": "yesterday"})
    assert res.status_code == 400


def test_admin_cli_prints_token_on_last_line(cloud_server: CloudServer):
    out = subprocess.run([*CLI, "admin", "create-gateway", "gw-cli-made", "--db",
                          cloud_server.db_url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.rstrip("\n").split("\n")
    token = lines[-1]
    assert token.startswith("psg_") and " " not in token and len(token) > 40
    assert token not in "\n".join(lines[:-1])
    gw = GatewayCredentials("gw-cli-made", token)
    assert post_batch(cloud_server.url, gw, [record(1)]).json()["acked_through"] == 1
    again = subprocess.run([*CLI, "admin", "create-gateway", "gw-cli-made", "--db",
                            cloud_server.db_url], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert again.stdout == ""
    rotated = subprocess.run([*CLI, "admin", "create-gateway", "gw-cli-made", "--rotate",
                              "--db", cloud_server.db_url], capture_output=True, text=True,
                             timeout=60)
    assert rotated.returncode == 0, rotated.stderr
    new = GatewayCredentials("gw-cli-made", rotated.stdout.strip().split("\n")[-1])
    assert post_batch(cloud_server.url, gw, [record(2)]).status_code == 401
    assert post_batch(cloud_server.url, new, [record(2)]).json()["acked_through"] == 2


def test_concurrent_gateways(cloud_server: CloudServer):
    gws = [cloud_server.create_gateway() for _ in range(6)]

    def drain(gw: GatewayCredentials) -> int:
        acked = 0
        for start in range(1, 2001, 250):
            res = post_batch(cloud_server.url, gw, [record(s) for s in range(start, start + 250)])
            assert res.status_code == 200, res.text
            acked = res.json()["acked_through"]
        return acked

    with ThreadPoolExecutor(len(gws)) as pool:
        assert list(pool.map(drain, gws)) == [2000] * len(gws)
    for gw in gws:
        assert status(cloud_server, gw)["records_stored"] == 2000
    assert "Traceback" not in cloud_server.log(), cloud_server.log()[-3000:]



def _post_numbered(server: CloudServer, gw: GatewayCredentials, records: list[dict],
                   incarnation: str, since: int) -> httpx.Response:
    body = msgpack.packb({"v": 1, "gateway": gw.id, "records": records,
                          "incarnation": incarnation, "since": since}, use_bin_type=True)
    return httpx.post(f"{server.url}/api/v1/ingest", content=body, timeout=60,
                      headers={**gw.headers, "Accept": "application/json"})


def test_reused_seq_with_other_content_is_refused_not_acked(cloud_server: CloudServer):
    # A gateway that lost its buffer (and sends no incarnation: an older gateway) restarts
    # at seq 1: the cloud must not ack its new records as duplicates of the old ones.
    gw = cloud_server.create_gateway()
    assert post_batch(cloud_server.url, gw, [record(s) for s in range(1, 6)]).status_code == 200
    reused = [record(s, ts=1_800_000_000_000 + s) for s in range(1, 4)]
    res = post_batch(cloud_server.url, gw, reused)
    assert res.status_code == 409, res.text
    doc = res.json()
    assert doc["error"] == "seq_conflict" and doc["cloud_last_seq"] == 5
    # the same content again is still a harmless replay
    again = post_batch(cloud_server.url, gw, [record(s) for s in range(1, 6)]).json()
    assert again == {"acked_through": 5, "stored": 0, "duplicates": 5}
    rows = status(cloud_server, gw)
    assert rows["records_stored"] == 5 and rows["last_seq"] == 5


def test_new_buffer_numbering_is_refused_until_it_resumes_above_the_cloud(
        cloud_server: CloudServer):
    gw = cloud_server.create_gateway()
    # the first buffer (a fresh one: since 1) is adopted
    res = _post_numbered(cloud_server, gw, [record(s) for s in range(1, 11)], "aaaa", 1)
    assert res.json()["acked_through"] == 10
    # the buffer is lost; the new one starts at 1 again, with records that happen to be
    # equal to the old ones (content alone could not tell): refused, nothing stored
    res = _post_numbered(cloud_server, gw, [record(s) for s in range(1, 4)], "bbbb", 1)
    assert res.status_code == 409, res.text
    assert res.json()["cloud_last_seq"] == 10 and res.json()["incarnation"] == "bbbb"
    # a later batch of that numbering (MQTT in flight) that lies above the cloud: refused too
    res = _post_numbered(cloud_server, gw, [record(s) for s in range(11, 13)], "bbbb", 1)
    assert res.status_code == 409
    # renumbered above the cloud's highest seq behind a gap record: accepted
    gap = record(11, "gap", {"dropped": 0, "first_seq": None, "last_seq": None,
                             "reason": "buffer_lost: test"})
    res = _post_numbered(cloud_server, gw, [gap, *(record(s) for s in range(12, 15))],
                         "cccc", 11)
    assert res.status_code == 200 and res.json() == {"acked_through": 14, "stored": 4,
                                                    "duplicates": 0}
    # the refused numbering stays refused; the old one too
    assert _post_numbered(cloud_server, gw, [record(1)], "bbbb", 1).status_code == 409
    assert _post_numbered(cloud_server, gw, [record(15)], "aaaa", 1).status_code == 409
    doc = status(cloud_server, gw)
    assert doc["records_stored"] == 14 and doc["last_seq"] == 14 and doc["missing"] == 0


def test_a_gateway_from_before_incarnations_is_adopted(cloud_server: CloudServer):
    gw = cloud_server.create_gateway()
    assert post_batch(cloud_server.url, gw, [record(s) for s in range(1, 6)]).status_code == 200
    # upgraded: its buffer continues the known numbering (since 0)
    res = _post_numbered(cloud_server, gw, [record(s) for s in range(4, 8)], "dddd", 0)
    assert res.json() == {"acked_through": 7, "stored": 2, "duplicates": 2}
