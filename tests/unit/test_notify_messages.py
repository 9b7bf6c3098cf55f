"""Notification message formats (cloud/notify): pure functions, no database, no network."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import json
import random
import urllib.parse

import pytest

from cloud.notify import channels, delivery, messages, outbox
from cloud.notify.messages import AnomalyView, LinkView, Message

TS = 1_772_438_400_000  # 2026-03-02T08:00:00Z


def _anomaly(i: int = 1, *, title: str = "液压压力低 hydraulic pressure low",
             severity: str = "major") -> AnomalyView:
    return AnomalyView(i, "alarm", "E42", severity, "open", title, "注塑机 3", TS + i * 1000,
                       (LinkView("WO-2026-001", "华为", 20, "注塑"),))


def _msg(n: int = 1, **kw: object) -> Message:
    return Message("opened", tuple(_anomaly(i + 1, **kw) for i in range(n)),  # type: ignore[arg-type]
                   suppressed=n - 1, notification_id=7, cloud_url="https://mes.example.com/",
                   timezone="Asia/Shanghai")


def test_webhook_body_is_the_documented_schema() -> None:
    body = messages.webhook_body(_msg(2))
    assert body == {
        "schema": "plantsync.notification/1", "notification_id": 7, "event": "opened",
        "count": 2, "suppressed": 1, "url": "https://mes.example.com/anomalies",
        "anomalies": [{
            "id": i, "kind": "alarm", "code": "E42", "severity": "major", "status": "open",
            "title": "液压压力低 hydraulic pressure low", "machine": "注塑机 3",
            "ts": f"2026-03-02T08:00:0{i}Z", "url": f"https://mes.example.com/anomalies?id={i}#anomaly-{i}",
            "links": [{"work_order": "WO-2026-001", "customer": "华为", "step": 20,
                       "operation": "注塑"}],
        } for i in (1, 2)],
    }
    json.dumps(body)  # serializable as is


def test_chat_text_in_chinese_and_english() -> None:
    zh = messages.dingtalk_body(_msg(3), "zh-CN")
    assert zh["msgtype"] == "markdown"
    assert zh["markdown"]["title"] == "[严重] 新异常 · 注塑机 3 · 设备报警 E42 ×3"
    text = zh["markdown"]["text"]
    assert "共 3 条(已合并 2 条)" in text
    # local time (Asia/Shanghai), the order, customer and step
    assert "#1 2026-03-02 16:00:01 [严重] 液压压力低" in text
    assert "工单 WO-2026-001(客户 华为,工序 20 注塑)" in text
    assert "[在 plantsync 中查看](https://mes.example.com/anomalies)" in text
    en = messages.wecom_body(_msg(1), "en")["markdown"]["content"]
    assert en.startswith("### [Major] New anomaly · 注塑机 3 · Alarm E42")
    assert "work order WO-2026-001 (customer 华为, step 20 注塑)" in en
    assert "https://mes.example.com/anomalies?id=1#anomaly-1" in en


def test_long_storm_lists_ten_and_counts_the_rest() -> None:
    text = messages.dingtalk_body(_msg(100), "zh-CN")["markdown"]["text"]
    assert text.count("\n- #") == 10
    assert "…… 另有 90 条" in text


def test_wecom_content_is_cut_to_4096_utf8_bytes_on_a_character_boundary() -> None:
    msg = _msg(10, title="主轴过载报警" * 40)
    content = messages.wecom_body(msg, "zh-CN")["markdown"]["content"]
    raw = content.encode("utf-8")
    assert 4000 < len(raw) <= 4096
    assert content.endswith("…")
    assert raw.decode("utf-8") == content
    short = messages.wecom_body(_msg(1), "zh-CN")["markdown"]["content"]
    assert not short.endswith("…")


@pytest.mark.parametrize("limit", range(1, 12))
def test_truncate_utf8_never_splits_a_character(limit: int) -> None:
    out = messages.truncate_utf8("异常ab报警", limit)
    assert len(out.encode("utf-8")) <= max(limit, len("…".encode()))
    assert "\ufffd" not in out


def test_dingtalk_signature_follows_the_robot_docs() -> None:
    secret = "SEC0123456789abcdef"
    url = messages.dingtalk_url("https://oapi.dingtalk.com/robot/send?access_token=abc", secret, TS)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["access_token"] == ["abc"] and query["timestamp"] == [str(TS)]
    expected = base64.b64encode(hmac.new(secret.encode(), f"{TS}\n{secret}".encode(),
                                         hashlib.sha256).digest()).decode()
    assert query["sign"] == [expected]
    assert "+" not in url.split("sign=")[1] and "/" not in url.split("sign=")[1]
    assert messages.dingtalk_url("https://x/robot?access_token=abc", None, TS) == (
        "https://x/robot?access_token=abc")


def test_email_subject_and_body_survive_in_chinese() -> None:
    mail = messages.email_message(_msg(2), "zh-CN", "plantsync@example.com",
                                ["boss@example.com", "qa@example.com"])
    parsed = email.message_from_bytes(mail.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "[严重] 新异常 · 注塑机 3 · 设备报警 E42 ×2"
    assert parsed["To"] == "boss@example.com, qa@example.com"
    body = parsed.get_content()
    assert "液压压力低" in body and "工单 WO-2026-001" in body
    assert parsed.get_content_charset() == "utf-8"
    assert all(ord(c) < 128 for c in mail.as_string())   # 7-bit safe on the wire


def test_test_message() -> None:
    msg = Message("test", ())
    assert messages.headline(msg, "zh-CN") == "plantsync 测试消息"
    assert "通道“车间群”配置正确" in messages.wecom_body(msg, "zh-CN", "车间群")["markdown"]["content"]
    assert messages.webhook_body(msg)["count"] == 0


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    for attempts, full in [(1, 10), (2, 20), (3, 40), (9, 300), (30, 300)]:
        for _ in range(20):
            d = delivery.backoff_s(attempts, 10, 300, rng)
            assert full / 2 <= d <= full


def test_targets_are_masked_and_errors_redacted() -> None:
    url = "https://oapi.dingtalk.com/robot/send?access_token=0123456789abcdef"
    assert channels.mask_target("dingtalk", url) == (
        "https://oapi.dingtalk.com/robot/send?access_token=…cdef")
    assert channels.mask_target("webhook", "https://u:pw@h/x") == "https://u:…@h/x"
    ch = delivery.Channel(1, "d", "dingtalk", url, "SECsecret")
    text = delivery.redact(f"failed {url}&timestamp=1&sign=abc%2B SECsecret", ch)
    assert "0123456789abcdef" not in text and "SECsecret" not in text and "abc" not in text


def test_channel_filter() -> None:
    ch = {"enabled": True, "min_severity": "major", "kinds": None}
    assert outbox.matches(ch, "alarm", "major") and outbox.matches(ch, "alarm", "critical")
    assert not outbox.matches(ch, "alarm", "minor")
    assert not outbox.matches({**ch, "enabled": False}, "alarm", "critical")
    only = {**ch, "kinds": ["offline"]}
    assert outbox.matches(only, "offline", "critical") and not outbox.matches(only, "alarm", "critical")


def test_group_key_is_machine_and_code_and_event() -> None:
    a = {"id": 5, "kind": "alarm", "code": "E42", "machine_id": 3, "material_id": None,
         "gateway_id": "gw", "device": "imm-3"}
    assert outbox.group_key(a, "opened") == "m:3|alarm:E42|opened"
    assert outbox.group_key({**a, "machine_id": None}, "escalated") == "d:gw/imm-3|alarm:E42|escalated"
    assert outbox.group_key({**a, "machine_id": None, "material_id": 9, "kind": "stock_low",
                             "code": None}, "opened") == "mat:9|stock_low|opened"
    lone = {**a, "machine_id": None, "gateway_id": None, "device": None}
    assert outbox.group_key(lone, "opened") == "a:5|alarm:E42|opened"
