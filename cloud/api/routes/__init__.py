"""One router module per domain, under ``/api/v1``. ``ROUTERS`` is the order the app
includes them in: ``oee`` before ``production``, because ``/machines/states`` must match
before ``/machines/{id}``. Every route documents its error answers (``schemas.ERRORS``)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.api.routes import (
    anomalies,
    audit,
    dispatch,
    gateways,
    inventory,
    notify,
    oee,
    production,
    settings,
    users,
)

ROUTERS: tuple[APIRouter, ...] = (
    gateways.router,
    users.router,
    dispatch.router,
    inventory.router,
    oee.router,
    production.router,
    settings.router,
    anomalies.router,
    notify.router,
    audit.router,
)

__all__ = ["ROUTERS"]
