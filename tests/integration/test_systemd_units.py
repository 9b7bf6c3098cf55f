"""The shipped unit files pass `systemd-analyze verify` and the edge unit scores <= 2.0
on `systemd-analyze security --offline=yes` (both work without systemd running)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
UNITS = ["plantsync-edge.service", "plantsync-cloud.service"]


def _installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with /opt/plantsync/venv/bin pointing at this venv, so verify can check
    that the commands exist (it refuses a missing executable, rightly)."""
    text = (ROOT / "systemd" / unit).read_text()
    text = text.replace("/opt/plantsync/venv/bin", str(Path(sys.executable).parent))
    out = tmp_path / unit
    out.write_text(text)
    return out


@pytest.mark.parametrize("unit", UNITS)
def test_verify(unit: str, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    path = _installed_copy(unit, tmp_path)
    res = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                         timeout=60)
    # Lines about the host's own units (this machine runs no systemd) are not ours.
    ours = [ln for ln in (res.stdout + res.stderr).splitlines() if unit in ln]
    assert res.returncode == 0 and not ours, res.stdout + res.stderr


@pytest.mark.parametrize(("unit", "limit"), [("plantsync-edge.service", 2.0),
                                              ("plantsync-cloud.service", 2.0)])
def test_security_exposure(unit: str, limit: float, tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    path = _installed_copy(unit, tmp_path)
    res = subprocess.run([analyze, "security", "--offline=yes", str(path)],
                         capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", res.stdout)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= limit, res.stdout


def test_edge_unit_keeps_what_the_gateway_needs() -> None:
    """Hardening must not break the product: serial ports, the notify socket, state dir."""
    text = (ROOT / "systemd" / "plantsync-edge.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text
    assert "StateDirectory=plantsync" in text
    families = re.search(r"^RestrictAddressFamilies=(.*)$", text, re.M)
    assert families and {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families.group(1).split())
    assert "DeviceAllow=char-ttyUSB rw" in text
    # PrivateUsers= would unmap the dialout group and break RTU serial access.
    assert not re.search(r"^PrivateUsers=yes", text, re.M)
    assert shutil.which("true")


def test_cloud_unit_is_supervised_like_the_edge() -> None:
    """Type=notify with a watchdog: `plantsync-cloud serve` speaks sd_notify
    (tests/integration/test_cloud_systemd.py)."""
    text = (ROOT / "systemd" / "plantsync-cloud.service").read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure",
                 "StateDirectory=plantsync-cloud"):
        assert re.search(rf"^{line}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M)
    # A memory bound: a hostile upload must not take the host (issue 12, item 2).
    assert re.search(r"^MemoryMax=\d+[KMG]$", text, re.M)
