"""Anomaly titles and history sentences in both languages (cloud/core/anomaly_text.py):
every code has both, numbers are formatted for people, no action key or escape leaks."""

from __future__ import annotations

import re

import pytest

from cloud.core import anomaly_text as at

LATIN_WORD = re.compile(r"\b[a-z]{3,}\b")


def test_every_title_code_has_both_languages_and_chinese_titles_are_chinese() -> None:
    params = {"machine": "注塑机 3", "code": "17", "text": "", "tag": "料筒温度",
              "value": 70.04999999999999, "lo": 10.0, "hi": 65.0, "unit": "degC",
              "minutes": 12, "state": "down", "rate": 0.1234, "window": 60, "scrap": 5,
              "total": 40, "material": "树脂", "balance": 12.5, "safety": 100.0}
    for code, texts in at.TITLES.items():
        assert set(texts) == set(at.LOCALES), code
        zh = at.title(code, params, "zh-CN", "fallback")
        assert zh != "fallback" and not LATIN_WORD.search(zh.replace("°C", "")), (code, zh)
        assert at.title(code, params, "en", "fallback") != "fallback", code


def test_limit_titles_show_one_decimal_for_temperatures_and_the_unit() -> None:
    code, params = "limit.high", {"machine": "M1", "tag": "zone1_temp", "value": 241.29999999999998,
                                  "lo": 210.0, "hi": 240.0, "unit": "degC"}
    assert at.title(code, params, "en", "") == "M1: zone1_temp 241.3°C above the limit 240.0°C"
    assert at.title(code, params, "zh-CN", "") == "M1:zone1_temp 241.3°C 高于上限 240.0°C"
    assert at.quantity(1234.5678, "bar") == "1234.57 bar"
    assert at.quantity(12000.0, "rpm") == "12000 rpm"
    assert at.quantity(95.5, "%") == "95.5%"
    assert at.unit_for("barrel_temp") == "degC" and at.unit_for("pressure") is None
    assert at.unit_for("pressure", {"pressure": "bar"}) == "bar"


def test_unknown_codes_and_bad_parameters_fall_back_to_the_stored_title() -> None:
    assert at.title(None, None, "zh-CN", "burrs on the housing") == "burrs on the housing"
    assert at.title("nope", {}, "zh-CN", "old title") == "old title"
    assert at.title("stop", {}, "zh-CN", "old title") == "old title"   # missing machine


@pytest.mark.parametrize("action", ["anomaly.create", "anomaly.acknowledge", "anomaly.resolve",
                                    "anomaly.close", "anomaly.auto_close", "anomaly.recur",
                                    "anomaly.reopen", "anomaly.assign", "anomaly.escalate",
                                    "anomaly.hold", "anomaly.release_hold", "anomaly.other"])
def test_history_entries_are_sentences_never_keys(action: str) -> None:
    detail = {"assignee": "王工", "note": "看一下", "cause": "加热圈", "action": "更换",
              "level": 2, "occurrences": 3, "operations": [4, 5]}
    for locale in at.LOCALES:
        text = at.history_text(action, "王工", detail, locale)
        assert "anomaly." not in text and "\\u" not in text and "{" not in text, text
    assert at.history_text("anomaly.acknowledge", "王工", {}, "en") == "王工 acknowledged"
    assert at.history_text("anomaly.acknowledge", "王工", {}, "zh-CN") == "王工 已响应"
    assert (at.history_text("anomaly.auto_close", "system", {}, "en")
            == "closed automatically: cause cleared")
    assert at.history_text("anomaly.escalate", "system", {"level": 2}, "zh-CN") == "升级到第 2 级"


def test_locale_of_accept_language() -> None:
    assert at.locale_of("zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert at.locale_of("en-US,zh;q=0.5") == "en"
    assert at.locale_of("zh-TW") == "en" and at.locale_of(None) == "en"
