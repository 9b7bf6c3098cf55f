"""read_plan against a tiny in-memory Driver (the only fake: real servers are tested in
tests/integration)."""

from __future__ import annotations

import pytest

from protocols import (
    DataType,
    DeviceException,
    Driver,
    DriverConnectError,
    DriverGarbage,
    DriverTimeout,
    Endpoint,
    IllegalAddress,
    ReadPlan,
    Span,
    TagSpec,
)
from protocols.address import parse_address
from protocols.codec import encode
from protocols.plan import plan_reads
from protocols.read import read_plan


class MemoryDriver(Driver):
    """Serves spans from a dict of registers (2 bytes each) or S7 bytes; addresses in
    ``missing`` answer IllegalAddress; ``fail`` raises on every read."""

    def __init__(self, memory: dict[tuple[str, int], bytes], *, unit: int = 2,
                 missing: set[tuple[str, int]] | None = None,
                 fail: Exception | None = None, busy: bool = False) -> None:
        super().__init__(Endpoint("modbus-tcp", "press-1"))
        self.memory, self.unit = memory, unit
        self.missing = missing or set()
        self.fail, self.busy = fail, busy
        self.reads: list[Span] = []
        self.many: list[tuple[Span, ...]] = []

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def read(self, span: Span) -> bytes:
        self.reads.append(span)
        if self.fail is not None:
            raise self.fail
        if self.busy:
            raise DeviceException("slave device busy", code=6, name="SLAVE_BUSY",
                                  device="press-1")
        cells = [(span.area, a) for a in range(span.start, span.start + span.count)]
        if any(c in self.missing for c in cells):
            raise IllegalAddress(
                f"illegal data address reading {span.area}{span.start}+{span.count}",
                code=2, name="ILLEGAL_ADDRESS", device="press-1")
        return b"".join(self.memory.get(c, b"\x00" * self.unit) for c in cells)

    async def read_many(self, spans: tuple[Span, ...]) -> list[bytes | Exception]:
        self.many.append(spans)
        return await super().read_many(spans)


def mb(name: str, address: str, type_: DataType = DataType.UINT16) -> TagSpec:
    return TagSpec(name, parse_address(address, "modbus-tcp"), type_)


def registers(start: int, raw: bytes) -> dict[tuple[str, int], bytes]:
    return {("HR", start + i): raw[2 * i:2 * i + 2] for i in range(len(raw) // 2)}


TAGS = [mb("good", "HR0", DataType.UINT32), mb("mode", "HR2"), mb("bad", "HR3"),
        mb("temp", "HR4", DataType.FLOAT32)]


def memory() -> dict[tuple[str, int], bytes]:
    mem = registers(0, encode(TAGS[0], 70000) + encode(TAGS[1], 2))
    mem.update(registers(4, encode(TAGS[3], 23.5)))
    return mem


async def test_reads_every_tag_in_one_request() -> None:
    plan = plan_reads("modbus-tcp", TAGS)
    driver = MemoryDriver(memory())
    refined, readings = await read_plan(driver, plan)
    assert refined is plan
    assert len(driver.reads) == 1
    assert [(r.name, r.value) for r in readings] == [
        ("good", 70000), ("mode", 2), ("bad", 0), ("temp", 23.5)]
    assert all(r.good for r in readings)


async def test_illegal_address_splits_the_block_and_marks_only_the_bad_tag() -> None:
    plan = plan_reads("modbus-tcp", TAGS)
    driver = MemoryDriver(memory(), missing={("HR", 3)})
    refined, readings = await read_plan(driver, plan)
    by_name = {r.name: r for r in readings}
    assert [r.name for r in readings] == ["good", "mode", "bad", "temp"]
    assert by_name["good"].value == 70000 and by_name["temp"].value == 23.5
    assert by_name["mode"].good
    bad = by_name["bad"]
    assert not bad.good and bad.value is None
    assert isinstance(bad.error, IllegalAddress)
    assert "tag bad at 'HR3'" in str(bad.error)
    assert bad.error.code == 2 and bad.error.device == "press-1"
    # The refined plan reads tag by tag from now on; the next poll asks no bad block.
    assert [r.spans[0].tags for r in refined.requests] == [("good",), ("mode",), ("bad",),
                                                           ("temp",)]
    driver.reads.clear()
    again, readings2 = await read_plan(driver, refined)
    assert again is refined
    assert len(driver.reads) == 4
    assert [r.good for r in readings2] == [True, True, False, True]


async def test_single_tag_illegal_address_marks_it_without_splitting() -> None:
    plan = plan_reads("modbus-tcp", [mb("x", "HR0"), mb("y", "HR900")])
    driver = MemoryDriver({}, missing={("HR", 900)})
    refined, readings = await read_plan(driver, plan)
    assert refined is plan
    assert [(r.name, r.good) for r in readings] == [("x", True), ("y", False)]


async def test_other_device_exceptions_mark_the_span_bad() -> None:
    plan = plan_reads("modbus-tcp", TAGS)
    refined, readings = await read_plan(MemoryDriver(memory(), busy=True), plan)
    assert refined is plan
    assert all(isinstance(r.error, DeviceException) for r in readings)
    assert not any(isinstance(r.error, IllegalAddress) for r in readings)
    assert "slave device busy" in str(readings[0].error)


@pytest.mark.parametrize(
    "error",
    [DriverTimeout("no answer in 1.0 s", device="press-1"),
     DriverConnectError("connection refused", device="press-1"),
     DriverGarbage("answer for the wrong unit", device="press-1")],
)
async def test_link_errors_propagate(error: Exception) -> None:
    plan = plan_reads("modbus-tcp", TAGS)
    with pytest.raises(type(error)):
        await read_plan(MemoryDriver(memory(), fail=error), plan)


def s7tag(name: str, address: str, type_: DataType) -> TagSpec:
    return TagSpec(name, parse_address(address, "s7"), type_)


async def test_s7_multi_var_with_one_bad_item() -> None:
    tags = [s7tag("a", "DB1.DBW0", DataType.INT16), s7tag("b", "DB1.DBW2", DataType.INT16),
            s7tag("m", "MW0", DataType.UINT16)]
    plan = plan_reads("s7", tags)
    assert len(plan.requests) == 1 and len(plan.requests[0].spans) == 2
    mem = {("DB", 0): b"\x00", ("DB", 1): b"\x07", ("M", 0): b"\x00", ("M", 1): b"\x09"}
    driver = MemoryDriver(mem, unit=1, missing={("DB", 3)})
    refined, readings = await read_plan(driver, plan)
    assert len(driver.many) == 1
    assert [(r.name, r.value, r.good) for r in readings] == [
        ("a", 7, True), ("b", None, False), ("m", 9, True)]
    assert sorted(s.tags for r in refined.requests for s in r.spans) == [
        ("a",), ("b",), ("m",)]


async def test_read_many_answer_count_is_checked() -> None:
    class Short(MemoryDriver):
        async def read_many(self, spans: tuple[Span, ...]) -> list[bytes | Exception]:
            return [b"\x00\x00"]

    tags = [s7tag("a", "DB1.DBW0", DataType.INT16), s7tag("m", "MW0", DataType.UINT16)]
    plan: ReadPlan = plan_reads("s7", tags)
    with pytest.raises(DriverGarbage, match="2 items, got 1"):
        await read_plan(Short({}, unit=1), plan)
