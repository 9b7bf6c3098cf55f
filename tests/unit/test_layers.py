"""The layers, checked by a machine: import-linter's contracts (pyproject.toml,
``[tool.importlinter]``) hold, and across the cloud's packages nothing reaches past a
package's public surface.

- Contracts: the gateway never imports the cloud or its stack; edge orchestrates,
  protocols and buffer stand alone; the cloud takes from buffer only the record schema,
  discovery and backoff; the cloud's packages depend one way (cli -> app -> api | web ->
  ingest -> oee -> anomalies -> notify -> production -> inventory -> auth -> core); no
  import cycles inside the cloud.
- Public surfaces: a cloud module imports from another cloud package only that package
  (``from cloud.production import create_work_order``, names in its ``__all__``) or a
  submodule the package lists in ``__all__`` (``from cloud.production import dispatch``);
  ``cloud.core``'s modules are all public; no import names a private (``_``) name of
  another package.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOUD = ROOT / "cloud"


def test_import_linter_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout, res.stdout[-4000:]


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _public(package: str) -> set[str]:
    return set(getattr(importlib.import_module(package), "__all__", ()))


def test_cloud_packages_import_each_other_only_through_their_public_surface() -> None:
    bad: list[str] = []
    for path in sorted(CLOUD.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        here = _package_of(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            target = node.module
            if not target.startswith("cloud.") or _package_of(target) == here:
                continue
            names = [a.name for a in node.names]
            where = f"{rel}:{node.lineno}: from {target} import {', '.join(names)}"
            private = [n for n in names if n.startswith("_")]
            if private:
                bad.append(f"{where}  (private name)")
                continue
            if target.startswith("cloud.core"):
                continue            # core's modules are all public
            package = _package_of(target)
            if target != package:
                sub = target[len(package) + 1:].split(".")[0]
                if sub not in _public(package):
                    bad.append(f"{where}  ({package}.{sub} is not in {package}.__all__)")
                continue
            missing = [n for n in names if n not in _public(package)]
            if missing:
                bad.append(f"{where}  (not in {package}.__all__: {', '.join(missing)})")
    assert not bad, "\n".join(bad)


def test_no_function_local_imports_in_the_cloud() -> None:
    """A function-local import hides a cycle (or a cost) from the layer checks; the cloud
    has none (optional dependencies would be the exception, and there are none)."""
    bad = []
    for path in sorted(CLOUD.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(fn):
                    if isinstance(node, ast.Import | ast.ImportFrom):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "function-local imports: " + ", ".join(bad)
