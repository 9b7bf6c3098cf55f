"""``plantsync-edge``: the gateway daemon's command line and the device engineer's tools.

Exit codes: 0 ok, 1 invalid input or a failed operation, 2 usage. ``--json`` prints one
JSON document on stdout and nothing else there; logs and errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

from edge.config import (
    ConfigError,
    LoadedDevice,
    LoadedGateway,
    Problem,
    detect_kind,
    display_path,
    load_gateway,
    load_map,
    load_runnable,
    read_toml,
)
from protocols.model import ReadPlan, TagReading, TagSpec

log = structlog.get_logger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class _Failed(Exception):
    """A command failed; the message is printed to stderr as is (one line per line)."""


# --------------------------------------------------------------------------- validate


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    """Validate a gateway config or a map; OK summary on stdout, problems on stderr.

    A gateway config is checked as ``run`` checks it (``load_runnable``: the file, its
    maps, then this machine's token file and data dir), so validate refuses exactly what
    run would; ``--file-only`` skips the machine (checking a config written elsewhere)."""
    path = Path(args.path)
    shown = display_path(path)
    raw, problems = read_toml(path, shown)
    if raw is None:
        raise ConfigError(problems)
    kind = detect_kind(raw)
    if kind is None:
        raise ConfigError([Problem(
            shown, "", "neither a gateway config ([gateway], [[devices]]) nor a map "
            "(model, [tags.*])", 'a map starts with model = "..." and [tags.name] tables')])
    if kind == "gateway":
        if args.protocol:
            log.warning("protocol_ignored", reason="a gateway config names each device's protocol")
        gw = load_gateway(path) if args.file_only else load_runnable(path)
        tags = sum(len(m.specs) for m in gw.maps.values())
        print(f"OK {shown}: gateway {gw.config.gateway.id}, {len(gw.devices)} devices, "
              f"{len(gw.maps)} maps, {tags} tags", file=out)
        return EXIT_OK
    protocol = _protocol_arg(args.protocol)
    loaded = load_map(path, protocol)
    print(f"OK {shown}: map {loaded.config.model!r}, {len(loaded.specs)} tags, "
          f"valid for {loaded.protocol}", file=out)
    return EXIT_OK


def _protocol_arg(value: str | None) -> Any:
    if value is None:
        return None
    return {"modbus": "modbus-tcp"}.get(value, value)


# --------------------------------------------------------------------------- import-csv


def cmd_import_csv(args: argparse.Namespace, out: TextIO) -> int:
    """Convert a vendor CSV register list to a map on stdout; nothing printed on errors."""
    from edge.csv_import import import_csv

    path = Path(args.file)
    shown = display_path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError([Problem(shown, "", "file not found")]) from None
    text = _decode_csv(data)
    model = args.model or path.stem.replace("_", " ").replace("-", " ")
    print(import_csv(text, args.protocol, file=shown, model=model), end="", file=out)
    return EXIT_OK


def _decode_csv(data: bytes) -> str:
    # Vendor tools export UTF-8 (with or without BOM), or a Windows code page (GBK in China).
    for encoding in ("utf-8-sig", "gb18030", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")


# --------------------------------------------------------------------------- plan


def _device(args: argparse.Namespace) -> tuple[LoadedGateway, LoadedDevice]:
    gw = load_gateway(args.config)
    try:
        return gw, gw.device(args.device)
    except KeyError as exc:
        raise _Failed(str(exc.args[0])) from None


def _plan_for(dev: LoadedDevice, pdu_size: int | None = None) -> ReadPlan:
    """The device's read plan; S7 within ``pdu_size`` when the PLC negotiated one (as the
    daemon does after connect), else within the configured/default PDU."""
    from dataclasses import replace

    from protocols.plan import plan_reads

    limits = dev.limits if pdu_size is None else replace(dev.limits, pdu_size=pdu_size)
    return plan_reads(dev.config.protocol, dev.map.specs, limits)


def plan_document(dev: LoadedDevice, plan: ReadPlan) -> dict[str, Any]:
    """The read plan as plain data (what ``plan --json`` prints)."""
    return {
        "device": dev.name,
        "protocol": dev.config.protocol,
        "map": display_path(dev.map.path),
        "tags": len(plan.tags),
        "requests": [
            {"spans": [{"area": s.area, "db": s.db, "start": s.start, "count": s.count,
                        "unit": _span_unit(plan, s.area), "tags": list(s.tags)}
                       for s in req.spans]}
            for req in plan.requests
        ],
        "request_count": len(plan.requests),
        "one_per_tag": plan.one_per_tag,
    }


def _span_unit(plan: ReadPlan, area: str) -> str:
    if plan.protocol == "s7":
        return "bytes"
    return "bits" if area in ("CO", "DI") else "registers"


def _area_text(area: str, db: int) -> str:
    return f"DB{db}" if area == "DB" else area


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    """Print the device's read plan."""
    _, dev = _device(args)
    plan = _plan_for(dev)
    if args.json:
        json.dump(plan_document(dev, plan), out, indent=2)
        out.write("\n")
        return EXIT_OK
    print(f"{dev.name}: {dev.config.protocol} {_where(dev)}, map {display_path(dev.map.path)}, "
          f"{len(plan.tags)} tags", file=out)
    rows = [("req", "area", "start", "count", "tags")]
    for i, req in enumerate(plan.requests, 1):
        for j, span in enumerate(req.spans):
            rows.append((str(i) if j == 0 else "", _area_text(span.area, span.db),
                         str(span.start), f"{span.count} {_span_unit(plan, span.area)}",
                         ", ".join(span.tags)))
    _table(rows, out)
    print(f"{len(plan.requests)} requests per poll (one per tag would need "
          f"{plan.one_per_tag})", file=out)
    if plan.protocol == "s7":
        print(f"planned for a PDU of {plan.limits.pdu_size} bytes; the PLC may negotiate less "
              "(240 on an S7-300), and `run` and `probe` plan again within what it agreed to",
              file=out)
    return EXIT_OK


