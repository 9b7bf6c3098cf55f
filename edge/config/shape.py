"""The shape check: the strict pydantic settings every config model uses, and pydantic's
errors turned into Problems a device engineer can act on.

Pydantic checks the shape of a file (keys, types, ranges). ``pydantic_problems`` words
each error as a Problem at the TOML key path (``devices[1].poll_ms``, ``tags.t1.scale``)
with an example taken from the field's ``examples`` or, for an unknown key, the key it
was probably meant to be. ``without_broken_keys`` lets the other checks still run on a
table whose broken keys are already reported.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from edge.config.problems import Problem
from edge.config.toml import toml_key, toml_value

__all__ = ["STRICT", "pydantic_problems", "without_broken_keys"]

# strict: TOML has real numbers and booleans, so "0.1" in quotes is a mistake worth naming
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)
_M = TypeVar("_M", bound=BaseModel)


def _key_path(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += "." + toml_key(part)
        else:
            out = toml_key(part)
    return out


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _resolve_model(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """Walk ``loc`` through models, lists and dicts; return the model owning loc[-1]."""
    current: type[BaseModel] = root
    i = 0
    parts = list(loc[:-1])
    while i < len(parts):
        part = parts[i]
        if isinstance(part, int):
            i += 1
            continue
        info = current.model_fields.get(part)
        if info is None:
            return None
        inner = _inner_model(info.annotation)
        if inner is None:
            return None
        origin = getattr(info.annotation, "__origin__", None)
        current = inner
        i += 1
        if origin is dict and i < len(parts):
            i += 1  # skip the dict key (a tag name)
    return current


def _translate(err: ErrorDetails, root: type[BaseModel], shown: str) -> Problem:
    loc = [p for p in err["loc"]]
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        # a dict key that is not an int: states/alarms codes
        loc = loc[:-1]
        return Problem(shown, _key_path(loc[:-1]),
                       f"code {loc[-1]!r} is not an integer", "e.g. { 0 = \"off\", 1 = \"idle\" }")
    path = _key_path([p for p in loc if isinstance(p, int | str)])
    last = loc[-1] if loc else ""
    owner = _resolve_model(root, loc) if loc else root
    info = owner.model_fields.get(str(last)) if owner is not None else None
    hint = None
    if info is not None and info.examples:
        hint = f"e.g. {toml_key(str(last))} = {toml_value(info.examples[0])}"
    if kind == "extra_forbidden":
        valid = sorted(owner.model_fields) if owner is not None else []
        close = difflib.get_close_matches(str(last), valid, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = "valid keys: " + ", ".join(valid) if valid else None
        return Problem(shown, path, f"unknown key {str(last)!r}", hint)
    if kind == "missing":
        return Problem(shown, path, "required key is missing", hint)
    if kind == "literal_error":
        return Problem(shown, path, f"{value!r} is not allowed",
                       f"one of {ctx.get('expected', '')}")
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "more than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        bound = next(iter(ctx.values()), "")
        return Problem(shown, path, f"must be {words} {bound}, got {value!r}", hint)
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return Problem(shown, path, f"expected a whole number, got {value!r}", hint)
    if kind in ("float_type", "float_parsing", "int_type") and isinstance(value, str):
        return Problem(shown, path, f"expected a number, got the text {value!r}",
                       f"{hint}, without quotes" if hint else "write it without quotes")
    if kind in ("float_type", "float_parsing"):
        return Problem(shown, path, f"expected a number, got {value!r}", hint)
    if kind in ("string_type",):
        return Problem(shown, path, f"expected a string in quotes, got {value!r}", hint)
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return Problem(shown, path, f"expected a table, got {value!r}", hint)
    if kind in ("list_type", "tuple_type"):
        return Problem(shown, path, f"expected a list, got {value!r}", hint)
    if kind == "too_short" or kind == "too_long":
        return Problem(shown, path, f"expected two numbers [lo, hi], got {value!r}", hint)
    if kind == "string_pattern_mismatch":
        if ":" in str(ctx.get("pattern", "")):
            return Problem(shown, path, f"{value!r} is not host:port", hint)
        return Problem(shown, path, f"{value!r}: use only letters, digits, '.', '_' and '-' "
                       "(no spaces), starting with a letter or digit", hint)
    if kind == "string_too_short":
        return Problem(shown, path, "must not be empty", hint)
    if kind == "string_too_long":
        return Problem(shown, path, f"{len(str(value))} characters, at most "
                       f"{ctx.get('max_length')} (the cloud stores no more)", hint)
    return Problem(shown, path, err["msg"].removeprefix("Value error, "), hint)


def pydantic_problems(exc: ValidationError, root: type[BaseModel], shown: str
                      ) -> list[Problem]:
    """``exc`` (from validating a ``root`` model) as Problems of file ``shown``, one per key
    and message, in pydantic's order."""
    out: list[Problem] = []
    seen: set[str] = set()
    errors = exc.errors(include_url=False)
    # 'adress' unknown and 'address' missing are one mistake: report the misspelling only
    misspelt: set[tuple[Any, ...]] = set()
    for err in errors:
        if err["type"] == "extra_forbidden" and err["loc"]:
            owner = _resolve_model(root, err["loc"])
            if owner is not None:
                for close in difflib.get_close_matches(str(err["loc"][-1]),
                                                       list(owner.model_fields), 1, 0.6):
                    misspelt.add((*err["loc"][:-1], close))
    for err in errors:
        if err["type"] == "missing" and tuple(err["loc"]) in misspelt:
            continue
        problem = _translate(err, root, shown)
        # unions report one error per branch; one line per key is enough
        key = f"{problem.key_path}|{problem.message}"
        if key not in seen:
            seen.add(key)
            out.append(problem)
    return out


def without_broken_keys(model: type[_M], raw: Any, essential: set[str]
                        ) -> tuple[_M | None, set[str]]:
    """Validate after dropping the keys pydantic rejected (their problems are reported
    already), so the rest of the table can still be checked. None when an essential key
    is broken or it still fails."""
    if not isinstance(raw, dict):
        return None, set()
    try:
        return model.model_validate(raw), set()
    except ValidationError as exc:
        broken = {str(e["loc"][0]) for e in exc.errors() if e["loc"]}
    if broken & essential:
        return None, broken
    try:
        return model.model_validate({k: v for k, v in raw.items() if k not in broken}), broken
    except ValidationError:
        return None, broken
