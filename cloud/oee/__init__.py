"""What the machines did with their time: the machine timeline (state and link events,
the ingest applier ``apply_events``), shift calendars, stops and their reasons, OEE and
downtime reports, what every machine is doing now, and maintenance counters.

Public modules: ``calendars`` (shift calendars), ``maintenance`` (counters)."""

from __future__ import annotations

from cloud.oee import calendars, maintenance
from cloud.oee.events import apply_events
from cloud.oee.maintenance import check_maintenance
from cloud.oee.report import (
    current_states,
    downtime_pareto,
    oee_report,
    oee_trend,
    set_stop_reason,
    stops,
)

__all__ = [
    "apply_events",
    "calendars",
    "check_maintenance",
    "current_states",
    "downtime_pareto",
    "maintenance",
    "oee_report",
    "oee_trend",
    "set_stop_reason",
    "stops",
]
