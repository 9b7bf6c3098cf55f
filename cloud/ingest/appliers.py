"""The domain processing every stored batch gets, in order, whichever way it arrived
(HTTP ``POST /api/v1/ingest`` or the MQTT consumer): attribution and backflush
(cloud/production/attribution.py), the machine timeline (cloud/oee/events.py), then
anomalies (cloud/anomalies/), which reads what the first two wrote. Each runs inside the
ingest transaction with only the batch's new records (cloud/ingest/store.py)."""

from __future__ import annotations

from cloud.anomalies import apply_anomalies
from cloud.ingest.store import Applier
from cloud.oee import apply_events
from cloud.production import apply_counts


def default_appliers() -> list[Applier]:
    """A new list of the appliers, in the order they must run."""
    return [apply_counts, apply_events, apply_anomalies]
