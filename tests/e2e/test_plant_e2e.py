"""Simulators -> `plantsync-edge run` -> `plantsync-cloud serve`, all real processes:
a plant of two CNCs over Modbus TCP and two injection-molding machines (S7 and Modbus)
runs with counter resets (PLC reboots), a counter wrap-around, alarms and limit breaches;
at the end the cloud's counters per tag equal the simulators' true movement, with every
reset shown as a reset and nothing lost or counted twice."""

from __future__ import annotations

import json
from pathlib import Path

from tests.faults.harness import Device, Rig, rig_logs_on_failure
from tests.fixtures.waiting import wait_for
from tests.services import free_port


def test_plant_to_cloud_counts_exact_with_resets_wraps_alarms_limits(tmp_path: Path) -> None:
    rig = Rig(tmp_path, seed=11, speed=600.0, poll_ms=100, devices=[
        Device("cnc-01", "cnc-generic-modbus.toml", "modbus-tcp", free_port()),
        Device("cnc-02", "cnc-generic-modbus.toml", "modbus-tcp", free_port()),
        Device("imm-01", "imm-generic-s7.toml", "s7", free_port()),
        Device("imm-02", "imm-generic-modbus.toml", "modbus-tcp", free_port()),
    ])
    with rig_logs_on_failure(rig):
        rig.start_cloud()
        rig.start_sim()
        rig.wrap_before_edge("cnc-02", margin=40)   # its counters roll over while we watch
        rig.wrap_before_edge("imm-02", margin=40)
        rig.start_edge()

        rig.wait_counter_seen("cnc-01", "part_count", at_least=3)
        rig.fault("cnc-01", "reset")                 # PLC reboot zeroes the counters
        rig.wait_counter_seen("imm-01", "good_parts", at_least=3)
        rig.fault("imm-01", "reset")

        def kinds_seen() -> dict[str, bool]:
            rows = rig.cloud_query("SELECT kind, body FROM records WHERE kind IN ('alarm', 'limit')")
            bodies = [(k, json.loads(b) if isinstance(b, str) else b) for k, b in rows]
            return {"alarm raised": any(k == "alarm" and b["active"] for k, b in bodies),
                    "alarm cleared": any(k == "alarm" and not b["active"] for k, b in bodies),
                    "limit breached": any(k == "limit" and b["active"] for k, b in bodies)}

        wait_for(kinds_seen, "an alarm raised and cleared, and a limit breach, in the cloud",
                 until=lambda seen: all(seen.values()), timeout=120, details=rig.logs)
        # Both wrapped counters have rolled over (raw went down without a reset).
        def rolled(device: str) -> bool:
            rows = rig.cloud_query("SELECT body FROM records WHERE device = ? AND kind = 'count'", device)
            bodies = [json.loads(b) if isinstance(b, str) else b for (b,) in rows]
            return any(b["raw_after"] < (b["raw_before"] or 0) and not b["reset"] for b in bodies)
        wait_for(lambda: {d: rolled(d) for d in ("cnc-02", "imm-02")},
                 "wrapped counters rolled over", until=lambda r: all(r.values()), timeout=120,
                 details=rig.logs)

        report = rig.finish()
        assert report.per_tag["cnc-01.part_count"]["resets"] == 1
        assert report.per_tag["imm-01.good_parts"]["resets"] == 1
        assert report.per_tag["cnc-02.part_count"]["resets"] == 0
        assert report.kinds.get("state", 0) > 0 and report.kinds.get("sample", 0) > 0
        assert report.duplicates_reported >= 0
