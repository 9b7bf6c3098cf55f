"""JSON Schemas for gateway.toml and register maps, generated from the config models.

``python -m edge.schema config/schema`` writes ``gateway.schema.json`` and
``map.schema.json``; editors with a TOML language server (taplo, VS Code "Even Better
TOML") use them for completion and checks via the ``#:schema`` line at the top of a file.
The schema checks the shape only; ``plantsync-edge validate`` checks everything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge.config import GatewayConfig, MapConfig

__all__ = ["SCHEMAS", "render_schema", "write_schemas"]

SCHEMAS: dict[str, tuple[type[BaseModel], str]] = {
    "gateway.schema.json": (GatewayConfig, "plantsync gateway.toml"),
    "map.schema.json": (MapConfig, "plantsync register map"),
}

_INT_KEYS = {"states", "alarms"}


def _fix_int_keys(node: Any) -> None:
    """TOML keys are strings: ``states = { 0 = "off" }`` has key "0". Say so."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _INT_KEYS and isinstance(value, dict):
                for branch in value.get("anyOf", [value]):
                    if branch.get("type") == "object":
                        branch.pop("propertyNames", None)
                        branch["propertyNames"] = {"pattern": "^-?[0-9]+$"}
            _fix_int_keys(value)
    elif isinstance(node, list):
        for item in node:
            _fix_int_keys(item)


def _models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from ``model``, by class name (the $defs keys)."""
    found: dict[str, type[BaseModel]] = {}
    todo = [model]
    while todo:
        m = todo.pop()
        if m.__name__ in found:
            continue
        found[m.__name__] = m
        for info in m.model_fields.values():
            stack: list[Any] = [info.annotation]
            while stack:
                ann = stack.pop()
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    todo.append(ann)
                stack.extend(getattr(ann, "__args__", ()) or ())
    return found


def _describe_refs(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Pydantic leaves out a field's description when the field is a bare $ref."""
    models = _models(model)
    nodes = [(model.__name__, schema), *schema.get("$defs", {}).items()]
    for name, node in nodes:
        owner = models.get(name)
        if owner is None:
            continue
        for key, prop in node.get("properties", {}).items():
            info = owner.model_fields.get(key)
            if "description" not in prop and info is not None and info.description:
                prop["description"] = info.description


def render_schema(model: type[BaseModel], title: str) -> str:
    """The JSON text of one schema (stable: sorted keys, trailing newline)."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    _fix_int_keys(schema)
    _describe_refs(schema, model)
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into ``directory``; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (model, title) in SCHEMAS.items():
        path = directory / filename
        path.write_text(render_schema(model, title), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m edge.schema DIRECTORY", file=sys.stderr)
        return 2
    for path in write_schemas(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
