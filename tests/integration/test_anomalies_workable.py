"""Anomalies people can work (issue 13), records through ingest (in-process ASGI, SQLite):
a limit excursion raises only once it has lasted ``limit_min_duration_s`` (at its end, from
a later record of the batch, or by the sweep); cleared alarms and limits close themselves;
repeats within ``fold_window_s`` fold into one anomaly; bulk acknowledge and close per id;
titles and history rendered in the caller's language.

Machine M1 is gw-test/cnc-03; T0 is two days ago (late data), minute by minute."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cloud.anomalies import sweep
from tests.fixtures import ingest as wire
from tests.fixtures.ingest import record
from tests.fixtures.plant import add_machine, now_ms

pytestmark = pytest.mark.parametrize("cloud_db_url", ["sqlite"], indirect=True)
S = 1000
MIN = 60 * S
ZH = {"Accept-Language": "zh-CN,zh;q=0.9"}


def limit(seq: int, ts: int, tag: str, value: float, active: bool) -> dict[str, Any]:
    return record(seq, "limit", {"tag": tag, "value": value, "lo": 10.0, "hi": 65.0,
                                 "active": active}, ts=ts)


def alarm(seq: int, ts: int, active: bool, code: int = 1001) -> dict[str, Any]:
    return record(seq, "alarm", {"code": code, "text": "", "active": active}, ts=ts)


async def ingest(api: Any, records: list[dict[str, Any]]) -> None:
    await wire.ingest(api, records, sent_at=now_ms())


async def listed(api: Any, headers: dict[str, str] | None = None,
                 **params: Any) -> list[dict[str, Any]]:
    res = await api.get("/api/v1/anomalies", params={"limit": 500, "open_first": False,
                                                     **params}, headers=headers)
    assert res.status_code == 200, res.text
    return list(res.json()["items"])


@pytest.fixture
async def m1(api: Any) -> Any:
    api.m1 = await add_machine(api, "cnc-03", "M1")
    api.T0 = now_ms() - 2 * 24 * 60 * MIN
    return api


async def test_a_limit_excursion_raises_only_after_its_minimum_duration(m1: Any) -> None:
    api, T0 = m1, m1.T0
    # 30 s over: forgotten; 90 s over: one anomaly from its start, cleared, closed by itself
    await ingest(api, [limit(1, T0, "spindle_temp", 70.0, True),
                       limit(2, T0 + 30 * S, "spindle_temp", 60.0, False),
                       limit(3, T0 + 40 * S, "spindle_load", 99.0, True),
                       limit(4, T0 + 130 * S, "spindle_load", 50.0, False)])
    [done] = await listed(api, kind="limit")
    assert (done["code"], done["ts"], done["cleared_ts"]) == ("spindle_load", T0 + 40 * S,
                                                              T0 + 130 * S)
    assert (done["status"], done["closed_by"], done["occurrences"]) == ("closed", "system", 1)
    doc = (await api.get(f"/api/v1/anomalies/{done['id']}")).json()
    assert doc["history"][-1]["text"] == "closed automatically: cause cleared"

    # going on: a later record of the same device a minute on raises it (not cleared)
    T1 = T0 + 60 * MIN
    await ingest(api, [limit(5, T1, "zone1_temp", 70.04999999999999, True),
                       record(6, ts=T1 + 30 * S)])
    assert [i["code"] for i in await listed(api, kind="limit")] == ["spindle_load"]
    await ingest(api, [record(7, ts=T1 + 61 * S)])
    ongoing = next(i for i in await listed(api, kind="limit") if i["code"] == "zone1_temp")
    assert (ongoing["ts"], ongoing["cleared_ts"], ongoing["status"]) == (T1, None, "open")
    assert ongoing["title"] == "M1: zone1_temp 70.0°C above the limit 65.0°C"
    await ingest(api, [limit(8, T1 + 5 * MIN, "zone1_temp", 60.0, False)])
    cleared = (await api.get(f"/api/v1/anomalies/{ongoing['id']}")).json()
    assert (cleared["cleared_ts"], cleared["status"]) == (T1 + 5 * MIN, "closed")

    # nothing more arrives from the gateway: the sweep raises it once due on its clock
    now = now_ms()
    await ingest(api, [limit(9, now - 10 * S, "hold_pressure", 1500.0, True)])
    await sweep(api.app.state.db, now)
    assert "hold_pressure" not in {i["code"] for i in await listed(api, kind="limit")}
    await sweep(api.app.state.db, now + 60 * S)
    assert "hold_pressure" in {i["code"] for i in await listed(api, kind="limit")}


async def test_repeats_fold_into_one_anomaly_with_a_count(m1: Any) -> None:
    api, T0 = m1, m1.T0
    burst = []
    for i in range(5):  # five times within 10 min, each cleared after 20 s
        burst += [alarm(2 * i + 1, T0 + i * 2 * MIN, True),
                  alarm(2 * i + 2, T0 + i * 2 * MIN + 20 * S, False)]
    await ingest(api, burst)
    [one] = await listed(api, kind="alarm")
    assert (one["occurrences"], one["ts"], one["last_seen_ts"]) == (5, T0, T0 + 8 * MIN)
    assert (one["status"], one["cleared_ts"]) == ("closed", T0 + 8 * MIN + 20 * S)
    # once more, still active: the same anomaly opens again
    await ingest(api, [alarm(11, T0 + 12 * MIN, True)])
    [again] = await listed(api, kind="alarm")
    assert (again["id"], again["occurrences"], again["status"], again["cleared_ts"]) == (
        one["id"], 6, "open", None)
    history = (await api.get(f"/api/v1/anomalies/{one['id']}", headers=ZH)).json()["history"]
    assert history[-1]["text"] == "再次发生(共 6 次),重新打开"
    # outside the window (30 min after its last occurrence): a new anomaly, a repeat
    await ingest(api, [alarm(12, T0 + 13 * MIN, False), alarm(13, T0 + 60 * MIN, True)])
    later = [i for i in await listed(api, kind="alarm") if i["id"] != one["id"]]
    assert [(i["occurrences"], i["repeat_of"]) for i in later] == [(1, one["id"])]
    # limit excursions fold too (each long enough to count)
    await ingest(api, [limit(20, T0, "spindle_temp", 70.0, True),
                       limit(21, T0 + 2 * MIN, "spindle_temp", 60.0, False),
                       limit(22, T0 + 5 * MIN, "spindle_temp", 72.0, True),
                       limit(23, T0 + 7 * MIN, "spindle_temp", 60.0, False)])
    [lim] = await listed(api, kind="limit")
    assert (lim["occurrences"], lim["last_seen_ts"], lim["status"]) == (2, T0 + 5 * MIN,
                                                                        "closed")


async def test_auto_close_is_a_setting_per_kind(m1: Any) -> None:
    api, T0 = m1, m1.T0
    url = "/api/v1/settings/anomalies"
    res = await api.put(url, json={"auto_close": {"nonsense": True}}, headers=api.admin)
    assert (res.status_code, res.json()["field"]) == (422, "anomalies.auto_close")
    res = await api.put(url, json={"auto_close": {"alarm": False}}, headers=api.admin)
    assert res.status_code == 200 and res.json()["auto_close"]["limit"] is True
    await ingest(api, [alarm(1, T0, True), alarm(2, T0 + MIN, False)])
    [kept] = await listed(api, kind="alarm")
    assert (kept["status"], kept["cleared_ts"]) == ("open", T0 + MIN)


async def test_bulk_acknowledge_and_close_answer_per_id(m1: Any) -> None:
    api = m1
    ids = []
    for n in range(3):
        res = await api.post("/api/v1/anomalies", json={"kind": "operator",
                                                        "title": f"no operator {n}"})
        ids.append(res.json()["id"])
    url = "/api/v1/anomalies/bulk"
    res = await api.post(url, json={"action": "acknowledge", "ids": [*ids[:2], 999_999]})
    assert res.status_code == 200, res.text
    doc = res.json()
    assert (doc["done"], doc["failed"]) == (2, 1)
    assert [(r["id"], r["ok"], r["status"], r["error"]) for r in doc["results"]] == [
        (ids[0], True, "acknowledged", None), (ids[1], True, "acknowledged", None),
        (999_999, False, None, "not_found")]
    again = (await api.post(url, json={"action": "acknowledge", "ids": [ids[0]]})).json()
    assert again["results"][0]["error"] == "invalid_state"
    # close: not resolved and no cause -> refused each; with cause and action -> closed
    refused = (await api.post(url, json={"action": "close", "ids": ids})).json()
    assert refused["failed"] == 3 and {r["error"] for r in refused["results"]} == {
        "invalid_state"}
    closed = (await api.post(url, json={"action": "close", "ids": ids, "cause": "换班",
                                        "action_taken": "补人"})).json()
    assert closed["done"] == 3 and {r["status"] for r in closed["results"]} == {"closed"}
    for bad in ({"action": "close", "ids": []}, {"action": "explode", "ids": ids},
                {"action": "close", "ids": ids, "cause": "only a cause"}):
        assert (await api.post(url, json=bad)).status_code == 422, bad
    assert (await api.post(url, json={"action": "close", "ids": ids},
                           headers=api.viewer)).status_code == 403


async def test_titles_and_history_in_the_callers_language(m1: Any) -> None:
    api, T0 = m1, m1.T0
    await ingest(api, [limit(1, T0, "spindle_temp", 70.04999999999999, True),
                       limit(2, T0 + 2 * MIN, "spindle_temp", 60.0, False),
                       alarm(3, T0 + 3 * MIN, True)])
    act = await api.post(f"/api/v1/anomalies/{(await listed(api, kind='alarm'))[0]['id']}"
                         "/acknowledge", json={"assignee": "王工"})
    assert act.status_code == 200
    zh = {i["kind"]: i for i in await listed(api, headers=ZH)}
    assert zh["limit"]["title"] == "M1:spindle_temp 70.0°C 高于上限 65.0°C"
    assert (zh["limit"]["title_code"], zh["limit"]["title_params"]["unit"]) == ("limit.high",
                                                                                "degC")
    assert zh["alarm"]["title"] == "M1:报警 1001"
    en = {i["kind"]: i for i in await listed(api)}
    assert en["limit"]["title"] == "M1: spindle_temp 70.0°C above the limit 65.0°C"
    for kind, lang, want in (("alarm", ZH, ["pat 已响应,指派给 王工"]),
                             ("alarm", None, ["pat acknowledged, assigned to 王工"]),
                             ("limit", ZH, ["自动关闭:原因已消除"])):
        doc = (await api.get(f"/api/v1/anomalies/{en[kind]['id']}", headers=lang)).json()
        texts = [h["text"] for h in doc["history"]]
        assert texts == want, texts
        raw = (await api.get(f"/api/v1/anomalies/{en[kind]['id']}", headers=lang)).text
        assert not re.search(r"\\u[0-9a-f]{4}", raw)
