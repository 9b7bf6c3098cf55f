"""Which device states are downtime however short (cloud/oee/timeline.py): the map
library's states, alarm and setup ones included, fall in the board's categories."""

from __future__ import annotations

import pytest

from cloud.oee.timeline import ALWAYS_DOWNTIME, category


@pytest.mark.parametrize(("state", "expected"), [
    ("alarm", "down"), ("off", "down"), ("setup", "setup"), ("mold change", "setup"),
    ("Mold_Change", "setup"), ("idle", "idle"), ("running", "running"),
    ("unknown", "idle"),
])
def test_map_library_states(state: str, expected: str) -> None:
    assert category(state) == expected


def test_alarm_and_setup_are_downtime_however_short() -> None:
    assert {category(s) for s in ("alarm", "setup", "mold change")} <= ALWAYS_DOWNTIME
    assert category("idle") not in ALWAYS_DOWNTIME
    assert category("mold change", {"mold change": "idle"}) == "idle"   # a plant's override
