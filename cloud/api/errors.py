"""Where every error answer of the API is shaped: ``install_error_handlers(app)``.

- A ``DomainError`` (cloud/core/errors.py) becomes its ``status`` with
  ``{error: code, detail, field?, ...extra}`` and its headers (``WWW-Authenticate`` on a
  401, ``Retry-After`` on a 429).
- A request that does not match a route's schema (body, query, path) becomes 422
  ``{error: "invalid_request", detail: "<field>: <what>", field}``: the first problem,
  named by its field path.
- Starlette's own HTTP errors (404 for an unknown path, 405) keep their status with
  ``{error, detail}``.
- A client that goes away before its body is complete (``ClientDisconnect``: a gateway
  restarting mid-upload) is no server error: logged at info as ``client_disconnected``,
  without a traceback, and not answered (nobody is listening).
- Anything else is a bug: logged with its traceback, answered 500
  ``{error: "internal_error", detail}`` (``CatchAll``). The request's transaction was
  rolled back, so nothing half-done is kept.

The web UI's pages answer HTML instead (cloud/web/__init__.py), through their own
``WebError``; a domain error in a page's form becomes a flash message there.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.core.errors import DomainError

log = structlog.get_logger(__name__)


async def domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers or None)


async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: dict[str, Any] = dict(errors[0]) if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    return JSONResponse({"error": "invalid_request",
                         "detail": f"{field or 'body'}: {first.get('msg', '')}",
                         "field": field}, status_code=422)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    try:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_")
    except ValueError:
        code = "http_error"
    return JSONResponse({"error": code, "detail": str(exc.detail)},
                        status_code=exc.status_code, headers=exc.headers)


class CatchAll:
    """ASGI middleware: an exception no handler took is logged once, with its traceback,
    and answered 500 JSON, unless the answer had already started (then the connection is
    cut, as uvicorn would)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            log.info("client_disconnected", method=scope.get("method"), path=scope.get("path"))
        except Exception as exc:
            log.exception("request_failed", method=scope.get("method"), path=scope.get("path"),
                          error=type(exc).__name__)
            if started:
                raise
            answer = JSONResponse({"error": "internal_error",
                                   "detail": f"the cloud failed on this request "
                                             f"({type(exc).__name__}); nothing was changed, "
                                             "the log has the details"}, status_code=500)
            await answer(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """The one place that turns errors into JSON answers (see the module docstring)."""
    app.add_exception_handler(DomainError, domain_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_middleware(CatchAll)