def _where(dev: LoadedDevice) -> str:
    c = dev.config
    if c.protocol == "modbus-rtu":
        return f"{c.serial_port} unit {c.unit}"
    return f"{c.host}:{c.effective_port}"


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip(), file=out)


# --------------------------------------------------------------------------- probe


def order_hint(spec: TagSpec, raw: bytes) -> str | None:
    """Where the value looks wrong: which other byte/word order makes it plausible."""
    from protocols.codec import plausible_orders

    try:
        orders = plausible_orders(spec, raw)
    except Exception:  # a hint must never break a probe
        return None
    if not orders:
        return None
    texts = []
    for byte_order, word_order in orders[:2]:
        parts = []
        if byte_order != spec.byte_order:
            parts.append(f'byte_order = "{byte_order.value}"')
        if word_order != spec.word_order:
            parts.append(f'word_order = "{word_order.value}"')
        texts.append(", ".join(parts))
    return "looks wrong; plausible with " + " or ".join(texts)


def _value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _label(dev: LoadedDevice, name: str, value: Any) -> str | None:
    tag = dev.map.tags.get(name)
    if tag is None or not isinstance(value, int) or isinstance(value, bool):
        return None
    if tag.states is not None:
        return tag.states.get(value, "unknown state")
    if tag.alarms is not None:
        if value == 0:
            return "no alarm"
        return tag.alarms.get(value, "unknown alarm code")
    return None


async def probe_device(dev: LoadedDevice) -> tuple[ReadPlan, list[TagReading]]:
    """Connect, plan within the PDU the PLC negotiated (S7; an S7-300 agrees to 240, not
    the default 480), read every tag of ``dev`` once, close. Driver errors propagate."""
    from protocols.drivers import make_driver
    from protocols.read import read_plan

    async with make_driver(dev.endpoint) as driver:
        return await read_plan(driver, _plan_for(dev, driver.pdu_size))


