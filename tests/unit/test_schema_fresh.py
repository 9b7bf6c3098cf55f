"""The committed JSON Schemas in config/schema/ match the config models."""

from __future__ import annotations

import json
from pathlib import Path

from edge.schema import SCHEMAS, render_schema

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "config" / "schema"


def test_committed_schemas_are_fresh() -> None:
    for filename, (model, title) in SCHEMAS.items():
        committed = (SCHEMA_DIR / filename).read_text(encoding="utf-8")
        assert committed == render_schema(model, title), (
            f"config/schema/{filename} is stale: run `make schemas` and commit it")


def test_every_property_has_a_description() -> None:
    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{where}.{key} has no description"
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    for filename in SCHEMAS:
        walk(json.loads((SCHEMA_DIR / filename).read_text(encoding="utf-8")), filename)


def test_shipped_files_point_at_the_schemas() -> None:
    config = SCHEMA_DIR.parent
    assert (config / "gateway.example.toml").read_text().startswith(
        "#:schema ./schema/gateway.schema.json")
    for path in (config / "maps").glob("*.toml"):
        assert path.read_text().startswith("#:schema ../schema/map.schema.json"), path
