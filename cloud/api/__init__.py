"""The REST API under ``/api/v1``: ``deps`` (caller, role, transaction, paging
parameters), ``errors`` (the one place an error becomes JSON), ``paging`` (the list
shape), ``schemas`` (the shapes every answer shares: ``Timestamp``, ``Page``, errors),
``routes`` (one router module per domain).

``install_api(app)`` adds the error handlers and every route, each documenting its error
answers."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.api.errors import install_error_handlers
from cloud.api.routes import ROUTERS
from cloud.api.routes.gateways import DEFAULT_MAX_BODY
from cloud.api.schemas import ERRORS

__all__ = ["DEFAULT_MAX_BODY", "install_api"]


def install_api(app: FastAPI) -> None:
    """The error handlers and the routes of every domain."""
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, responses=ERRORS)
