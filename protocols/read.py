"""Execute a ReadPlan on a Driver, refining the plan when the PLC rejects a block."""

from __future__ import annotations

from protocols.driver import Driver
from protocols.errors import DeviceException, DriverGarbage, IllegalAddress
from protocols.model import ReadPlan, Span, TagReading
from protocols.plan import per_tag_spans, slice_tags, split_span


async def read_plan(driver: Driver, plan: ReadPlan) -> tuple[ReadPlan, list[TagReading]]:
    """Read every tag of ``plan`` once; return the plan to use from now on and one
    TagReading per tag (in ``plan.tags`` order).

    Single-span requests go through ``driver.read``, multi-span (S7) through
    ``driver.read_many``. When a span serving several tags is answered with
    IllegalAddress, the span is split (``split_span``), each tag is read alone, and only
    the tags the PLC still rejects come back bad, with an IllegalAddress naming the tag
    and its address; the returned plan keeps the split so the next poll does not ask for
    the bad block again. Other device exceptions (the PLC answered with an error code)
    mark the tags of that span bad. DriverTimeout, DriverConnectError and DriverGarbage
    propagate: the caller owns the link state and the retry policy.
    """
    readings: dict[str, TagReading] = {}
    refined = plan
    for request in plan.requests:
        results: list[bytes | Exception]
        if len(request.spans) == 1:
            try:
                results = [await driver.read(request.spans[0])]
            except DeviceException as exc:
                results = [exc]
        else:
            results = await driver.read_many(request.spans)
            if len(results) != len(request.spans):
                raise DriverGarbage(
                    f"asked for {len(request.spans)} items, got {len(results)} answers",
                    device=driver.endpoint.name,
                )
        for span, result in zip(request.spans, results, strict=True):
            if isinstance(result, bytes):
                _keep(readings, slice_tags(plan, span, result))
            elif isinstance(result, IllegalAddress) and len(span.tags) > 1:
                refined = split_span(refined, span)
                for piece in per_tag_spans(plan, span):
                    try:
                        raw = await driver.read(piece)
                    except DeviceException as exc:
                        _keep(readings, _bad(plan, piece, exc))
                    else:
                        _keep(readings, slice_tags(plan, piece, raw))
            elif isinstance(result, DeviceException):
                _keep(readings, _bad(plan, span, result))
            else:
                raise result
    return refined, [readings[t.name] for t in plan.tags if t.name in readings]


def _keep(readings: dict[str, TagReading], new: list[TagReading]) -> None:
    for r in new:
        readings[r.name] = r


def _bad(plan: ReadPlan, span: Span, exc: DeviceException) -> list[TagReading]:
    """One bad reading per tag of ``span``, each error naming its tag and address."""
    specs = {t.name: t for t in plan.tags}
    out = []
    for name in span.tags:
        message = f"tag {name} at '{specs[name].address}': {exc}"
        err: DeviceException
        if isinstance(exc, IllegalAddress):
            err = IllegalAddress(message, code=exc.code, name=exc.name, device=exc.device)
        else:
            err = DeviceException(message, code=exc.code, name=exc.name, device=exc.device)
        err.__cause__ = exc
        out.append(TagReading(name, b"", None, err))
    return out
