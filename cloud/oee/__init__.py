"""What the machines did with their time: the machine timeline (state and link events,
the ingest applier ``apply_events``), shift calendars, stops and their reasons, OEE and
downtime reports, what every machine is doing now, and maintenance counters.

Modules, each depending only on those above it::

    events         the timeline's rows: the ingest applier, events of a device
    calendars      shift calendars: validation, planned time, a machine's calendar
    timeline       one machine's segments and stops; the ``oee`` settings
    report         OEE by machine / shift / day / order / product, trend, downtime Pareto
    machine_stops  the stops of a machine and their reasons
    board          what every machine is doing now
    maintenance    maintenance counters (run hours, cycles) and the due job

Public modules: ``calendars`` (shift calendars and their input model ``CalendarIn``),
``maintenance`` (counters). ``Category``: the board's categories of a machine state."""

from __future__ import annotations

from cloud.oee import calendars, maintenance
from cloud.oee.board import current_states
from cloud.oee.events import apply_events
from cloud.oee.machine_stops import set_stop_reason, stops
from cloud.oee.maintenance import check_maintenance
from cloud.oee.report import downtime_pareto, oee_report, oee_trend
from cloud.oee.timeline import SETTINGS_KEY, Category, OeeSettings

__all__ = [
    "SETTINGS_KEY",
    "Category",
    "OeeSettings",
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
