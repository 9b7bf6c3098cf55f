"""TOML in and out: reading a file with its syntax errors as Problems, writing keys and
values as TOML text (for hints, and for the register maps edge.csv_import writes).

``read_toml``/``parse_toml`` never raise: they return the parsed table, or None and the
one Problem that says where the syntax is broken (``line 3, column 7``) or why the file
cannot be read.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

from edge.config.problems import Problem

__all__ = ["parse_toml", "read_toml", "toml_key", "toml_value"]


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
    """``text`` parsed, or None and the syntax error as a Problem at its line and column."""
    try:
        return tomllib.loads(text), []
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
