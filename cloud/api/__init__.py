"""The REST API under ``/api/v1``: ``deps`` (caller, role, transaction, paging
parameters), ``errors`` (the one place an error becomes JSON), ``paging`` (the list
shape), ``schemas`` (the shapes every answer shares: ``Timestamp``, ``Page``, errors),
``routes`` (one router module per domain).

``install_api(app)`` adds the error handlers and every route, each documenting its error
answers; ``BodyLimit`` with ``body_limits`` caps request bodies per route before they are
read (``limits``); ``install_docs`` serves ``/docs`` and ``/openapi.json``, open or behind
a login (``docs``)."""

from __future__ import annotations

from fastapi import FastAPI

from cloud.api.docs import DOCS_OFF, install_docs
from cloud.api.errors import install_error_handlers
from cloud.api.limits import BodyLimit, body_limits
from cloud.api.routes import ROUTERS
from cloud.api.routes.gateways import DEFAULT_MAX_BODY
from cloud.api.schemas import ERRORS

__all__ = ["DEFAULT_MAX_BODY", "DOCS_OFF", "BodyLimit", "body_limits", "install_api",
           "install_docs"]


def install_api(app: FastAPI) -> None:
    """The error handlers and the routes of every domain."""
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router, responses=ERRORS)
