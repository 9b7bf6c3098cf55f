"""The gateway daemon with one request per tag (what ThingsBoard's gateway does), for the
daemon benchmark's baseline: ``python -m bench.daemon_naive --config gateway.toml``.
Only the plan differs from ``plantsync-edge run``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import edge.daemon
from protocols import PlanLimits, ReadPlan, Request, Span, TagSpec
from protocols.address import tag_extent
from protocols.plan import plan_reads

_DEFAULT = PlanLimits()


def one_request_per_tag(protocol: str, tags: Sequence[TagSpec],
                        limits: PlanLimits = _DEFAULT) -> ReadPlan:
    plan = plan_reads(protocol, tags, limits)  # validates the tags the same way
    requests = []
    for t in plan.tags:
        area, db, start, count = tag_extent(t)
        requests.append(Request((Span(area, db, start, count, (t.name,)),)))
    return ReadPlan(plan.protocol, plan.tags, tuple(requests), plan.limits)


if __name__ == "__main__":
    edge.daemon.plan_reads = one_request_per_tag  # type: ignore[assignment]
    args = sys.argv[1:]
    sys.exit(edge.daemon.run(args[args.index("--config") + 1]))
