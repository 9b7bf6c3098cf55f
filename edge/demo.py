"""``make demo``: the simulated demo plant, probed live until Ctrl-C.

Starts the machines of ``config/gateway.example.toml`` (two CNCs over Modbus TCP, two
injection-molding machines over S7, on 127.0.0.1) in this process, then every few
seconds reads every tag of every machine over the real protocols, exactly as
``plantsync-edge probe`` does, and prints one line per machine: state, good and scrap
counters, the active alarm and the parameters outside their limits. ``--full`` prints the
whole probe table of each machine instead.

The daemon issue turns this into the whole system (gateway, buffer, cloud, reports).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from edge.cli import probe_device, probe_document, render_probe
from edge.config import ConfigError, LoadedDevice, LoadedGateway, display_path
from edge.simulate import build_plant, demo_gateway, describe
from protocols.errors import ProtocolError


def _summary(dev: LoadedDevice, doc: dict[str, Any]) -> list[str]:
    tags = {t["name"]: t for t in doc["tags"]}
    state = good = scrap = "?"
    alarm = "-"
    out_of_limits = []
    for name, tag in dev.map.tags.items():
        reading = tags.get(name)
        if reading is None or reading["quality"] != "good":
            continue
        value = reading["value"]
        if tag.role == "state":
            state = reading["label"] or str(value)
        elif tag.role == "counter" and tag.counts == "good":
            good = str(value)
        elif tag.role == "counter" and tag.counts == "scrap":
            scrap = str(value)
        elif tag.role == "alarm" and value:
            alarm = reading["label"] or f"code {value}"
        elif tag.limits is not None and isinstance(value, int | float):
            lo, hi = tag.limits
            if not lo <= value <= hi:
                bound = f"< {lo:g}" if value < lo else f"> {hi:g}"
                out_of_limits.append(f"{name} {value:.4g} {tag.unit or ''} {bound}".replace(
                    "  ", " "))
    return [dev.name, state, good, scrap, alarm, ", ".join(out_of_limits) or "-"]


def _print_rows(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip(), file=out)


async def _probe_round(gw: LoadedGateway, full: bool, out: TextIO) -> None:
    rows: list[Sequence[str]] = [("machine", "state", "good", "scrap", "alarm",
                                  "outside limits")]
    for dev in gw.devices:
        try:
            _, readings = await probe_device(dev)
        except ProtocolError as exc:
            rows.append((dev.name, "offline", "", "", str(exc), ""))
            continue
        doc = probe_document(dev, readings)
        if full:
            render_probe(doc, out)
            print(file=out)
        rows.append(_summary(dev, doc))
    if not full:
        _print_rows(rows, out)


async def run_demo(*, seed: int = 1, speed: float = 10.0, interval: float = 3.0,
                   full: bool = False, out: TextIO = sys.stdout,
                   stop: asyncio.Event | None = None) -> None:
    """Serve the demo plant and print probes every ``interval`` seconds until ``stop``
    is set (or SIGINT/SIGTERM). Raises OSError when a demo port is taken."""
    gw = demo_gateway()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    plant = build_plant(gw, seed=seed, speed=speed)
    await plant.start(live=True)
    started = time.monotonic()
    try:
        print(f"plantsync demo: simulated plant of {display_path(gw.path)} at {speed:g}x "
              "speed, probed over Modbus TCP and S7:", file=out)
        for line in describe(gw):
            print(line, file=out)
        print("Ctrl-C to stop.\n", file=out, flush=True)
        while not stop.is_set():
            plant_s = int((time.monotonic() - started) * speed)
            print(f"--- {time.strftime('%H:%M:%S')}  plant time "
                  f"+{plant_s // 3600:02d}:{plant_s // 60 % 60:02d}:{plant_s % 60:02d}",
                  file=out)
            await _probe_round(gw, full, out)
            print(file=out, flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await plant.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        print("demo stopped.", file=out, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge.demo", description=__doc__.split(
        "\n\n")[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=10.0,
                        help="plant time per wall second (default 10: things happen)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between probes")
    parser.add_argument("--full", action="store_true", help="print every tag of every machine")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run_demo(seed=args.seed, speed=args.speed, interval=args.interval,
                             full=args.full))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"demo: cannot start the simulated plant: {exc} (is another demo or "
              "`plantsync-edge simulate` running?)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
