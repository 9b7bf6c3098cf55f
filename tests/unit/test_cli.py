"""plantsync-edge's device-engineer commands without a PLC: validate, import-csv, plan."""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from edge.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "gateway.example.toml"
PROBLEM_LINE = re.compile(r"^\S+\.(toml|csv): [^:]+: .+$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures structlog and stdlib logging for a process; undo it per test."""
    root = logging.getLogger()
    root_level = root.level
    handlers, levels = list(root.handlers), {
        n: logging.getLogger(n).level for n in ("pymodbus", "snap7")}
    yield
    structlog.reset_defaults()
    root.setLevel(root_level)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ validate

def _example_here(tmp_path: Path, **replace: str) -> Path:
    """The example config in ``tmp_path`` with its token file (``token``) and data dir
    there, so that this machine can run it; ``replace`` old=new lines of the file."""
    text = EXAMPLE.read_text().replace('token_file = "/tmp/plantsync-demo/token"',
                                       'token_file = "token"')
    text = text.replace('data_dir = "/tmp/plantsync-demo"', 'data_dir = "data"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp_path / "maps").symlink_to(EXAMPLE.parent / "maps")
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "gateway.toml").write_text(text)
    return tmp_path / "gateway.toml"


def test_validate_example_gateway(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The shipped example names a token in /tmp that a test machine does not have, so it
    # is validated where it has one (and as a file only below).
    code, out, err = run(capsys, "validate", str(_example_here(tmp_path)))
    assert code == 0, err
    assert out.startswith("OK ") and "4 devices" in out and out.count("\n") == 1
    assert err == ""


def test_validate_file_only_skips_this_machine(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    config = _example_here(tmp_path)
    (tmp_path / "token").unlink()
    code, _, err = run(capsys, "validate", str(config))
    assert code == 1 and "cloud.token_file: cannot read" in err
    code, out, err = run(capsys, "validate", "--file-only", str(config))
    assert code == 0 and out.startswith("OK ") and err == "", err


@pytest.mark.parametrize(("old", "new", "key"), [
    ('token_file = "token"', 'token_file = "missing-token"', "cloud.token_file"),
    ('data_dir = "data"', 'data_dir = "token"', "gateway.data_dir"),
    ('url = "http://127.0.0.1:8000"', 'url = "ftp://127.0.0.1:8000"', "cloud.url"),
    ('port = 5020', "port = " + "[" * 5000 + "]" * 5000, ""),
], ids=["token-missing", "data-dir-a-file", "ftp-url", "nesting-too-deep"])
def test_validate_refuses_what_run_refuses_in_the_same_words(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, old: str, new: str,
        key: str) -> None:
    config = str(_example_here(tmp_path, **{old: new}))
    code, out, validate_err = run(capsys, "validate", config)
    assert code == 1 and out == ""
    code, out, run_err = run(capsys, "run", "--config", config)
    assert code == 1 and out == ""
    assert run_err == validate_err
    assert validate_err.count("\n") == 1 and "Traceback" not in validate_err
    assert validate_err.startswith(f"{config}: {key}: " if key else f"{config}: ")
    if not key:
        assert "nesting too deep" in validate_err


def test_run_with_the_status_port_in_use_is_a_config_problem(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = str(_example_here(tmp_path, **{
            'status_listen = "127.0.0.1:8470"': f'status_listen = "127.0.0.1:{port}"',
            'zeroconf_interfaces = ["127.0.0.1"]': "zeroconf_interfaces = []"}))
        code, _, err = run(capsys, "run", "--config", config)
    assert code == 1
    lines = [line for line in err.splitlines() if "status_listen" in line]
    assert lines == [f"{config}: gateway.status_listen: port {port} of 127.0.0.1:{port} is "
                     "already in use (another plantsync-edge with this config, or another "
                     f"program) (stop it, or set a free port, e.g. status_listen = "
                     f'"127.0.0.1:{port + 1}")'], err
    assert "Traceback" not in err


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "maps").glob("*.toml")),
                         ids=lambda p: p.name)
def test_validate_shipped_maps(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    code, out, err = run(capsys, "validate", str(path))
    assert code == 0, err
    assert out.startswith("OK ")


def test_validate_bad_map_one_problem_per_line(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "x.toml").write_text(
        'model = "x"\n[tags.spindle_temp]\nadress = "HR1"\ntype = "float32"\n'
        '[tags.zone1_temp]\naddress = "HR10.3"\ntype = "float32"\n'
        '[tags.parts]\naddress = "HR20"\ntype = "int16"\nrole = "counter"\ncounts = "good"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "validate", "maps/x.toml")
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert lines == [
        "maps/x.toml: tags.spindle_temp.adress: unknown key 'adress' (did you mean 'address'?)",
        "maps/x.toml: tags.zone1_temp.address: 'HR10.3' is a bit address but type is float32 "
        "(e.g. HR10)",
        "maps/x.toml: tags.parts.type: a counter must be an unsigned integer, not int16 "
        "(use uint16 or uint32)",
    ]
    assert all(PROBLEM_LINE.match(line) for line in lines)


def test_validate_map_for_another_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    path = ROOT / "config" / "maps" / "cnc-generic-modbus.toml"
    code, out, err = run(capsys, "validate", "--protocol", "s7", str(path))
    assert code == 1 and out == ""
    assert "is Modbus notation but the device speaks S7 (e.g. DB1.DBW4)" in err


def test_validate_syntax_error_has_line(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nid = "x"\ndata_dir = /var\n')
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1 and "line 3, column" in err and "TOML syntax error" in err


def test_validate_neither_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n')
    code, _, err = run(capsys, "validate", str(path))
    assert code == 1 and "neither a gateway config" in err


def test_validate_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "validate", str(tmp_path / "nope.toml"))
    assert code == 1 and err.strip().endswith("nope.toml: file not found")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["bogus"], ["plan", str(EXAMPLE)], ["import-csv", "x.csv"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


NOW_MS = 1_767_261_600_000   # the gateway's clock in the canned status (clock.wall_ts)
STATUS = {"gateway": "gw-t", "started_ts": NOW_MS - 3_725_000, "uptime_s": 3725.4,
          "devices": {
              "cnc-01": {"online": True, "breaker": "closed", "polls": 9, "requests_per_poll": 1,
                         "poll_latency_ms": 3, "last_error": None, "errors": {},
                         "last_poll_ts": NOW_MS - 1_000},
              "imm-01": {"online": False, "breaker": "open", "polls": 4, "requests_per_poll": 2,
                         "poll_latency_ms": None, "last_error": "imm-01: connection refused",
                         "errors": {"connect": 4}, "last_poll_ts": None},
              "imm-02": {"online": True, "breaker": "half-open", "polls": 7,
                         "requests_per_poll": 1, "poll_latency_ms": 5, "last_error": None,
                         "last_poll_ts": NOW_MS - 12_000,
                         "waiting_for_buffer_since_ms": NOW_MS - 12_000,
                         "buffer_wait_reason": "buffer write error: disk full"}},
          "buffer": {"records": 4, "commits": 9}, "uplink": {"state": "ok", "last_ack_ts": NOW_MS - 2_000},
          "clock": {"wall_ts": NOW_MS, "jumps": 1, "last_jump_ms": -3_600_000},
          "restart_required": ["buffer_max_mb"]}


def _local(ts_ms: int) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(ts_ms / 1000).astimezone().isoformat(timespec="seconds")


@pytest.fixture
def status_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(STATUS).encode()
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_status_json_and_table(capsys: pytest.CaptureFixture[str], status_server: str) -> None:
    code, out, err = run(capsys, "status", "--url", status_server, "--json")
    assert code == 0, err
    assert json.loads(out) == STATUS
    code, out, _ = run(capsys, "status", "--url", status_server)
    assert code == 0
    lines = out.splitlines()
    # times as local ISO time with their age against the gateway's clock, not epoch ms
    assert lines[0] == (f"gateway gw-t, started {_local(NOW_MS - 3_725_000)} (1 h 2 min ago), "
                        "up 1 h 2 min")
    assert str(NOW_MS)[:8] not in out
    assert lines[1].split() == ["device", "online", "breaker", "polls", "requests/poll",
                                "latency", "ms", "last", "poll", "last", "error"]
    row = {line.split()[0]: line for line in lines[2:5]}
    assert row["cnc-01"].split()[1:3] == ["yes", "closed"] and "1 s ago" in row["cnc-01"]
    assert row["imm-01"].split()[1:3] == ["no", "open"] and "never" in row["imm-01"]
    assert row["imm-01"].endswith("imm-01: connection refused") and "None" not in row["imm-01"]
    assert row["imm-02"].split()[1:3] == ["yes", "half-open"] and "12 s ago" in row["imm-02"]
    assert (f"  imm-02: waiting for buffer since {_local(NOW_MS - 12_000)} (12 s ago): "
            "buffer write error: disk full") in lines
    assert "restart required to apply: buffer_max_mb" in lines
    assert "  imm-01: errors connect=4" in lines
    assert not any("waiting for buffer" in ln for ln in lines if "cnc-01" in ln)
    assert "buffer: records=4, commits=9" in lines
    assert f"uplink: state=ok, last_ack_ts={_local(NOW_MS - 2_000)} (2 s ago)" in lines
    assert f"clock: gateway time {_local(NOW_MS)}, jumps=1, last jump -3600 s" in lines


def test_status_of_an_older_daemon_renders_what_is_there(
        capsys: pytest.CaptureFixture[str]) -> None:
    """No started_ts, breaker, clock or waiting key: nothing breaks, ages use this clock."""
    import io

    from edge.cli import render_status

    out = io.StringIO()
    render_status({"gateway": "gw-o", "uptime_s": 12.5,
                   "devices": {"cnc-01": {"online": True, "polls": 3}}}, out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "gateway gw-o, up 12.5 s"
    assert lines[2].split()[:2] == ["cnc-01", "yes"] and "never" in lines[2]


def test_status_without_a_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code, out, err = run(capsys, "status", "--url", f"http://127.0.0.1:{port}")
    assert code == 1 and out == ""
    assert "no gateway daemon answering" in err


def test_status_address_from_config(capsys: pytest.CaptureFixture[str],
                                    status_server: str, tmp_path: Path) -> None:
    port = status_server.rsplit(":", 1)[1]
    text = EXAMPLE.read_text().replace('status_listen = "127.0.0.1:8470"',
                                       f'status_listen = "127.0.0.1:{port}"')
    (tmp_path / "maps").symlink_to(EXAMPLE.parent / "maps")
    (tmp_path / "gw.toml").write_text(text)
    code, out, err = run(capsys, "status", "--config", str(tmp_path / "gw.toml"), "--json")
    assert code == 0, err
    assert json.loads(out)["gateway"] == "gw-t"


# ------------------------------------------------------------------ import-csv

MODBUS_CSV = """Tag Name;Register;Data Type;Units;Factor;Comment
Part Count;40101;UDINT;;;Good parts
Spindle Temp;HR120;REAL;degC;;Spindle bearing
Spindle Load;4x0114;UINT;%;0,1;
Door;40116.0;BOOL;;;
Program;40131;STRING[16];;;Active program
Coolant;00001;;;;
"""

S7_CSV = """name,address,type,unit,scale,description
Good parts,%DB1.DBD0,UDInt,,,
Zone 1 temp,DB1.DBD12,Real,°C,,"Barrel zone 1, feed"
Mold,DB1.STRING44.20,String,,,
Motor on,DB1.DBX66.0,,,,
Marker,MW20,Int,,,
"""


def _import(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | bytes,
            protocol: str, name: str = "vendor.csv") -> tuple[int, str, str]:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return run(capsys, "import-csv", str(path), "--protocol", protocol)


def _validates(capsys: pytest.CaptureFixture[str], tmp_path: Path, toml_text: str,
               protocol: str) -> None:
    out_path = tmp_path / "imported.toml"
    out_path.write_text(toml_text)
    code, _, err = run(capsys, "validate", "--protocol", protocol, str(out_path))
    assert code == 0, err


def test_import_csv_modbus_style(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _import(capsys, tmp_path, MODBUS_CSV, "modbus")
    assert code == 0, err
    import tomllib
    doc = tomllib.loads(out)
    tags = doc["tags"]
    assert list(tags) == ["part_count", "spindle_temp", "spindle_load", "door", "program",
                          "coolant"]
    assert tags["part_count"] == {"address": "HR100", "type": "uint32", "role": "sample",
                                  "description": "Good parts"}
    assert tags["spindle_load"]["address"] == "HR113" and tags["spindle_load"]["scale"] == 0.1
    assert tags["door"] == {"address": "HR115.0", "type": "bool", "role": "sample"}
    assert tags["program"]["length"] == 16 and tags["program"]["type"] == "string"
    assert tags["coolant"]["address"] == "CO0" and tags["coolant"]["type"] == "bool"
    _validates(capsys, tmp_path, out, "modbus")


def test_import_csv_s7_style(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = _import(capsys, tmp_path, S7_CSV, "s7")
    assert code == 0, err
    import tomllib
    tags = tomllib.loads(out)["tags"]
    assert tags["good_parts"]["address"] == "DB1.DBD0"
    assert tags["zone_1_temp"]["unit"] == "°C"
    assert tags["zone_1_temp"]["description"] == "Barrel zone 1, feed"
    assert tags["mold"] == {"address": "DB1.STRING44.20", "type": "string", "role": "sample"}
    assert tags["motor_on"]["type"] == "bool"
    assert tags["marker"] == {"address": "MW20", "type": "int16", "role": "sample"}
    _validates(capsys, tmp_path, out, "s7")


def test_import_csv_chinese_headers_gbk(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    text = "变量名,寄存器地址,数据类型,单位,倍率,备注\nzone1_temp,40011,INT,degC,0.1,一区温度\n"
    code, out, err = _import(capsys, tmp_path, text.encode("gb18030"), "modbus")
    assert code == 0, err
    assert 'description = "一区温度"' in out and "scale = 0.1" in out


def test_import_csv_errors_have_row_numbers(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    text = ("name,address,type\n"
            "a,40001,uint16\n"
            "b,DB1.DBW4,uint16\n"
            "c,40002,blob\n"
            "a,40003,uint16\n"
            "d,40001,uint16\n"
            "e,40010,\n")
    code, out, err = _import(capsys, tmp_path, text, "modbus")
    assert code == 1 and out == ""
    rows = [re.search(r": (row \d+): ", line).group(1)  # type: ignore[union-attr]
            for line in err.splitlines()]
    assert rows == ["row 3", "row 4", "row 5", "row 6", "row 7"]
    assert "S7 notation" in err and "unknown type 'blob'" in err
    assert "already used in row 2" in err and "overlaps tag 'a'" in err


def test_import_csv_without_address_column(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code, out, err = _import(capsys, tmp_path, "name,kind\na,b\n", "s7")
    assert code == 1 and out == "" and "no address column" in err


# ------------------------------------------------------------------ plan

def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--config", str(EXAMPLE), "cnc-01", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["device"] == "cnc-01" and doc["protocol"] == "modbus-tcp"
    assert doc["one_per_tag"] == doc["tags"] == 12
    assert doc["request_count"] == len(doc["requests"]) < doc["one_per_tag"]
    served = [t for r in doc["requests"] for s in r["spans"] for t in s["tags"]]
    assert sorted(served) == sorted(set(served)) and len(served) == 12
    span = doc["requests"][0]["spans"][0]
    assert set(span) == {"area", "db", "start", "count", "unit", "tags"}


def test_plan_json_s7(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--config", str(EXAMPLE), "imm-01", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["requests"][0]["spans"][0]["area"] == "DB"
    assert doc["requests"][0]["spans"][0]["unit"] == "bytes"


def test_plan_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--config", str(EXAMPLE), "imm-01")
    assert code == 0
    assert "requests per poll (one per tag would need 15)" in out
    assert "planned for a PDU of 480 bytes" in out   # S7: probe and run re-plan after connect


def test_plan_unknown_device(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--config", str(EXAMPLE), "nope")
    assert code == 1 and out == ""
    assert "no device 'nope'" in err and "cnc-01" in err


def test_plan_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nid = "x"\n')
    code, out, err = run(capsys, "plan", "--config", str(path), "x", "--json")
    assert code == 1 and out == ""
    assert "gateway.data_dir: required key is missing" in err


# ------------------------------------------------------------------ installed console scripts

@pytest.mark.parametrize(("script", "argv", "expect"), [
    ("plantsync-edge", ["--help"], "usage: plantsync-edge"),
    ("plantsync-cloud", ["--version"], "plantsync-cloud {version}"),
])
def test_console_scripts_run_as_installed(script: str, argv: list[str], expect: str) -> None:
    """The entry points pyproject.toml declares, run the way systemd and people run them:
    the installed scripts beside this interpreter, not `python -m`."""
    import subprocess
    import sys

    path = Path(sys.executable).parent / script
    assert path.is_file(), (f"{path} is missing: install the project into this venv "
                            "(`make test` does; or `pip install -e '.[edge,cloud,dev]'`)")
    result = subprocess.run([str(path), *argv], capture_output=True, text=True, timeout=60,
                            cwd="/")
    assert result.returncode == 0, result.stderr
    from importlib.metadata import version

    assert result.stdout.startswith(expect.format(version=version("plantsync"))), result.stdout
