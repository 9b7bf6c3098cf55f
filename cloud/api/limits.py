"""How big a request body may be, per route, enforced before anything reads it:
``BodyLimit`` (ASGI middleware) and ``body_limits(ingest_max)`` (the cloud's rules).

A body is refused with 413 ``{error: "too_large", detail}`` (the shape of every error,
cloud/api/errors.py) *before* authentication and before a byte of it is read when its
``Content-Length`` is over the route's limit, and as soon as the bytes received pass the
limit when it is streamed (chunked, or a lying ``Content-Length``). Nothing is parsed,
spooled to disk or held in memory beyond the limit, so an unauthenticated client cannot
make the service read 300 MB to answer 401.

Limits (first match wins): the logins 16 KiB; the table imports 32 MiB (their content
is further bounded by the import itself); ingest the service's ``--max-body-mb`` (its
route checks the same); everything else, JSON and the web's forms, 1 MiB.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.core.errors import TooLarge

LOGIN_MAX_BODY: Final = 16 * 1024
IMPORT_MAX_BODY: Final = 32 * 1024 * 1024
JSON_MAX_BODY: Final = 1024 * 1024

Rules = Sequence[tuple[re.Pattern[str], int]]


def body_limits(ingest_max: int) -> list[tuple[re.Pattern[str], int]]:
    """The cloud's per-route body limits (module docstring), ingest's ``ingest_max``."""
    return [(re.compile(r"^(/api/v1)?/login$"), LOGIN_MAX_BODY),
            (re.compile(r"^/api/v1/ingest$"), ingest_max),
            (re.compile(r"^/api/v1/import/"), IMPORT_MAX_BODY)]


class _Exceeded(TooLarge):
    """Raised to whoever reads past the limit; the middleware answers for it."""


class BodyLimit:
    """ASGI middleware: cap each request's body by its path (``rules``, else
    ``default``). Idempotent and stateless between requests."""

    def __init__(self, app: ASGIApp, rules: Rules, default: int = JSON_MAX_BODY) -> None:
        self.app = app
        self.rules = list(rules)
        self.default = default

    def limit_for(self, path: str) -> int:
        return next((limit for pattern, limit in self.rules if pattern.match(path)),
                    self.default)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def counted() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _Exceeded(_detail(limit))
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to the interrupted read is replaced by ours
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, answer)
        except _Exceeded:
            if started:
                raise
        if exceeded and not started:
            await _refuse(scope, receive, send, limit)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses it itself
    return None


def _detail(limit: int) -> str:
    return (f"the request body is over {limit} bytes, the most this route takes; "
            "send less (smaller batches, a smaller file)")


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    error = TooLarge(_detail(limit))
    # Connection: close, as the unread rest of the body cannot be skipped cheaply
    await JSONResponse(error.to_json(), status_code=error.status,
                       headers={"Connection": "close"})(scope, receive, send)
