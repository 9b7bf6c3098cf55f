"""Golden cases for register maps and gateway configs: ``tests/cases/<name>/``.

A case holds ``map.toml`` (validated for the protocol its addresses imply) or
``gateway.toml`` (with its maps beside it; checked as ``validate`` and ``run`` check it,
token file and data dir included, relative to the case folder), and either
``expected.err`` (the exact lines ``plantsync-edge validate`` prints, paths relative to
the case folder) or ``expected.json`` (the compiled tag specs and the read plan).

Regenerate after an intended change: ``PLANTSYNC_UPDATE_GOLDEN=1 pytest tests/unit/test_cases.py``
and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from edge.config import ConfigError, LoadedMap, load_map, load_runnable
from protocols.model import TagSpec
from protocols.plan import plan_reads

CASES = Path(__file__).resolve().parent.parent / "cases"
UPDATE = os.environ.get("PLANTSYNC_UPDATE_GOLDEN") == "1"


def _cases() -> list[str]:
    return sorted(p.name for p in CASES.iterdir() if p.is_dir())


def _spec_doc(spec: TagSpec) -> dict[str, Any]:
    return {"name": spec.name, "address": str(spec.address), "type": spec.type.value,
            "length": spec.length, "byte_order": spec.byte_order.value,
            "word_order": spec.word_order.value, "scale": spec.scale, "offset": spec.offset}


def _compiled(loaded: LoadedMap) -> dict[str, Any]:
    plan = plan_reads(loaded.protocol, loaded.specs)
    return {
        "protocol": loaded.protocol,
        "specs": [_spec_doc(s) for s in loaded.specs],
        "plan": [[{"area": s.area, "db": s.db, "start": s.start, "count": s.count,
                   "tags": list(s.tags)} for s in req.spans] for req in plan.requests],
        "one_per_tag": plan.one_per_tag,
    }


def _outcome(case: Path) -> tuple[str, str]:
    """(kind, text): ("err", the problem lines) or ("json", the compiled document)."""
    try:
        if (case / "gateway.toml").exists():
            gw = load_runnable("gateway.toml")
            doc: dict[str, Any] = {"devices": {d.name: _compiled(d.map) for d in gw.devices}}
        else:
            doc = _compiled(load_map("map.toml"))
    except ConfigError as exc:
        return "err", "\n".join(str(p) for p in exc.problems) + "\n"
    return "json", json.dumps(doc, indent=2) + "\n"


def test_there_are_cases_for_every_error_kind() -> None:
    names = set(_cases())
    for needed in ("toml-syntax", "unknown-key", "bad-address-modbus", "bad-address-s7",
                   "type-misfit-bit-float", "overlap", "beyond-range", "counter-signed",
                   "state-without-states", "alarm-without-alarms", "gateway-missing-map",
                   "gateway-duplicate-device", "limits-reversed", "deadband-negative",
                   "gateway-poll-too-small", "gateway-protocol-mismatch"):
        assert needed in names


@pytest.mark.parametrize("name", _cases())
def test_case(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES / name
    monkeypatch.chdir(case)
    kind, text = _outcome(case)
    expected = {"err": case / "expected.err", "json": case / "expected.json"}
    if UPDATE:
        for path in expected.values():
            path.unlink(missing_ok=True)
        expected[kind].write_text(text, encoding="utf-8")
    present = [k for k, p in expected.items() if p.exists()]
    assert present, f"{name}: no expected.err or expected.json"
    assert kind == present[0], f"{name}: expected {present[0]}, got {kind}:\n{text}"
    assert text == expected[kind].read_text(encoding="utf-8")
