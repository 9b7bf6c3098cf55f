"""`pip install plantsync[edge]` must stay lean: no web framework, ORM or database driver."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "asyncpg",
             "psycopg", "psycopg2", "django", "flask", "jinja2", "argon2-cffi", "openpyxl"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def test_edge_extra_has_no_cloud_dependencies() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    edge = {_name(r) for r in meta["optional-dependencies"]["edge"]}
    assert not edge & FORBIDDEN, edge & FORBIDDEN
    assert not meta["dependencies"], "everything goes through the extras"


def test_edge_packages_do_not_import_cloud_stack() -> None:
    """The code side of the same promise: protocols/, buffer/ and edge/ never import the
    cloud's stack (or cloud/ itself)."""
    bad = []
    for pkg in ("protocols", "buffer", "edge"):
        for path in (ROOT / pkg).rglob("*.py"):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                m = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
                if m and m.group(1).split(".")[0] in FORBIDDEN | {"cloud"}:
                    bad.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_dependency_direction() -> None:
    """protocols/ and buffer/ never import edge/ or cloud/; cloud imports only buffer.records."""
    bad = []
    for pkg, banned in (("protocols", {"edge", "cloud", "buffer"}), ("buffer", {"edge", "cloud", "protocols"})):
        for path in (ROOT / pkg).rglob("*.py"):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                m = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
                if m and m.group(1).split(".")[0] in banned:
                    bad.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    for path in (ROOT / "cloud").rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            m = re.match(r"\s*(?:from|import)\s+([\w.]+)", line)
            if m and m.group(1).split(".")[0] in {"edge", "protocols"}:
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
            # The record schema, and the LAN contract (zeroconf service names, advertising).
            if m and m.group(1).startswith("buffer") and m.group(1) not in ("buffer.records", "buffer.discovery"):
                bad.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not bad, "\n".join(bad)
