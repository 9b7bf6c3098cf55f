"""The demo's per-machine summary and the simulator points built from maps (no network)."""

from __future__ import annotations

from pathlib import Path

from edge.cli import order_hint
from edge.config import load_map
from edge.simulate import machine_kind, sim_points
from protocols.codec import encode
from protocols.model import Order

ROOT = Path(__file__).resolve().parents[2]
MAPS = ROOT / "config" / "maps"


def test_machine_kind_and_points_follow_the_map() -> None:
    cnc = load_map(MAPS / "cnc-generic-modbus.toml")
    imm = load_map(MAPS / "imm-generic-s7.toml")
    assert machine_kind(cnc) == "cnc" and machine_kind(imm) == "imm"
    points = {p.name: p for p in sim_points(imm)}
    assert set(points) == set(imm.tags)
    assert points["good_parts"].role == "counter" and points["good_parts"].counts == "good"
    assert points["machine_state"].states is not None
    assert points["zone1_temp"].limits == (210.0, 240.0)


def _reading(name: str, value: object, label: str | None = None,
             quality: str = "good") -> dict[str, object]:
    return {"name": name, "value": value, "label": label, "quality": quality}


def test_order_hint_names_the_order_that_makes_sense() -> None:
    cnc = load_map(MAPS / "cnc-generic-modbus.toml")
    spec = next(s for s in cnc.specs if s.name == "spindle_temp")   # word_order little
    from dataclasses import replace
    wire = encode(replace(spec, word_order=Order.BIG), 42.5)         # PLC sends big
    assert order_hint(spec, wire) == 'looks wrong; plausible with word_order = "big"'
    assert order_hint(spec, encode(spec, 42.5)) is None
