"""The shapes every answer of the API shares: the base of response models, the one
timestamp type, the list page, the error.

- ``Out``: the base of every response model. ``extra="forbid"``: a domain answer with a
  key its model does not declare fails loudly in the tests (a 500), instead of being
  dropped silently or shipped undocumented.
- ``Timestamp``: cloud time (when a person or the cloud did something, a due date) as
  ISO 8601 / RFC 3339 in UTC with a ``Z`` offset, to the second
  (``2026-12-01T08:00:00Z``), the same everywhere (cloud/core/clock.py ``iso``). It
  accepts an aware or naive (= UTC) ``datetime`` or such a string from the domain.
  Record time stays integer epoch milliseconds, in fields named ``ts``, ``*_ts`` or
  ``*_ms`` (the gateway's clock, the wire's unit): ``EpochMs``.
- ``Page[T]``: ``{items, total, limit, offset}``, the answer of every list.
- ``ErrorOut``: ``{error, detail, field?}`` (plus members some errors add), documented on
  every route as its 4xx/5xx answers.
- The integers the API reads (path, query, body, form), bounded by the column they end up
  in (defined in cloud/core/fields.py, so that the web's forms use them too): ``Int32``
  (an ``Integer`` column: ids, versions, steps, days), ``NonNegInt32``, ``Int64`` /
  ``NonNegInt64`` (``BigInteger``: quantities, seqs) and
  ``EpochMsIn`` (a record time from 1970 to 9999). A value beyond answers 422
  ``invalid_request`` naming the field, never a 500 from the database; ``/openapi.json``
  shows the bounds as ``minimum``/``maximum``. ``SearchText``: a ``q`` of at most 200
  characters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from annotated_types import MaxLen
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from cloud.core.clock import iso
from cloud.core.db import MAX_SEARCH_LEN
from cloud.core.fields import EpochMsIn, Int32, Int64, NonNegInt32, NonNegInt64


def _aware(value: Any) -> Any:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _iso(value: datetime) -> str:
    written = iso(value)
    assert written is not None
    return written


Timestamp = Annotated[
    datetime,
    BeforeValidator(_aware),
    PlainSerializer(_iso, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time",
                    "description": "UTC, ISO 8601 with offset Z, to the second",
                    "examples": ["2026-12-01T08:00:00Z"]}),
]
EpochMs = Annotated[int, Field(description="epoch milliseconds (record time: the "
                                           "gateway's clock)")]

#: A ``q`` search text (cloud/core/db.py ``like_pattern``).
SearchText = Annotated[str, MaxLen(MAX_SEARCH_LEN)]

__all__ = ["ERRORS", "EpochMs", "EpochMsIn", "ErrorOut", "Int32", "Int64", "NonNegInt32",
           "NonNegInt64", "Out", "Page", "SearchText", "Timestamp", "documented_body"]

T = TypeVar("T")


class Out(BaseModel):
    """Base of every response model (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")


class Page(Out, Generic[T]):
    """One page of a list, ordered by a unique key so pages are stable."""

    items: list[T]
    total: int = Field(description="matches in all pages")
    limit: int
    offset: int


class ErrorOut(BaseModel):
    """Every error answer (cloud/api/errors.py)."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="a short code, e.g. not_found, invalid_state")
    detail: str = Field(description="what is wrong, for people")
    field: str | None = Field(None, description="the input at fault, when there is one")


#: Documented on every route: the error answers it may give.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text} for code, text in (
        (401, "not logged in, or a token that is unknown, revoked or expired"),
        (403, "the caller's role (or gateway) may not do this"),
        (404, "no such thing"),
        (409, "a conflict with the current state (the answer lists what is allowed)"),
        (422, "a value that cannot be used (``field`` names it)"),
        (500, "a bug: logged with its traceback; nothing was changed"),
    )
}


def documented_body(model: type[BaseModel], *, partial: bool = False) -> dict[str, Any]:
    """``openapi_extra`` documenting ``model`` as a route's JSON body when the domain, not
    FastAPI, checks the body (so that its refusals name fields the domain's way, e.g.
    ``invalid_setting`` with ``notifications.smtp.port``). ``partial``: every top-level
    field may be left out (an override merged over what is stored). Nested models are
    inlined: a ``#/$defs/...`` reference would point at the OpenAPI document's root."""
    schema = model.model_json_schema(by_alias=True)
    schema = _inline(schema, schema.get("$defs", {}))
    if partial:
        for field in schema.get("properties", {}).values():
            field.pop("default", None)
        schema.pop("required", None)
        schema["title"] = f"{model.__name__}Override"
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**defs[ref.removeprefix("#/$defs/")], **rest}, defs)
    return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
