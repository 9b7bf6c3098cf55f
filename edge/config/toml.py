"""TOML in and out: reading a file with its syntax errors as Problems, writing keys and
values as TOML text (for hints, and for the register maps edge.csv_import writes).

``read_toml``/``parse_toml`` never raise: they return the parsed table, or None and the
one Problem that says where the syntax is broken (``line 3, column 7``), why the file
cannot be read, or that it nests arrays/tables deeper than ``MAX_NESTING`` (no config
needs more than a few levels; a file nested a few hundred deep would otherwise end
tomllib, pydantic or a problem's hint in a RecursionError).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from edge.config.problems import Problem

__all__ = ["MAX_NESTING", "parse_toml", "read_toml", "toml_key", "toml_value"]

#: The deepest nesting of tables and arrays a file may have (a map is 3 levels deep:
#: ``tags.NAME.limits``).
MAX_NESTING = 16


def toml_key(key: str) -> str:
    """``key`` as written in TOML: bare when it may be, quoted otherwise."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def toml_value(value: Any) -> str:
    """``value`` (str, bool, number, list, dict) as a TOML value, inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON escapes are valid TOML
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


_SYNTAX_AT = re.compile(r"\(at line (\d+), column (\d+)\)")


def read_toml(path: Path, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The file parsed, or None and the Problem (missing, unreadable, bad syntax)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [Problem(shown, "", "file not found")]
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(shown, "", f"cannot read file: {exc}")]
    return parse_toml(text, shown)


def parse_toml(text: str, shown: str) -> tuple[dict[str, Any] | None, list[Problem]]:
    """``text`` parsed, or None and the syntax error as a Problem at its line and column
    (or at the key nested too deep)."""
    try:
        parsed = tomllib.loads(text)
    except RecursionError:
        return None, [_too_deep(shown, "")]
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        where = ""
        m = _SYNTAX_AT.search(msg)
        if m:
            where = f"line {m.group(1)}, column {m.group(2)}"
            msg = msg[: m.start()].strip()
        elif "at end of document" in msg:
            where = "end of file"
            msg = msg.replace("(at end of document)", "").strip()
        return None, [Problem(shown, where, f"TOML syntax error: {msg}")]
    deep = _too_deep_at(parsed)
    if deep is not None:
        return None, [_too_deep(shown, deep)]
    return parsed, []


def _too_deep(shown: str, key_path: str) -> Problem:
    return Problem(shown, key_path, f"nesting too deep: tables and arrays may nest at most "
                   f"{MAX_NESTING} levels", "a config needs only a few")


def _too_deep_at(parsed: dict[str, Any]) -> str | None:
    """The key path (keys only, where a person finds it) of a value nested deeper than
    MAX_NESTING, or None. Iterative: refusing a deep file must not need a deep stack."""
    stack: list[tuple[Any, str, int]] = [(parsed, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return path
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{toml_key(str(k))}" if path else toml_key(str(k)),
                          depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, path, depth + 1) for v in value)
    return None
