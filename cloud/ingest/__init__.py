"""Records in: storing a gateway's batch (append-only, deduplicated, acked), the domain
processing every stored batch gets (``default_appliers``), the MQTT consumer, and what
the cloud holds for each gateway (gaps, counters, whether its data is still arriving)."""

from __future__ import annotations

from cloud.ingest.appliers import default_appliers
from cloud.ingest.dead_letters import list_dead_letters
from cloud.ingest.mqtt import parse_broker_url, run_mqtt_ingest
from cloud.ingest.status import (
    device_counters,
    gateway_exists,
    gateway_freshness,
    gateway_status,
)
from cloud.ingest.store import Applier, GatewayGone, IngestResult, SeqConflict, ingest_batch

__all__ = [
    "Applier",
    "GatewayGone",
    "IngestResult",
    "SeqConflict",
    "default_appliers",
    "device_counters",
    "gateway_exists",
    "gateway_freshness",
    "gateway_status",
    "ingest_batch",
    "list_dead_letters",
    "parse_broker_url",
    "run_mqtt_ingest",
]
