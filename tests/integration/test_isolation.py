"""A device that stops answering is reported within its timeout while a second device
keeps polling: counted in polls completed while the bad device's requests were pending,
never in wall-clock thresholds."""

from __future__ import annotations

import asyncio

from protocols.driver import Endpoint
from protocols.drivers import make_driver
from protocols.errors import DriverError, DriverTimeout
from protocols.model import Span
from protocols.sim import SimulatedPlant, demo_points
from tests.fixtures.plc import endpoint_of
from tests.services import free_port


async def test_silent_device_does_not_slow_the_other() -> None:
    plant = SimulatedPlant(seed=11)
    plant.add("good", "cnc", demo_points("cnc", "modbus-tcp"),
              Endpoint("modbus-tcp", "good", port=free_port(), unit=1))
    plant.add("bad", "imm", demo_points("imm", "modbus-tcp"),
              Endpoint("modbus-tcp", "bad", port=free_port(), unit=1))
    async with plant:
        plant.step(600)
        good = make_driver(endpoint_of(plant, "good", timeout_s=0.4))
        bad = make_driver(endpoint_of(plant, "bad", timeout_s=0.4))
        await good.connect()
        await bad.connect()
        good_polls = 0
        good_errors: list[DriverError] = []
        stop = asyncio.Event()

        async def poll_good() -> None:
            nonlocal good_polls
            while not stop.is_set():
                try:
                    await good.read(Span("HR", 0, 100, 40, ()))
                    good_polls += 1
                except DriverError as exc:
                    good_errors.append(exc)
                await asyncio.sleep(0.01)

        poller = asyncio.create_task(poll_good())
        # The bad device answers later than its timeout from now on.
        plant.inject("bad", "slow", delay_s=5.0, seconds=0)
        bad_errors: list[Exception] = []
        polls_while_pending: list[int] = []
        for _ in range(3):
            if not getattr(bad, "connected", True):
                await bad.connect()
            before = good_polls
            try:
                await bad.read(Span("HR", 0, 0, 12, ()))
            except DriverError as exc:
                bad_errors.append(exc)
            polls_while_pending.append(good_polls - before)
        stop.set()
        await poller
        await good.close()
        await bad.close()

    assert len(bad_errors) == 3
    assert all(isinstance(e, DriverTimeout) for e in bad_errors), bad_errors
    assert all("bad" in str(e) and "0.4 s" in str(e) for e in bad_errors)
    assert good_errors == []
    # While each of the bad device's requests hung, the good one kept polling.
    assert all(n >= 3 for n in polls_while_pending), polls_while_pending