def probe_document(dev: LoadedDevice, readings: Sequence[TagReading]) -> dict[str, Any]:
    """Readings as plain data (what ``probe --json`` prints), in map order."""
    by_name = {r.name: r for r in readings}
    tags = []
    for spec in dev.map.specs:
        tag_cfg = dev.map.tags[spec.name]
        reading = by_name.get(spec.name)
        value = reading.value if reading is not None else None
        error = None
        if reading is None:
            error = "not read"
        elif reading.error is not None:
            error = str(reading.error)
        raw = reading.raw if reading is not None else b""
        hint = order_hint(spec, raw) if reading is not None and reading.good else None
        tags.append({
            "name": spec.name,
            "address": tag_cfg.address,
            "type": spec.type.value,
            "raw": raw.hex(" ") if raw else "",
            "value": value,
            "label": _label(dev, spec.name, value),
            "unit": tag_cfg.unit,
            "quality": "good" if error is None else error,
            "hint": hint,
        })
    return {"device": dev.name, "protocol": dev.config.protocol, "endpoint": _where(dev),
            "tags": tags, "good": sum(1 for t in tags if t["quality"] == "good"),
            "bad": sum(1 for t in tags if t["quality"] != "good")}


def render_probe(doc: dict[str, Any], out: TextIO) -> None:
    """The people's table of a probe document."""
    print(f"{doc['device']}: {doc['protocol']} {doc['endpoint']}", file=out)
    rows = [("tag", "address", "type", "raw", "value", "unit", "quality")]
    hints: list[str] = []
    for t in doc["tags"]:
        value = _value_text(t["value"])
        if t["label"]:
            value += f" ({t['label']})"
        rows.append((t["name"], t["address"], t["type"], _short_hex(t["raw"]), value,
                     t["unit"] or "", t["quality"] if t["quality"] == "good" else "ERROR"))
        if t["quality"] != "good":
            hints.append(f"  {t['name']}: {t['quality']}")
        if t["hint"]:
            hints.append(f"  {t['name']}: {t['hint']}")
    _table(rows, out)
    print(f"{doc['good']} good, {doc['bad']} bad", file=out)
    for line in hints:
        print(line, file=out)


