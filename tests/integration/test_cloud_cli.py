"""`plantsync-cloud` as a user runs it: subprocesses, exit codes, stdout/stderr."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cloud import CLI
from tests.services import free_port, wait_port


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PLANTSYNC_CLOUD")}
    # cwd changes: keep the repo importable for `python -m cloud.cli`
    base["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd, env={**base, **(env or {})})


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("plantsync-cloud ")


def test_migrate_then_again(tmp_path: Path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    first = cli("migrate", "--db", url)
    assert first.returncode == 0, first.stderr
    assert "was empty" in first.stdout
    second = cli("migrate", "--db", url)
    assert second.returncode == 0 and "was" not in second.stdout


def test_env_var_names_the_database(tmp_path: Path):
    db = tmp_path / "from-env.db"
    assert cli("migrate", env={"PLANTSYNC_CLOUD_DB": str(db)}).returncode == 0
    assert db.exists()


def test_serve_refuses_an_unmigrated_named_database(tmp_path: Path):
    out = cli("serve", "--db", str(tmp_path / "fresh.db"), "--port", str(free_port()))
    assert out.returncode == 1
    assert "not migrated" in out.stderr and "plantsync-cloud migrate" in out.stderr


@pytest.mark.needs_service("postgresql")
def test_serve_refuses_an_unmigrated_postgres_database(postgres_url: str):
    out = cli("serve", "--db", postgres_url, "--port", str(free_port()))
    assert out.returncode == 1 and "plantsync-cloud migrate" in out.stderr
    assert cli("admin", "create-gateway", "gw-1", "--db", postgres_url).returncode == 1


def test_serve_migrates_the_default_file_itself(tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTSYNC_CLOUD")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_port(port)
        res = httpx.get(f"http://127.0.0.1:{port}/api/v1/gateways/x")
        assert res.status_code == 401
    finally:
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=30)
    assert (tmp_path / "plantsync-cloud.db").exists()
    assert stdout == b""  # logs go to stderr
    assert b"migrated" in stderr


def test_admin_on_the_default_file(tmp_path: Path):
    made = cli("admin", "create-gateway", "gw-hall1", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().split("\n")[-1].startswith("psg_")
    revoked = cli("admin", "revoke-gateway", "gw-hall1", cwd=tmp_path)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["migrate", "--db", "mysql://u@h/db"], "unsupported database"),
    (["migrate", "--db", "sqlite:///:memory:"], "in-memory"),
    (["admin", "create-gateway", "bad id!"], "is not valid"),
    (["admin", "revoke-gateway", "gw-nobody"], "no gateway 'gw-nobody'"),
    (["migrate", "--db", "/nonexistent-dir/x/cloud.db"], "error"),
])
def test_errors_are_one_clear_line_and_exit_1(tmp_path: Path, args: list[str], message: str):
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_a_database_that_cannot_open_leaves_no_thread_behind(monkeypatch: pytest.MonkeyPatch):
    """The cause of a once-flaky case above: aiosqlite stops a connection that failed to
    open without waiting, and its worker thread then hit the closed loop and printed a
    "RuntimeError: Event loop is closed" traceback. Here the race is made certain (the
    worker is slowed down after the failed open) and checked in process: the CLI's runner
    waits for the thread while its loop still runs, so nothing dies and nothing is left."""
    import argparse
    import threading
    import time

    import aiosqlite.core
    from sqlalchemy.exc import SQLAlchemyError

    from cloud import cli as cloud_cli

    real = aiosqlite.core._connection_worker_thread

    class SlowAfterFirst:
        def __init__(self, tx: Any) -> None:
            self.tx, self.calls = tx, 0

        def get(self) -> Any:
            item = self.tx.get()
            self.calls += 1
            if self.calls > 1:
                time.sleep(0.3)   # the stop request: long after the open failed
            return item

    def _connection_worker_thread(tx: Any) -> None:  # the name aiosqlite's threads get
        real(SlowAfterFirst(tx))

    monkeypatch.setattr(aiosqlite.core, "_connection_worker_thread", _connection_worker_thread)
    died: list[object] = []
    monkeypatch.setattr(threading, "excepthook", died.append)
    with pytest.raises(SQLAlchemyError, match="unable to open database file"):
        cloud_cli._run(cloud_cli._migrate(argparse.Namespace(db="/nonexistent-dir/x/cloud.db")))
    left = [t.name for t in threading.enumerate() if "_connection_worker_thread" in t.name]
    assert left == [] and died == []


def test_import_command_all_or_nothing(tmp_path: Path):
    """`plantsync-cloud import` runs the same importer as the API: a good file prints the
    result as JSON; a bad one lists every row-numbered problem and imports nothing."""
    db = str(tmp_path / "imp.db")
    assert cli("migrate", "--db", db).returncode == 0
    good = tmp_path / "materials.csv"
    good.write_bytes("物料编码,物料名称,单位,采购提前期(天)\nM-1,树脂 PA66,kg,7\n".encode("gbk"))
    out = cli("import", "materials", str(good), "--db", db)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"kind": "materials", "rows": 1, "created": 1, "updated": 0,
                                      "unchanged": 0}
    bad = tmp_path / "bad.csv"
    bad.write_text("code,name,unit,lead_time_days\nM-2,ok,kg,1\nM-3,,kg,-4\n")
    out = cli("import", "materials", str(bad), "--db", db)
    assert out.returncode == 1
    assert "nothing imported" in out.stderr and "row 3" in out.stderr, out.stderr
    only_m2 = tmp_path / "m2.csv"
    only_m2.write_text("code,name,unit,lead_time_days\nM-2,ok,kg,1\n")
    again = cli("import", "materials", str(only_m2), "--db", db)
    assert json.loads(again.stdout)["created"] == 1     # M-2 of the bad file never landed
    missing = cli("import", "boms", str(tmp_path / "nope.csv"), "--db", db)
    assert missing.returncode == 1 and "nope.csv" in missing.stderr
