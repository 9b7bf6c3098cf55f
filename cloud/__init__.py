"""The plantsync cloud service (``plantsync-cloud``).

Packages, with dependencies pointing one way (checked by import-linter, pyproject.toml)::

    cli -> app -> api | web -> ingest -> oee -> anomalies -> notify
        -> production -> inventory -> auth -> core

- ``core``: database, migrations, tables, one clock, one error root, audit, settings, jobs
- ``auth``: who is calling (tokens, sessions, roles), users and logins, gateway tokens
- ``inventory``: the stock ledger, balances, safety stock, shortages
- ``production``: master data, work orders and their status rules, dispatch,
  attribution and backflush, imports
- ``notify``: anomaly notifications (outbox, messages, channels, delivery)
- ``anomalies``: raising, linking, lifecycle, escalation
- ``oee``: machine timeline, calendars, stops, OEE and downtime, maintenance counters
- ``ingest``: storing batches (HTTP and MQTT), the appliers, gateway status
- ``api``: REST routes, one module per domain; errors shaped in ``api/errors.py``
- ``web``: the plant manager's pages
- ``app``: ``create_app``, the composition root; ``cli``: the command line

Each package's ``__init__`` names what others may use (``__all__``); the rest is private
to it. ``create_app`` is importable from here for convenience.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing one package (e.g. cloud.core in a migration) does not load
    # the whole service.
    if name == "create_app":
        return import_module("cloud.app").create_app
    raise AttributeError(f"module 'cloud' has no attribute {name!r}")
