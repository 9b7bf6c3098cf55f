"""REST API of anomaly notifications, under ``/api/v1`` (OpenAPI tag notifications).

- ``GET /notification-channels`` (viewer): ``Page[ChannelOut]``; a channel never shows
  its secret (``has_secret`` instead) and robot tokens in its target are masked.
- ``POST /notification-channels`` (admin): create ``{name, kind, target, secret?,
  min_severity?, kinds?, enabled?}``; 201 with the channel.
- ``GET|PATCH|DELETE /notification-channels/{id}`` (viewer | admin | admin): PATCH
  changes the given fields (``"secret": null`` removes it); DELETE removes the channel
  with its outbox messages (disable it with PATCH ``{"enabled": false}`` to keep them).
- ``POST /notification-channels/{id}/test`` (admin): send a test message now; 200
  ``{ok: true}`` or 502 ``delivery_failed`` with why.
- ``GET /notifications?status=dead&channel_id=&limit=&offset=`` (viewer): the outbox,
  newest first (``status=dead``: the dead-letter list), ``Page[NotificationOut]``.
- ``POST /notifications/{id}/retry`` (planner): put a dead message back in the queue;
  the message as it is now (``NotificationOut``).

Errors are JSON ``{error, detail}``: 404 ``not_found``; 422 ``invalid`` (+ ``field``);
409 ``duplicate`` (channel name); 409 ``invalid_state`` (retry of a message not dead);
502 ``delivery_failed`` (test message). Every change is audited (cloud/notify).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from cloud import notify
from cloud.api.deps import MAX_LIMIT, Admin, Db, Limit, Offset, Planner, Viewer
from cloud.api.paging import page_of_list
from cloud.api.routes.anomalies import AnomalyKind, Severity
from cloud.api.schemas import ErrorOut, Int32, Out, Page, Timestamp

router = APIRouter(prefix="/api/v1", tags=["notifications"])

# The values the database allows (cloud/core/models.py check constraints).
ChannelKind = Literal["webhook", "dingtalk", "wecom", "email"]
NotificationStatus = Literal["pending", "sent", "dead"]
NotificationEvent = Literal["opened", "escalated", "resolved", "test"]


# -- answers ----------------------------------------------------------------------------

class ChannelOut(Out):
    """A channel as the API shows it: never its secret, robot tokens in the target
    masked."""

    id: int
    name: str
    kind: ChannelKind
    target: str = Field(description="URL (query values masked to their last 4 "
                        "characters) or comma-separated email addresses")
    has_secret: bool
    min_severity: Severity
    kinds: list[AnomalyKind] | None = Field(description="null: every kind")
    enabled: bool
    created: Timestamp


class ChannelDeletedOut(Out):
    deleted: int = Field(description="the channel's id")
    notifications_removed: int


class ChannelTestOut(Out):
    ok: bool


class ChannelRefOut(Out):
    id: int
    name: str
    kind: ChannelKind


class NotificationOut(Out):
    """One outbox message: its anomalies (grouped), where it goes, how sending went."""

    id: int
    channel: ChannelRefOut
    event: NotificationEvent
    group_key: str = Field(description="subject|kind:code|event (messages of one group "
                           "join)")
    anomaly_ids: list[int]
    suppressed: int = Field(description="anomalies not sent in a message of their own")
    status: NotificationStatus
    attempts: int
    next_attempt: Timestamp
    last_error: str | None
    created: Timestamp
    sent_at: Timestamp | None


# -- requests ---------------------------------------------------------------------------

class ChannelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    target: str
    secret: str | None = None
    min_severity: str = "minor"
    kinds: list[str] | None = None
    enabled: bool = True


class ChannelPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    target: str | None = None
    secret: str | None = None
    min_severity: str | None = None
    kinds: list[str] | None = None
    enabled: bool | None = None


@router.get("/notification-channels")
async def list_channels(_: Viewer, session: Db, limit: Limit = 50,
                        offset: Offset = 0) -> Page[ChannelOut]:
    """Every channel (secrets never shown: ``has_secret``)."""
    return Page[ChannelOut].model_validate(
        page_of_list(await notify.list_channels(session), limit, offset))


@router.post("/notification-channels", status_code=201)
async def create_channel(body: ChannelIn, actor: Admin, session: Db) -> ChannelOut:
    """Add a channel; 422 names the bad field, 409 a taken name."""
    return ChannelOut.model_validate(
        await notify.create_channel(session, actor, **body.model_dump()))


@router.get("/notification-channels/{channel_id}")
async def get_channel(channel_id: Int32, _: Viewer, session: Db) -> ChannelOut:
    return ChannelOut.model_validate(await notify.get_channel(session, channel_id))


@router.patch("/notification-channels/{channel_id}")
async def patch_channel(channel_id: Int32, body: ChannelPatch, actor: Admin,
                        session: Db) -> ChannelOut:
    """Change the given fields; ``secret: null`` removes the secret. Only ``secret`` and
    ``kinds`` may be null."""
    given = {k: getattr(body, k) for k in body.model_fields_set}
    for k, v in given.items():
        if v is None and k not in ("secret", "kinds"):
            raise notify.NotifyError(k, f"{k}: may not be null")
    return ChannelOut.model_validate(
        await notify.update_channel(session, actor, channel_id, **given))


@router.delete("/notification-channels/{channel_id}")
async def delete_channel(channel_id: Int32, actor: Admin, session: Db) -> ChannelDeletedOut:
    """Delete the channel with its outbox messages (disable it to keep them)."""
    removed = await notify.delete_channel(session, actor, channel_id)
    return ChannelDeletedOut(deleted=channel_id, notifications_removed=removed)


@router.post("/notification-channels/{channel_id}/test",
             responses={502: {"model": ErrorOut,
                              "description": "delivery_failed: the channel refused or "
                                             "could not be reached (why, without secrets)"}})
async def test_channel(channel_id: Int32, actor: Admin, request: Request) -> ChannelTestOut:
    """Send a test message now (not queued); 502 ``delivery_failed`` says why not."""
    await notify.send_test(request.app.state.db, channel_id, actor)
    return ChannelTestOut(ok=True)


@router.get("/notifications")
async def list_notifications(
        _: Viewer, session: Db, status: str | None = None, channel_id: Int32 | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
        offset: Offset = 0) -> Page[NotificationOut]:
    """The outbox, newest first; ``status=dead`` is the dead-letter list."""
    return Page[NotificationOut].model_validate(
        await notify.list_notifications(session, status=status, channel_id=channel_id,
                                        limit=limit, offset=offset))


@router.post("/notifications/{notification_id}/retry")
async def retry_notification(notification_id: Int32, actor: Planner,
                             session: Db) -> NotificationOut:
    """Queue a dead message again with a fresh round of attempts (audited)."""
    return NotificationOut.model_validate(
        await notify.retry(session, notification_id, actor))
