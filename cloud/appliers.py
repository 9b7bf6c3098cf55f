"""The domain processing every stored batch gets, in order, whichever way it arrived
(HTTP ``POST /api/v1/ingest`` or the MQTT consumer): attribution and backflush
(cloud/attribution.py), the machine timeline (cloud/timeline.py), then anomalies
(cloud/anomalies.py), which reads what the first two wrote. Each runs inside the ingest
transaction with only the batch's new records (cloud/ingest.py)."""

from __future__ import annotations

from cloud.anomalies import apply_anomalies
from cloud.attribution import apply_counts
from cloud.ingest import Applier
from cloud.timeline import apply_events


def default_appliers() -> list[Applier]:
    return [apply_counts, apply_events, apply_anomalies]
