"""What an anomaly says, in the reader's language: its title (stored as a message code
with parameters, ``anomalies.title_code`` / ``title_params``) and the sentences of its
history (the audit trail's ``anomaly.<action>`` entries). Pure functions, so the pages
(cloud/web), the API (cloud/api, by ``Accept-Language``) and the notifications
(cloud/notify) render the same words; it lives in core because notify sits below
anomalies in the layers.

- ``title(code, params, locale, fallback)``: the title in ``locale`` (``zh-CN`` or
  ``en``); an unknown or missing code (a person's own title, an anomaly stored before
  codes existed, a raiser that only gave a title) gives ``fallback`` unchanged.
- ``history_text(action, actor, detail, locale)``: one sentence ("王工 acknowledged",
  "王工 已响应"), never the action key or JSON.
- ``quantity(value, unit)``: a number for people: temperatures with one decimal, other
  values with at most two, whole numbers without decimals, the unit after it
  (``degC`` shown as ``°C``). ``unit_for(tag, units)`` guesses °C for a tag named
  ``*temp*`` when the register map's unit is not known.
- ``locale_of(accept_language)``: zh-CN or en from an ``Accept-Language`` header.

Every code has both languages (tests/unit/test_anomaly_text.py checks it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from cloud.core import headers

LOCALES: Final = ("zh-CN", "en")
DEFAULT: Final = "en"

_TEMPERATURE_UNITS: Final = {"degc": "°C", "°c": "°C", "celsius": "°C", "degf": "°F",
                             "°f": "°F"}
_NO_SPACE_UNITS: Final = frozenset({"%", "°C", "°F"})

# Machine states a stop names (the map library's state names, cloud/web/labels.py's words).
_STATES: Final[dict[str, dict[str, str]]] = {
    "zh-CN": {"running": "运行", "idle": "待机", "setup": "调机", "down": "停机",
              "offline": "离线", "unknown": "无数据", "alarm": "报警", "off": "关机"},
    "en": {"running": "running", "idle": "idle", "setup": "setup", "down": "down",
           "offline": "offline", "unknown": "no data", "alarm": "alarm", "off": "switched off"},
}

# title codes -> {locale: template}; parameters are formatted by ``_params`` first.
TITLES: Final[dict[str, dict[str, str]]] = {
    "alarm": {"en": "{machine}: alarm {code} {text}",
              "zh-CN": "{machine}:报警 {code} {text}"},
    "limit.high": {"en": "{machine}: {tag} {value} above the limit {hi}",
                   "zh-CN": "{machine}:{tag} {value} 高于上限 {hi}"},
    "limit.low": {"en": "{machine}: {tag} {value} below the limit {lo}",
                  "zh-CN": "{machine}:{tag} {value} 低于下限 {lo}"},
    "limit": {"en": "{machine}: {tag} {value} outside {lo} – {hi}",
              "zh-CN": "{machine}:{tag} {value} 超出范围 {lo} – {hi}"},
    "offline": {"en": "{machine}: offline for {minutes} min",
                "zh-CN": "{machine}:离线 {minutes} 分钟"},
    "offline.ongoing": {"en": "{machine}: offline for over {minutes} min",
                        "zh-CN": "{machine}:离线超过 {minutes} 分钟"},
    "gateway_silent": {"en": "{machine}: gateway silent for {minutes} min",
                       "zh-CN": "{machine}:边缘网关无响应 {minutes} 分钟"},
    "gateway_silent.ongoing": {"en": "{machine}: gateway silent for over {minutes} min",
                               "zh-CN": "{machine}:边缘网关无响应超过 {minutes} 分钟"},
    "stop": {"en": "{machine}: stopped ({state}) for {minutes} min while dispatched",
             "zh-CN": "{machine}:派工中停机({state}){minutes} 分钟"},
    "stop.ongoing": {"en": "{machine}: stopped ({state}) for over {minutes} min while "
                           "dispatched",
                     "zh-CN": "{machine}:派工中停机({state})超过 {minutes} 分钟"},
    "scrap_rate": {"en": "{machine}: scrap rate {rate} over {window} min ({scrap} of {total})",
                   "zh-CN": "{machine}:{window} 分钟内废品率 {rate}({total} 件中 {scrap} 件)"},
    "stock_low": {"en": "{material} below safety stock: {balance} < {safety} {unit}",
                  "zh-CN": "{material} 低于安全库存:{balance} < {safety} {unit}"},
}

# history: audit action -> {locale: template}; ``{actor}`` is the person (or 系统/system).
_HISTORY: Final[dict[str, dict[str, str]]] = {
    "anomaly.create": {"en": "{actor} reported it", "zh-CN": "{actor} 上报了异常"},
    "anomaly.acknowledge": {"en": "{actor} acknowledged", "zh-CN": "{actor} 已响应"},
    "anomaly.resolve": {"en": "{actor} resolved it", "zh-CN": "{actor} 已处理"},
    "anomaly.close": {"en": "{actor} closed it", "zh-CN": "{actor} 已关闭"},
    "anomaly.auto_close": {"en": "closed automatically: cause cleared",
                           "zh-CN": "自动关闭:原因已消除"},
    "anomaly.recur": {"en": "occurred again ({occurrences} times in all); open again",
                      "zh-CN": "再次发生(共 {occurrences} 次),重新打开"},
    "anomaly.reopen": {"en": "{actor} reopened it", "zh-CN": "{actor} 重新打开"},
    "anomaly.assign": {"en": "{actor} assigned it to {assignee}",
                       "zh-CN": "{actor} 指派给 {assignee}"},
    "anomaly.escalate": {"en": "escalated to level {level}", "zh-CN": "升级到第 {level} 级"},
    "anomaly.hold": {"en": "{operations} operation(s) put on hold",
                     "zh-CN": "暂停了 {operations} 道工序"},
    "anomaly.release_hold": {"en": "{actor} resumed {operations} operation(s)",
                             "zh-CN": "{actor} 恢复了 {operations} 道工序"},
}
_HISTORY_OTHER: Final = {"en": "{actor} changed it", "zh-CN": "{actor} 修改了异常"}
_EXTRA: Final[dict[str, dict[str, str]]] = {
    "assignee": {"en": ", assigned to {0}", "zh-CN": ",指派给 {0}"},
    "cause": {"en": "; cause: {0}", "zh-CN": ";原因:{0}"},
    "action": {"en": "; action taken: {0}", "zh-CN": ";措施:{0}"},
    "note": {"en": "; note: {0}", "zh-CN": ";备注:{0}"},
}
_SYSTEM: Final = {"en": "system", "zh-CN": "系统"}


def locale_of(accept_language: str | None) -> str:
    """zh-CN or en from an ``Accept-Language`` header (the web pages' rule)."""
    return headers.language(accept_language)


def _locale(locale: str) -> str:
    return locale if locale in LOCALES else DEFAULT


def unit_for(tag: str, units: Mapping[str, str] | None = None) -> str | None:
    """The tag's unit: the configured one (``units``, from the register map), else °C for
    a tag named like a temperature, else None."""
    if units and units.get(tag):
        return units[tag]
    return "degC" if "temp" in tag.lower() else None


def show_unit(unit: str | None) -> str:
    """``degC`` -> ``°C``; others as given."""
    if not unit:
        return ""
    return _TEMPERATURE_UNITS.get(unit.strip().lower(), unit.strip())


def quantity(value: Any, unit: str | None = None) -> str:
    """A number for people (see the module docstring); a non-number as text."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    shown = show_unit(unit)
    if isinstance(value, float) and not math.isfinite(value):
        number = str(value)
    elif shown in ("°C", "°F"):
        number = f"{value:.1f}"
    elif float(value).is_integer():
        number = str(int(value))
    else:
        number = f"{value:.2f}".rstrip("0").rstrip(".")
    if not shown:
        return number
    return f"{number}{shown}" if shown in _NO_SPACE_UNITS else f"{number} {shown}"


def _params(code: str, params: Mapping[str, Any], locale: str) -> dict[str, Any]:
    out = {k: ("" if v is None else v) for k, v in params.items()}
    unit = params.get("unit")
    if code.startswith("limit"):
        for key in ("value", "lo", "hi"):
            out[key] = quantity(params.get(key), unit) if params.get(key) is not None else "–"
    elif code == "stock_low":
        out["balance"] = quantity(params.get("balance"))
        out["safety"] = quantity(params.get("safety"))
    elif code.startswith("stop"):
        state = str(params.get("state") or "")
        out["state"] = _STATES[locale].get(state, state)
    elif code == "scrap_rate":
        out["rate"] = f"{float(params.get('rate') or 0):.0%}"
    elif code == "alarm":
        out["text"] = str(params.get("text") or "")
    return out


def title(code: str | None, params: Mapping[str, Any] | None, locale: str,
          fallback: str) -> str:
    """The anomaly's title in ``locale``; ``fallback`` (the stored English title) when the
    code is unknown or its parameters do not fit."""
    if not code or code not in TITLES:
        return fallback
    loc = _locale(locale)
    try:
        text = TITLES[code][loc].format(**_params(code, params or {}, loc))
    except (KeyError, IndexError, ValueError, TypeError):
        return fallback
    return " ".join(text.split())


def actor_text(actor: str, locale: str) -> str:
    return _SYSTEM[_locale(locale)] if actor == "system" else actor


def history_text(action: str, actor: str, detail: Mapping[str, Any] | None,
                 locale: str) -> str:
    """One history entry as a sentence in ``locale`` (see the module docstring)."""
    loc = _locale(locale)
    detail = detail or {}
    template = _HISTORY.get(action, _HISTORY_OTHER)[loc]
    ops = detail.get("operations")
    values = {"actor": actor_text(actor, loc), "assignee": detail.get("assignee") or "",
              "level": detail.get("level", ""), "occurrences": detail.get("occurrences", ""),
              "operations": len(ops) if isinstance(ops, list) else ""}
    text = template.format(**values)
    for key in ("assignee", "cause", "action", "note"):
        if action == "anomaly.assign" and key == "assignee":
            continue
        value = detail.get(key)
        if value and isinstance(value, str):
            text += _EXTRA[key][loc].format(value)
    return text
