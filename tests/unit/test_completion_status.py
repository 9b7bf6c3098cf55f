"""The completion status beside the due colour (cloud/production/status.py): a closed
order made short and an over-produced one are said, whatever their due colour."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloud.production import completion_status, due_status


@pytest.mark.parametrize(("status", "quantity", "good", "expected"), [
    ("closed", 300, 235, "short_closed"),
    ("completed", 300, 235, "short_closed"),
    ("in_progress", 300, 235, None),          # still making them: not short yet
    ("closed", 200, 315, "over_produced"),
    ("in_progress", 200, 315, "over_produced"),
    ("completed", 200, 200, None),
    ("draft", 200, 0, None),
])
def test_completion_status(status: str, quantity: int, good: int, expected: str | None) -> None:
    assert completion_status(status=status, quantity=quantity, good=good) == expected


def test_an_order_completed_short_in_time_is_on_time_and_short() -> None:
    due = datetime(2026, 12, 9, tzinfo=UTC)
    done = datetime(2026, 12, 8, tzinfo=UTC)
    assert due_status(status="closed", due=due, quantity=300, good=235,
                      now=datetime(2026, 12, 10, tzinfo=UTC), completed_at=done) == "on_time"
    assert completion_status(status="closed", quantity=300, good=235) == "short_closed"
