"""The errors of notifications (all ``cloud.core.errors.DomainError`` subclasses)::

    NotifyError              (Invalid, 422) a channel or request that cannot be done as
    │                        asked; ``field`` names the input
    UnknownChannel           (NotFound, 404)
    UnknownNotification      (NotFound, 404)
    ChannelExists            (Duplicate, 409) a channel of that name exists
    NotRetryable             (Conflict, 409 invalid_state) only a dead message can be
                             retried by hand
    DeliveryFailed           (UpstreamFailed, 502 delivery_failed) one send attempt
                             failed; the message says why, without secrets
"""

from __future__ import annotations

from cloud.core.errors import Conflict, Duplicate, Invalid, NotFound, UpstreamFailed


class NotifyError(Invalid):
    """A channel or request that cannot be done as asked (422 ``invalid``); ``field``
    names the input."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class UnknownChannel(NotFound):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class UnknownNotification(NotFound):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class ChannelExists(Duplicate):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail, field)


class NotRetryable(Conflict):
    """Only a dead message can be retried (409 ``invalid_state``)."""

    code = "invalid_state"

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)


class DeliveryFailed(UpstreamFailed):
    """One send attempt failed (502 ``delivery_failed`` for a test message); the message
    is safe to store and log (no secrets)."""

    code = "delivery_failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