def _short_hex(text: str, limit: int = 35) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_probe(args: argparse.Namespace, out: TextIO) -> int:
    """Read every tag of one device once and show raw, decoded value and quality."""
    from protocols.errors import ProtocolError

    _, dev = _device(args)
    try:
        _, readings = asyncio.run(probe_device(dev))
    except ProtocolError as exc:
        text = str(exc)
        if not text.startswith(dev.name):
            text = f"{dev.name} ({dev.config.protocol} {_where(dev)}): {text}"
        raise _Failed(text) from None
    doc = probe_document(dev, readings)
    if args.json:
        json.dump(doc, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        render_probe(doc, out)
    return EXIT_OK if doc["bad"] == 0 else EXIT_FAILED


# --------------------------------------------------------------------------- simulate


def cmd_simulate(args: argparse.Namespace, out: TextIO) -> int:
    """Serve simulated machines for a config's devices (or the demo plant) until stopped."""
    from edge.simulate import demo_gateway, run_simulation

    gw = load_gateway(args.config) if args.config else demo_gateway()
    try:
        asyncio.run(run_simulation(gw, seed=args.seed, speed=args.speed,
                                   control_port=args.control_port, out=out))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise _Failed(f"cannot serve the machines of {display_path(gw.path)}: {exc}") from None
    return EXIT_OK


# --------------------------------------------------------------------------- run / status


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """Run the daemon (edge.daemon) after the checks ``validate`` makes (errors on
    stderr); a status port it cannot listen on is a config problem like those."""
    from edge.daemon import run
    from edge.status import StatusListenError

    loaded = load_runnable(args.config)
    try:
        code: int = run(args.config)
    except StatusListenError as exc:
        raise ConfigError([_listen_problem(loaded, exc)]) from None
    return code


def _listen_problem(loaded: LoadedGateway, exc: Any) -> Problem:
    listen = loaded.config.gateway.status_listen
    host, _, port = listen.rpartition(":")
    if exc.in_use:
        return Problem(display_path(loaded.path), "gateway.status_listen",
                       f"port {port} of {listen} is already in use (another plantsync-edge "
                       "with this config, or another program)",
                       f"stop it, or set a free port, e.g. status_listen = "
                       f"\"{host or '127.0.0.1'}:{int(port) + 1}\"")
    return Problem(display_path(loaded.path), "gateway.status_listen",
                   f"cannot listen on {listen} ({exc.reason})",
                   'use an address of this machine, e.g. status_listen = "127.0.0.1:8470" '
                   'or "0.0.0.0:8470"')


def _status_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    listen = "127.0.0.1:8470"
    if args.config:
        listen = load_gateway(args.config).config.gateway.status_listen
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """Ask the running daemon's status endpoint (GET /status) and show what it says."""
    import urllib.error
    import urllib.request

    url = _status_url(args) + "/status"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            doc = json.loads(response.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Failed(f"no gateway daemon answering at {url} ({reason}); is "
                      "`plantsync-edge run` going, and is status_listen right?") from None
    if args.json:
        json.dump(doc, out, indent=2, ensure_ascii=False)
        out.write("\n")
        return EXIT_OK
    render_status(doc, out)
    return EXIT_OK


def _duration(seconds: float) -> str:
    """12.5 s, 4 min 5 s, 3 h 12 min, 2 d 4 h: the two largest units, read at a glance."""
    sec = abs(seconds)
    if sec < 60:
        return f"{sec:.1f}".removesuffix(".0") + " s"
    d, rest = divmod(round(sec), 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [(n, unit) for n, unit in ((d, "d"), (h, "h"), (m, "min"), (s, "s"))]
    first = next(i for i, (n, _) in enumerate(parts) if n)
    return " ".join(f"{n} {unit}" for n, unit in parts[first:first + 2] if n)


def _when(ts_ms: Any, now_ms: float) -> str:
    """An epoch-ms time as local ISO time with its age: ``2025-03-04T10:12:30+01:00
    (12 s ago)``; anything else as it is."""
    import datetime as dt

    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int | float):
        return str(ts_ms)
    local = dt.datetime.fromtimestamp(ts_ms / 1000).astimezone().isoformat(timespec="seconds")
    age = (now_ms - ts_ms) / 1000
    return f"{local} ({_duration(age)} ago)" if age >= 0 else f"{local} (in {_duration(age)})"


def _ago(ts_ms: Any, now_ms: float) -> str:
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int | float):
        return ""
    return f"{_duration(max(0.0, (now_ms - ts_ms) / 1000))} ago"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def _is_time_key(key: str) -> bool:
    # the status document's wall-clock times are epoch ms under these names
    return key.endswith("_ts") or key.endswith("_since_ms")


def _flat(doc: Any, now_ms: float) -> str:
    if isinstance(doc, dict):
        return ", ".join(f"{k}={_when(v, now_ms) if _is_time_key(k) else _flat(v, now_ms)}"
                         for k, v in doc.items() if v is not None)
    return str(doc)


def render_status(doc: dict[str, Any], out: TextIO) -> None:
    """The daemon's status document for a person: times as local ISO time with their age
    (measured against the gateway's own clock, ``clock.wall_ts``), each device's breaker,
    and why a device waits (the buffer). Keys it does not know are shown as they are."""
    import time

    clock = doc.get("clock")
    now = clock.get("wall_ts") if isinstance(clock, dict) else None
    if isinstance(now, bool) or not isinstance(now, int | float):
        now = None
    now_ms = float(now) if now is not None else time.time() * 1000
    head = f"gateway {doc.get('gateway', '?')}"
    if "started_ts" in doc:
        head += f", started {_when(doc['started_ts'], now_ms)}"
    uptime = doc.get("uptime_s")
    head += f", up {_duration(uptime) if isinstance(uptime, int | float) else '?'}"
    print(head, file=out)
    devices = doc.get("devices") or {}
    notes: list[str] = []
    if isinstance(devices, dict) and devices:
        rows = [("device", "online", "breaker", "polls", "requests/poll", "latency ms",
                 "last poll", "last error")]
        for name, dev in devices.items():
            dev = dev if isinstance(dev, dict) else {}
            rows.append((str(name), "yes" if dev.get("online") else "no",
                         _cell(dev.get("breaker")), _cell(dev.get("polls")),
                         _cell(dev.get("requests_per_poll")), _cell(dev.get("poll_latency_ms")),
                         _ago(dev.get("last_poll_ts"), now_ms) or "never",
                         str(dev.get("last_error") or "")))
            if dev.get("waiting_for_buffer_since_ms") is not None:
                reason = dev.get("buffer_wait_reason")
                notes.append(f"  {name}: waiting for buffer since "
                             f"{_when(dev['waiting_for_buffer_since_ms'], now_ms)}"
                             + (f": {reason}" if reason else ""))
            elif dev.get("slowed_by_buffer"):
                notes.append(f"  {name}: slowed down by the buffer (missed its poll period)")
            if dev.get("errors"):
                notes.append(f"  {name}: errors {_flat(dev['errors'], now_ms)}")
        _table(rows, out)
        for line in notes:
            print(line, file=out)
    for key, value in doc.items():
        if key in ("gateway", "started_ts", "uptime_s", "devices"):
            continue
        if key == "restart_required":
            if value:
                print("restart required to apply: " + ", ".join(map(str, value)), file=out)
            continue
        if key == "uplink" and isinstance(value, dict) and isinstance(value.get("cloud"), dict):
            cloud = value["cloud"]
            rest = {k: v for k, v in value.items() if k != "cloud"}
            print(f"uplink: {_flat(rest, now_ms)}", file=out)
            print(f"cloud: {cloud.get('url') or 'none chosen yet'} ({cloud.get('reason')})",
                  file=out)
            for r in cloud.get("refused") or []:
                if isinstance(r, dict):
                    print(f"  refused {r.get('url')}: {r.get('reason')}", file=out)
            continue
        if key == "clock" and isinstance(value, dict):
            rest = {k: v for k, v in value.items() if k not in ("wall_ts", "last_jump_ms")}
            text = f"gateway time {_when(value.get('wall_ts'), now_ms).split(' (')[0]}"
            if rest:
                text += f", {_flat(rest, now_ms)}"
            if isinstance(value.get("last_jump_ms"), int | float):
                text += f", last jump {value['last_jump_ms'] / 1000:+g} s"
            print(f"clock: {text}", file=out)
            continue
        print(f"{key}: {_when(value, now_ms) if _is_time_key(key) else _flat(value, now_ms)}",
              file=out)


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plantsync-edge",
        description="plantsync edge gateway: poll PLCs through register maps, buffer, sync.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (stderr)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check a gateway config or a register map")
    p.add_argument("path", help="gateway.toml or a map file")
    p.add_argument("--protocol", choices=["modbus", "modbus-tcp", "modbus-rtu", "s7"],
                   help="validate a map for this protocol (default: what its addresses imply)")
    p.add_argument("--file-only", action="store_true",
                   help="a gateway config: check the file and its maps only, not this "
                   "machine's token file and data dir (which run needs)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("import-csv", help="turn a vendor CSV register list into a map")
    p.add_argument("file", help="the CSV file (name, address, type, unit, scale, "
                   "description columns)")
    p.add_argument("--protocol", choices=["modbus", "s7"], required=True)
    p.add_argument("--model", help="model line of the map (default: from the file name)")
    p.set_defaults(func=cmd_import_csv)

    for name, func, text in (("plan", cmd_plan, "show the read plan of one device"),
                             ("probe", cmd_probe, "read every tag of one device once")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, help="gateway.toml")
        p.add_argument("device", help="device name from the config")
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
        p.set_defaults(func=func)

    p = sub.add_parser("simulate", help="serve simulated machines (Modbus TCP, S7)")
    p.add_argument("--config", help="serve the devices of this gateway.toml "
                   "(default: the built-in demo plant)")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same plant)")
    p.add_argument("--speed", type=float, default=1.0, help="plant time per wall second")
    p.add_argument("--control-port", type=int, default=None,
                   help="TCP port for fault injection commands (off by default)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("--config", required=True, help="gateway.toml")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="the running daemon's status")
    p.add_argument("--config", help="gateway.toml (for its status_listen)")
    p.add_argument("--url", help="status endpoint (default: from --config, else "
                   "http://127.0.0.1:8470)")
    p.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=cmd_status)
    return parser


class _CurrentStderr:
    """Whatever sys.stderr is when a line is written (not when logging was set up)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _configure_logging(verbose: bool) -> None:
    try:
        from edge.logs import configure
    except ImportError:  # pragma: no cover - logs module belongs to the daemon work
        return
    configure("logfmt", "debug" if verbose else "warning",
              stream=_CurrentStderr())  # type: ignore[arg-type]
    if not verbose:
        # the command reports connection failures itself, once, in plain words
        for name in ("pymodbus", "snap7"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``plantsync-edge``. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        code: int = args.func(args, sys.stdout)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_FAILED
    except _Failed as exc:
        print(f"plantsync-edge {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `plantsync-edge plan ... | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
