"""Anomalies (生产异常): raised from records (the ingest applier), by the periodic sweep or
by a person; linked to the orders, operations and customers they hit; carried through
open -> acknowledged -> resolved -> closed; escalated and notified.

Where each part lives (the design of each is in its module's docstring):

- ``rules``: the ``anomalies`` setting (thresholds, severity rules) and a kind's severity;
- ``raising``: ``raise_anomaly`` (severity, links to orders and customers, repeats, the
  quality hold, the ``opened`` notification) and clearing;
- ``applier``: ``apply_anomalies``, the ingest applier (alarms, limits, stops and offline
  episodes that a batch ends, scrap rate);
- ``limits``: alarms and limit excursions from records (the minimum duration, folding);
- ``episodes``: stop and offline episodes, raised when they end (applier) or while they
  go on (sweep);
- ``sweep``: the periodic job (offline machines and silent gateways, ongoing stops, stock
  below safety, escalation);
- ``lifecycle``: acknowledge, resolve, close, reopen, assign, in bulk (``act_in_bulk``),
  and a person's report (``create_manual``);
- ``queries``: what the API and the web read (lists, one anomaly with its history,
  figures, counts by machine, by work order).

What raises an anomaly (times are the records' own epoch ms unless said otherwise)
----------------------------------------------------------------------------------
- ``alarm`` (device fault): an ``alarm`` record with ``active`` true; ``code`` is the alarm
  code. The record with ``active`` false sets ``cleared_ts`` on the device's uncleared
  alarm anomaly of that code. An alarm raised again while its anomaly is still uncleared
  and within the repeat window (a gateway restart re-reads an active alarm) adds nothing.
- ``limit`` (process deviation): a ``limit`` record with ``active`` true; ``code`` is the
  tag; raised only once the excursion has lasted ``limit_min_duration_s`` (at its start's
  time; ``limits.py``), cleared like alarms.
- Repeats of an alarm or a limit on the same machine within ``fold_window_s`` of its
  anomaly's last occurrence fold into it (``occurrences``, ``last_seen_ts``) instead of a
  new anomaly (``limits.py``).
- Closing itself: an anomaly whose cause clears (``cleared_ts`` set) is closed by
  ``system`` when ``auto_close[kind]`` (default: alarm, limit, offline), its history
  saying "closed automatically: cause cleared" (``raising.auto_close``).
- ``stop``: the machine's state is not ``running`` for longer than ``stop_after_s`` while
  an order is dispatched on it. Measured from the later of the stop's start and the
  start of the first dispatch overlapping it (the time the order waited), and the
  anomaly's ``ts`` is that point, so it links to that dispatch. Raised at ingest when the
  stop's end arrives (a late batch; ``cleared_ts`` = the end) and by the sweep while the
  stop goes on (cleared when its end arrives). One per stop: ``stop:<gw>:<device>:<start>``.
- ``offline``: a device's ``link`` went offline and came back more than
  ``offline_after_s`` later (at ingest, ``cleared_ts`` = back online; code ``link``), or
  the sweep sees it still offline that long, or the sweep sees the gateway silent (its
  ``last_seen``) that long (code ``gateway``; one per machine of the gateway, cleared by
  the first sweep after the gateway is heard again). Link history is read from the
  records in the gateway's seq order (an indexed lookup; a gateway sends in seq order).
- ``scrap_rate``: scrap / (good + scrap) of a device over the trailing ``window_s`` from
  its attributions exceeds ``threshold`` with at least ``min_pieces`` pieces; checked at
  each scrap count of a batch, at most one per device per window.
- ``stock_low``: a material below safety stock (``cloud.inventory.shortages``), checked
  by the sweep at most every ``stock_check_every_s``; one uncleared anomaly per material
  (``stock_low:<material>:<episode>``), cleared (``ts`` of the sweep) when stock recovers.
- ``maintenance``: raised by the maintenance counters (cloud/oee/maintenance.py) through
  ``raise_anomaly``.
- ``material`` / ``operator`` / ``quality``: by a person (``create_manual``).

Records of devices no machine is registered for still raise (``machine_id`` NULL, with
gateway and device). Only alarm, limit, state, link and scrap count records are looked at,
so a batch of samples costs one list comprehension.

Titles are stored as message codes with parameters (``title_code``, ``title_params``;
cloud/core/anomaly_text.py) beside the English ``title``, and read in the reader's
language (``locale`` of the queries).

Notifications: ``opened`` when raised, ``escalated``, ``resolved`` (``cloud.notify.enqueue``,
in the same transaction).

Record time is compared with the cloud's clock through the gateway's clock skew
(``gateways.clock_skew_ms``, cloud minus gateway): a gateway's "now" is ``now - skew``.
"""

from __future__ import annotations

from cloud.anomalies.applier import apply_anomalies
from cloud.anomalies.lifecycle import (
    BULK_ACTIONS,
    MAX_BULK,
    acknowledge,
    act_in_bulk,
    assign,
    close,
    create_manual,
    reopen,
    resolve,
)
from cloud.anomalies.queries import (
    anomalies_for_work_order,
    anomaly_stats,
    get_anomaly,
    list_anomalies,
    open_anomalies_by_machine,
)
from cloud.anomalies.raising import raise_anomaly
from cloud.anomalies.rules import SETTINGS_KEY, AnomalySettings
from cloud.anomalies.sweep import sweep

__all__ = [
    "BULK_ACTIONS",
    "MAX_BULK",
    "SETTINGS_KEY",
    "AnomalySettings",
    "acknowledge",
    "act_in_bulk",
    "anomalies_for_work_order",
    "anomaly_stats",
    "apply_anomalies",
    "assign",
    "close",
    "create_manual",
    "get_anomaly",
    "list_anomalies",
    "open_anomalies_by_machine",
    "raise_anomaly",
    "reopen",
    "resolve",
    "sweep",
]
