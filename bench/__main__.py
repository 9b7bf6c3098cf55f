"""``python -m bench [NAME ...]``: run every ``bench/bench_*.py`` and print one table.

Each module defines ``run(report)`` and calls ``report(name, value, baseline, unit)``
once per measurement; ``baseline`` is the same measurement done the naive way (or None).
The table shows ``ratio = value / baseline``: below 1 means fewer seconds or requests
than the baseline. Nothing is asserted here; the numbers are for people.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path

Row = tuple[str, float, float | None, str]


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    if str(here.parent) not in sys.path:
        sys.path.insert(0, str(here.parent))
    modules = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        modules = [m for m in modules if any(a in m for a in argv)]
    rows: list[Row] = []
    failed = 0

    def report(name: str, value: float, baseline: float | None, unit: str) -> None:
        rows.append((name, value, baseline, unit))
        print(f"  {name}: {value:.4g} {unit}", file=sys.stderr, flush=True)

    for module in modules:
        print(f"{module} ...", file=sys.stderr, flush=True)
        try:
            importlib.import_module(f"bench.{module}").run(report)
        except Exception:
            failed += 1
            traceback.print_exc()
    print_table(rows)
    return 1 if failed else 0


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "value", "unit", "baseline", "ratio")
    cells = [header] + [
        (name, f"{value:.4g}", unit,
         "-" if baseline is None else f"{baseline:.4g}",
         "-" if not baseline else f"{value / baseline:.3f}")
        for name, value, baseline, unit in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) if i in (0, 2) else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
