"""Anomalies (生产异常): raised from records (the ingest applier), by the periodic sweep or
by a person; linked to the orders, operations and customers they hit; carried through
open -> acknowledged -> resolved -> closed; escalated and notified."""

from __future__ import annotations

from cloud.anomalies.service import (
    acknowledge,
    anomalies_for_work_order,
    anomaly_stats,
    apply_anomalies,
    assign,
    close,
    create_manual,
    get_anomaly,
    list_anomalies,
    open_anomalies_by_machine,
    raise_anomaly,
    reopen,
    resolve,
    sweep,
)

__all__ = [
    "acknowledge",
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
