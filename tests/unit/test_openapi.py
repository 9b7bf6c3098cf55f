"""``/openapi.json`` describes every answer: each operation of the API names a response
schema for its success answer and documents its error answers, and every cloud time in
an answer is the one timestamp type (ISO 8601 in UTC with ``Z``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud.app import create_app


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # the app only connects on the first request: no database is needed to build it
    app = create_app(str(Path(tmp_path_factory.mktemp("openapi")) / "cloud.db"))
    return app.openapi()


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, verb, op) for path, ops in spec["paths"].items() for verb, op in ops.items()
            if path.startswith("/api/")]


def _success(op: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for code in ("200", "201", "202", "204"):
        if code in op["responses"]:
            return code, op["responses"][code]
    raise AssertionError(f"no 2xx answer documented: {sorted(op['responses'])}")


def _is_typed(schema: dict[str, Any]) -> bool:
    """A named model, or a list/union of named models; not a bare object or ``{}``."""
    if "$ref" in schema:
        return True
    if schema.get("type") == "array":
        return _is_typed(schema.get("items", {}))
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return all(_is_typed(s) or s.get("type") == "null" for s in schema[key])
    return False


def test_every_operation_names_its_answer(spec: dict[str, Any]) -> None:
    bare = []
    for path, verb, op in _operations(spec):
        code, answer = _success(op)
        if code == "204":
            continue
        schemas = [c.get("schema", {}) for c in answer.get("content", {}).values()]
        if not schemas or not all(_is_typed(s) for s in schemas):
            bare.append(f"{verb.upper()} {path}: {schemas}")
    assert len(_operations(spec)) >= 95
    assert not bare, "answers without a named schema:\n" + "\n".join(bare)


def test_every_operation_documents_its_errors(spec: dict[str, Any]) -> None:
    missing = [f"{verb.upper()} {path}" for path, verb, op in _operations(spec)
               if not {"401", "403", "422", "500"} <= set(op["responses"])]
    assert not missing, missing
    error = spec["components"]["schemas"]["ErrorOut"]
    assert {"error", "detail"} <= set(error["required"])


def _answer_models(spec: dict[str, Any]) -> set[str]:
    """The component schemas reachable from the success answers (not request bodies)."""
    todo: list[Any] = []
    for _path, _verb, op in _operations(spec):
        todo.extend(c.get("schema", {}) for c in _success(op)[1].get("content", {}).values())
    seen: set[str] = set()
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in seen:
                    seen.add(name)
                    todo.append(spec["components"]["schemas"][name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    return seen


def test_every_cloud_time_is_the_one_timestamp_type(spec: dict[str, Any]) -> None:
    odd = []
    for name in sorted(_answer_models(spec)):
        schema = spec["components"]["schemas"][name]
        for prop, sub in (schema.get("properties") or {}).items():
            for s in [sub, *sub.get("anyOf", [])]:
                if s.get("format") == "date-time" and "ISO 8601 with offset Z" not in \
                        s.get("description", ""):
                    odd.append(f"{name}.{prop}")
    assert not odd, f"date-times not written by cloud.api.schemas.Timestamp: {odd}"
