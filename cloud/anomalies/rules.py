"""The rules of anomalies: the ``anomalies`` setting (``/api/v1/settings/anomalies``,
registered with cloud/core/settings.py), a kind's severity, and the constants the other
modules of the package share (states, the actions each status allows).

Severity
--------
``severity_by_code[code]`` (an alarm code or a limit tag; null removes an override) wins,
else ``severity[kind]``. Levels info < minor < major < critical; *severe* means critical.
A critical ``quality`` anomaly (with ``hold_on_severe_quality``) holds its operations
(see raising.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cloud.core import settings
from cloud.core.models import ANOMALY_KINDS, ANOMALY_STATUSES, SEVERITIES

SETTINGS_KEY: Final = "anomalies"
#: who raises what the cloud itself detects (``created_by``, the audit's actor)
SYSTEM: Final = "system"
RUNNING: Final = "running"
#: the work order statuses whose operations an anomaly links or holds
OPEN_ORDER: Final = ("released", "in_progress")
UNRESOLVED: Final = ("open", "acknowledged")
STATUS_RANK: Final = {s: i for i, s in enumerate(ANOMALY_STATUSES)}
#: what each status allows (lifecycle.py); a 409 names these
ACTIONS: Final[dict[str, tuple[str, ...]]] = {
    "open": ("acknowledge", "resolve", "assign"),
    "acknowledged": ("resolve", "assign"),
    "resolved": ("close", "reopen", "assign"),
    "closed": ("reopen",),
}

#: kinds that close themselves when their cause clears, by default: a machine's alarm, a
#: limit excursion, an offline episode. A stop while an order waited, stock below safety
#: (the planner orders), quality and a person's reports are closed by a person.
AUTO_CLOSE: Final[dict[str, bool]] = {"alarm": True, "limit": True, "offline": True,
                                      "stock_low": False, "stop": False}


# -- the settings -----------------------------------------------------------------------

Severity = Literal["info", "minor", "major", "critical"]
Seconds = Annotated[float, Field(ge=0)]


class ScrapRate(BaseModel):
    # defaults by keyword: mypy then knows ScrapRate() needs no argument (default_factory)
    model_config = ConfigDict(extra="forbid")

    window_s: Seconds = Field(default=3600, description="trailing window of the scrap rate")
    min_pieces: int = Field(default=20, ge=0,
                            description="pieces in the window before it counts")
    threshold: float = Field(default=0.1, ge=0, le=1,
                             description="a fraction: 0.1 = 10 % scrap")


class SeverityByKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alarm: Severity = "major"
    limit: Severity = "minor"
    offline: Severity = "major"
    stop: Severity = "major"
    scrap_rate: Severity = "major"
    stock_low: Severity = "minor"
    maintenance: Severity = "minor"
    material: Severity = "minor"
    operator: Severity = "minor"
    quality: Severity = "minor"


class EscalateAfter(BaseModel):
    """Seconds an anomaly may stay open (unacknowledged) per severity before it is
    escalated one level; 0 never escalates. One number sets every severity."""

    model_config = ConfigDict(extra="forbid")

    info: Seconds = 0
    minor: Seconds = 3600
    major: Seconds = 900
    critical: Seconds = 300


class AnomalySettings(settings.SettingsModel):
    """Thresholds and severity rules of the anomalies (``/api/v1/settings/anomalies``)."""

    offline_after_s: Seconds = Field(300, description="a device offline this long is an anomaly")
    stop_after_s: Seconds = Field(600, description="a stop this long while an order is "
                                  "dispatched is an anomaly")
    scrap_rate: ScrapRate = Field(default_factory=ScrapRate)
    escalate_after_s: EscalateAfter = Field(default_factory=EscalateAfter)
    max_escalation_level: int = Field(3, ge=0)
    repeat_window_s: Seconds = Field(86400, description="an anomaly of the same machine and "
                                     "code within this window is a repeat")
    stock_check_every_s: Seconds = 300
    severity: SeverityByKind = Field(default_factory=SeverityByKind)
    severity_by_code: dict[str, Severity | None] = Field(
        default_factory=dict, description="alarm code or limit tag -> severity (wins over "
        "the kind's); null removes an override")
    hold_on_severe_quality: bool = Field(True, description="a critical quality anomaly "
                                         "puts its operations on hold")
    limit_min_duration_s: Seconds = Field(60, description="a limit excursion becomes an "
                                          "anomaly only once it has lasted this long "
                                          "(0: at once)")
    fold_window_s: Seconds = Field(1800, description="an alarm or limit excursion that "
                                   "begins again on the same machine within this long of "
                                   "its anomaly's last occurrence is counted on that "
                                   "anomaly (occurrences) instead of raising a new one "
                                   "(0: never fold)")
    auto_close: dict[str, bool] = Field(
        default_factory=lambda: dict(AUTO_CLOSE), description="kind -> an anomaly of this "
        "kind closes itself when its cause clears (history: closed automatically); kinds "
        "not named never do")
    tag_units: dict[str, str] = Field(
        default_factory=dict, description="limit tag -> unit shown in titles (the register "
        "map's unit, e.g. degC, bar); a tag named like *temp* without one is shown in °C")

    @field_validator("auto_close")
    @classmethod
    def _known_kinds(cls, value: dict[str, bool]) -> dict[str, bool]:
        unknown = sorted(set(value) - set(ANOMALY_KINDS))
        if unknown:
            raise ValueError(f"{unknown[0]!r} is not an anomaly kind "
                             f"({', '.join(ANOMALY_KINDS)})")
        return {**AUTO_CLOSE, **value}

    @field_validator("escalate_after_s", mode="before")
    @classmethod
    def _one_for_all(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {sev: value for sev in SEVERITIES}
        return value


settings.register(SETTINGS_KEY, AnomalySettings)


def severity_for(conf: dict[str, Any], kind: str, code: str | int | None) -> str:
    """The rule's severity for ``kind`` (and ``code``)."""
    if code is not None:
        sev = (conf.get("severity_by_code") or {}).get(str(code))
        if sev in SEVERITIES:
            return str(sev)
    sev = conf["severity"].get(kind)
    return str(sev) if sev in SEVERITIES else "minor"
