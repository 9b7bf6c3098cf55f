"""`pip install plantsync[edge]` must stay lean: no web framework, ORM or database driver.
What the code may import is checked by import-linter's contracts (tests/unit/test_layers.py)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "asyncpg",
             "psycopg", "psycopg2", "django", "flask", "jinja2", "argon2-cffi", "openpyxl"}
# What the edge may not pull in, at any depth: web frameworks and servers, ORMs and
# migration tools, database drivers, template engines.
FORBIDDEN_DEEP = FORBIDDEN | {
    "psycopg2-binary", "psycopg-binary", "psycopg-c", "psycopg-pool", "aiopg", "pymysql",
    "mysqlclient", "aiomysql", "asyncmy", "mysql-connector-python", "pymongo", "motor",
    "redis", "cx-oracle", "oracledb", "pyodbc", "peewee", "tortoise-orm", "sqlmodel",
    "databases", "pony", "aiohttp", "tornado", "sanic", "quart", "bottle", "falcon",
    "pyramid", "litestar", "hypercorn", "gunicorn", "daphne", "werkzeug", "mako",
    "python-multipart"}


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def test_edge_extra_has_no_cloud_dependencies() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    edge = {_name(r) for r in meta["optional-dependencies"]["edge"]}
    assert not edge & FORBIDDEN, edge & FORBIDDEN
    assert not meta["dependencies"], "everything goes through the extras"


def _closure(requirements: list[Requirement], root: str) -> dict[str, list[str]]:
    """Every distribution ``requirements`` pull in, from the venv's installed metadata
    (offline), as name -> the chain that brings it in. Markers are evaluated for this
    interpreter with the extras each requirement asks for (none for most: ``extra=""``)."""
    seen: dict[str, list[str]] = {}
    todo = [(r, [root]) for r in requirements]
    while todo:
        req, chain = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen[name] = [*chain, name]
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            raise AssertionError(f"{' -> '.join(seen[name])}: not installed in this venv "
                                 f"(run `make test`, which installs plantsync[edge,dev])"
                                 ) from None
        for text in dist.requires or []:
            sub = Requirement(text)
            extras = req.extras or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append((sub, seen[name]))
    return seen


def _installed_extra(extra: str) -> list[Requirement]:
    """The requirements of the installed plantsync's ``extra``."""
    out = []
    for text in importlib.metadata.distribution("plantsync").requires or []:
        req = Requirement(text)
        if req.marker is not None and req.marker.evaluate({"extra": extra}):
            out.append(req)
    return out


def test_edge_install_pulls_in_no_web_framework_orm_or_database_driver() -> None:
    """What `pip install plantsync[edge]` installs, at every depth, from the installed
    metadata of this venv (checked first against pyproject.toml, so it is not stale)."""
    edge = _installed_extra("edge")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {canonicalize_name(r.name) for r in edge} == \
        {canonicalize_name(Requirement(r).name)
         for r in declared["optional-dependencies"]["edge"]}, \
        "the installed plantsync metadata is stale: reinstall (`pip install -e .[edge,dev]`)"
    closure = _closure(edge, "plantsync[edge]")
    assert "pymodbus" in closure and "pydantic-core" in closure   # the walk goes deep
    bad = {n: " -> ".join(chain) for n, chain in closure.items() if n in FORBIDDEN_DEEP}
    assert not bad, f"plantsync[edge] pulls in: {bad}"
    # The same walk over the cloud extra finds its stack (the check can fail).
    cloud = _closure(_installed_extra("cloud"), "plantsync[cloud]")
    assert {"fastapi", "starlette", "sqlalchemy", "asyncpg", "jinja2", "mako"} <= set(cloud)
