"""edge/logs.py: one structured event per line (logfmt or JSON) for our own events and
for the stdlib loggers of the libraries (pymodbus, snap7, httpx), secrets masked, library
noise kept at warning unless debug."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
import structlog

from edge.logs import _mask_secrets, configure

SECRET = "s3cr3t-T0ken-value"
# logfmt: key=value pairs, values either bare (no space, quote or =) or quoted with escapes
_LOGFMT_LINE = re.compile(r'^[A-Za-z_][\w.-]*=(?:[^\s"=]+|"(?:[^"\\]|\\.)*")'
                          r'(?: [A-Za-z_][\w.-]*=(?:[^\s"=]+|"(?:[^"\\]|\\.)*"))*$')


def _logfmt_pairs(line: str) -> dict[str, str]:
    assert _LOGFMT_LINE.match(line), f"not one logfmt event: {line!r}"
    pairs = re.findall(r'([A-Za-z_][\w.-]*)=([^\s"=]+|"(?:[^"\\]|\\.)*")', line)
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in pairs}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() changes process-wide logging: put the root logger and the library
    loggers back, and structlog's defaults, whatever the test did."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    libs = {n: logging.getLogger(n).level for n in ("pymodbus", "snap7", "httpx")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for n, lvl in libs.items():
        logging.getLogger(n).setLevel(lvl)
    structlog.reset_defaults()


def _emit_mixed() -> None:
    log = structlog.get_logger("edge.test")
    log.info("gateway_started", gateway="gw-1", devices=2, token=SECRET)
    log.warning("device_poll_failed", device="cnc-01",
                error=f"refused\nsecond line; Authorization: Bearer {SECRET}")
    logging.getLogger("pymodbus.logging").warning("Connection to (%s, %d) lost", "10.0.0.5", 502)
    logging.getLogger("httpx").warning("retrying with password=%s", SECRET)
    logging.getLogger("pymodbus.logging").info("per-request chatter")   # below warning
    logging.getLogger("snap7.client").debug("per-request chatter")
    try:
        raise RuntimeError("multi\nline")
    except RuntimeError:
        logging.getLogger("snap7.client").exception("read failed")


def test_logfmt_one_event_per_line_for_ours_and_the_libraries(restore_logging: None) -> None:
    out = io.StringIO()
    configure("logfmt", "info", stream=out)
    _emit_mixed()
    lines = out.getvalue().splitlines()
    events = [_logfmt_pairs(ln) for ln in lines]
    assert [e["event"] for e in events] == [
        "gateway_started", "device_poll_failed", "Connection to (10.0.0.5, 502) lost",
        "retrying with password=***", "read failed"]
    # a stdlib logger's message comes out in the same format, with its level and name
    lib = events[2]
    assert lib["level"] == "warning" and lib["logger"] == "pymodbus.logging" and "ts" in lib
    assert events[1]["error"].startswith("refused\nsecond line")    # escaped onto one line
    assert "RuntimeError: multi\nline" in events[4]["exception"]     # traceback too
    assert SECRET not in out.getvalue()
    assert events[0]["token"] == "***"


def test_json_one_object_per_line_for_ours_and_the_libraries(restore_logging: None) -> None:
    out = io.StringIO()
    configure("json", "info", stream=out)
    _emit_mixed()
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("gateway_started", "info"), ("device_poll_failed", "warning"),
        ("Connection to (10.0.0.5, 502) lost", "warning"),
        ("retrying with password=***", "warning"), ("read failed", "error")]
    assert events[2]["logger"] == "pymodbus.logging"
    assert SECRET not in out.getvalue()


def test_debug_lets_library_detail_through(restore_logging: None) -> None:
    out = io.StringIO()
    configure("json", "debug", stream=out)
    logging.getLogger("snap7.client").debug("negotiated pdu %d", 240)
    structlog.get_logger().debug("poll_done", device="imm-01")
    events = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["negotiated pdu 240", "poll_done"]


def test_configure_twice_replaces_its_handler(restore_logging: None) -> None:
    """The CLI configures before `run` reads log_format from the config: the second call
    must not leave two handlers (every library line twice)."""
    first, second = io.StringIO(), io.StringIO()
    configure("logfmt", "warning", stream=first)
    configure("json", "info", stream=second)
    logging.getLogger("httpx").warning("once")
    assert first.getvalue() == ""
    assert [json.loads(ln)["event"] for ln in second.getvalue().splitlines()] == ["once"]


@pytest.mark.parametrize(("event", "masked"), [
    ({"token": SECRET}, {"token": "***"}),
    ({"api_token": SECRET, "Password": SECRET}, {"api_token": "***", "Password": "***"}),
    ({"error": f"401 for Authorization: Bearer {SECRET}"},
     {"error": "401 for Authorization: Bearer ***"}),
    ({"event": f"POST https://cloud/api?token={SECRET}&x=1"},
     {"event": "POST https://cloud/api?token=***&x=1"}),
    ({"body": f'{{"password": "{SECRET}"}}'}, {"body": '{"password": "***"}'}),
    # where a secret lives is not a secret, and a word is not a credential
    ({"token_file": "/etc/plantsync/token"}, {"token_file": "/etc/plantsync/token"}),
    ({"event": "uplink_token_rejected", "status": 401},
     {"event": "uplink_token_rejected", "status": 401}),
])
def test_mask_secrets(event: dict[str, object], masked: dict[str, object]) -> None:
    assert _mask_secrets(None, "info", dict(event)) == masked
