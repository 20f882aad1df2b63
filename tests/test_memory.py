"""Memory-aware concurrency: above the high-water mark, at most one job runs at a time."""

from __future__ import annotations

import logging

import anyio
import pytest

import conveyor
from conveyor import InvalidArgument

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


class Memory:
    """A memory reading the test sets."""

    def __init__(self, in_use: float) -> None:
        self.in_use = in_use

    def read(self) -> float:
        return self.in_use


def tracking_registry(peak: list[int]) -> conveyor.Registry:
    registry = conveyor.Registry()
    running = 0

    @registry.handler("work")
    async def work(payload: object) -> None:
        nonlocal running
        running += 1
        peak[0] = max(peak[0], running)
        await anyio.sleep(1)
        running -= 1

    return registry


async def test_above_the_high_water_mark_one_job_runs_at_a_time(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    peak = [0]
    memory = Memory(0.91)
    caplog.set_level(logging.INFO, logger="conveyor")
    async with open_test_queue(
        tracking_registry(peak), workers=8, memory_high_water=0.85, memory_reader=memory.read
    ) as queue:
        jobs = [await queue.enqueue("work", n) for n in range(4)]
        await queue.wait_all([job.id for job in jobs], timeout=600)
        assert (await queue.stats()).memory_limited
    assert peak[0] == 1
    assert "memory 91% >= 85%: running at most 1 job" in caplog.text


async def test_once_memory_recovers_every_worker_runs_again(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    peak = [0]
    memory = Memory(0.95)
    caplog.set_level(logging.INFO, logger="conveyor")
    async with open_test_queue(
        tracking_registry(peak), workers=8, memory_high_water=0.85, memory_reader=memory.read
    ) as queue:
        await queue.wait((await queue.enqueue("work", 0)).id, timeout=600)
        memory.in_use = 0.5
        await anyio.sleep(2)  # past the sampling interval
        jobs = [await queue.enqueue("work", n) for n in range(4)]
        await queue.wait_all([job.id for job in jobs], timeout=600)
        assert not (await queue.stats()).memory_limited
    assert peak[0] == 4
    assert "running up to every worker again" in caplog.text


async def test_no_high_water_mark_means_no_limit(open_test_queue: QueueOpener) -> None:
    peak = [0]
    async with open_test_queue(
        tracking_registry(peak), workers=8, memory_high_water=None, memory_reader=lambda: 1.0
    ) as queue:
        jobs = [await queue.enqueue("work", n) for n in range(4)]
        await queue.wait_all([job.id for job in jobs], timeout=600)
    assert peak[0] == 4


@pytest.mark.parametrize("value", [0, 1.5, "85%", True])
async def test_a_bad_high_water_mark_is_refused(
    open_test_queue: QueueOpener, value: object
) -> None:
    with pytest.raises(InvalidArgument, match="memory_high_water"):
        async with open_test_queue(conveyor.Registry(), memory_high_water=value):
            pass
