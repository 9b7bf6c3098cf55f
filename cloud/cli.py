"""``plantsync-cloud``: serve, migrate, admin, mqtt-ingest."""

from __future__ import annotations

import sys
from importlib.metadata import version


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["--version"], []):
        print(f"plantsync-cloud {version('plantsync')}")
        return 0
    print(f"plantsync-cloud: unknown command {args[0]!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
