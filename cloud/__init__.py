"""The plantsync cloud service.

Public surface (the rest is private to the package):
- ``create_app(db_url, ...)`` -> FastAPI (cloud.app), with ``app.state.appliers``: the
  hook where domain processing (attribution, backflush) joins the ingest transaction;
- ``ingest_batch`` / ``IngestResult`` / ``Applier`` (cloud.ingest): storing a decoded batch,
  for other transports (MQTT);
- ``Database`` / ``resolve_url`` (cloud.db), ``upgrade`` / ``check_current`` (cloud.migrate);
- ``Actor`` / ``require`` / ``audit`` (cloud.auth): who is asking, the FastAPI dependency
  every route uses for its role, and the audit trail of every planner action;
- ``create_user`` (cloud.users): users outside the CLI (the demo's admin).

Names are imported lazily so ``plantsync-cloud --version`` stays quick.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "create_app": "cloud.app",
    "ingest_batch": "cloud.ingest",
    "IngestResult": "cloud.ingest",
    "Applier": "cloud.ingest",
    "Database": "cloud.db",
    "resolve_url": "cloud.db",
    "upgrade": "cloud.migrate",
    "check_current": "cloud.migrate",
    "Actor": "cloud.auth",
    "require": "cloud.auth",
    "audit": "cloud.auth",
    "create_user": "cloud.users",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cloud' has no attribute {name!r}")
    return getattr(import_module(module), name)
