"""The cloud's exceptions: one root, the hierarchy written once here. ::

    CloudError                  a message meant for the user (the CLI prints it, exit 1)
    ├── DatabaseUrlError        a --db / $PLANTSYNC_CLOUD_DB we cannot use
    ├── SchemaNotCurrent        the database is not migrated to this version's head
    └── DomainError             a request the domain refuses: status, code, detail, field
        ├── BadRequest          400 bad_request    (a body or header we cannot read)
        ├── Unauthorized        401                (who are you? the code says why)
        ├── Forbidden           403                (not you)
        ├── NotFound            404 not_found
        ├── Conflict            409 conflict
        │   ├── Duplicate       409 duplicate      (a code, number or name already taken)
        │   └── StateConflict   409 invalid_state  (+ entity, current, action, allowed)
        ├── TooLarge            413 too_large
        ├── UnsupportedMedia    415 unsupported_media_type
        ├── Invalid             422 invalid        (``field`` names the input at fault)
        ├── TooManyRequests     429                (``headers`` carry Retry-After)
        └── UpstreamFailed      502                (a channel or service we called failed)

Domain code raises these (or subclasses that name a more precise ``code``, e.g. the
dispatch's ``dispatch_overlap``) and knows nothing of HTTP beyond the status number each
class names. ``cloud/api/errors.py`` is the one place that turns them into the JSON answer
``{error: code, detail, field?, ...extra}``; the web UI shows them as flash messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class CloudError(Exception):
    """Root of the cloud's own errors; the message is meant for the user."""


class DatabaseUrlError(CloudError, ValueError):
    pass


class SchemaNotCurrent(CloudError):
    pass


class DomainError(CloudError):
    """A refusal with an HTTP ``status``, a short machine-readable ``code``, a ``detail``
    for people, the request ``field`` at fault when there is one, and ``extra`` members
    of the answer (e.g. ``allowed`` actions). Subclasses set ``status`` and ``code``; an
    instance may name a more precise ``code``."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, detail: str, field: str | None = None, *, code: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """The answer's body: ``{error, detail}``, ``field`` when known, then ``extra``."""
        doc: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.field is not None:
            doc["field"] = self.field
        return {**doc, **self.extra}


class BadRequest(DomainError):
    status = 400
    code = "bad_request"


class Unauthorized(DomainError):
    status = 401
    code = "unauthorized"


class Forbidden(DomainError):
    status = 403
    code = "forbidden"


class NotFound(DomainError):
    status = 404
    code = "not_found"


class Conflict(DomainError):
    status = 409
    code = "conflict"


class Duplicate(Conflict):
    code = "duplicate"


class StateConflict(Conflict):
    """``action`` is not allowed on ``entity`` in state ``current``; ``allowed`` lists
    what that state does allow."""

    code = "invalid_state"

    def __init__(self, entity: str, entity_id: str, action: str, current: str,
                 allowed: Sequence[str], reason: str | None = None) -> None:
        allowed_txt = ", ".join(allowed) if allowed else "nothing (final state)"
        super().__init__(reason or f"{entity} {entity_id} is {current}: cannot {action} "
                         f"(allowed: {allowed_txt})",
                         entity=entity, current=current, action=action, allowed=list(allowed))
        self.entity, self.entity_id, self.action = entity, entity_id, action
        self.current, self.allowed = current, tuple(allowed)


class TooLarge(DomainError):
    status = 413
    code = "too_large"


class UnsupportedMedia(DomainError):
    status = 415
    code = "unsupported_media_type"


class Invalid(DomainError):
    status = 422
    code = "invalid"


class TooManyRequests(DomainError):
    status = 429
    code = "too_many_requests"


class UpstreamFailed(DomainError):
    status = 502
    code = "upstream_failed"
