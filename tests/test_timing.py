"""Time: delayed and scheduled jobs, timeouts, and waiting."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import conveyor
from conveyor import JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


def recording_registry(
    starts: dict[str, float], wall_clock: Callable[[], float]
) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("at")
    async def at(payload: str) -> None:
        starts[payload] = wall_clock()

    return registry


@pytest.mark.trio_only
async def test_a_delayed_job_starts_when_its_delay_is_over(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    starts: dict[str, float] = {}
    async with open_test_queue(recording_registry(starts, wall_clock)) as queue:
        enqueued_at = wall_clock()
        job = await queue.enqueue("at", "later", delay=3600)
        await queue.wait(job.id)
    assert starts["later"] - enqueued_at == pytest.approx(3600, abs=0.01)


@pytest.mark.trio_only
async def test_jobs_scheduled_with_run_at_start_in_time_order(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    starts: dict[str, float] = {}
    async with open_test_queue(recording_registry(starts, wall_clock), workers=1) as queue:
        now = wall_clock()
        jobs = [
            await queue.enqueue("at", name, run_at=now + offset)
            for name, offset in [("third", 300), ("first", 10), ("second", 100)]
        ]
        for job in jobs:
            await queue.wait(job.id)
    assert sorted(starts, key=starts.__getitem__) == ["first", "second", "third"]
    assert starts["first"] == pytest.approx(now + 10, abs=0.01)
    assert starts["third"] == pytest.approx(now + 300, abs=0.01)


async def test_a_delayed_job_does_not_start_early(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    starts: dict[str, float] = {}
    async with open_test_queue(recording_registry(starts, wall_clock)) as queue:
        job = await queue.enqueue("at", "soon", delay=0.2)
        await queue.wait(job.id, timeout=10)
    assert starts["soon"] >= job.run_at


async def test_a_run_at_in_the_past_runs_at_once(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    starts: dict[str, float] = {}
    async with open_test_queue(recording_registry(starts, wall_clock)) as queue:
        job = await queue.enqueue("at", "overdue", run_at=wall_clock() - 3600)
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.COMPLETED


async def test_a_job_over_its_timeout_is_cancelled_and_counts_as_failed(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    cancelled: list[bool] = []

    @registry.handler("slow", max_attempts=1, timeout=0.1)
    async def slow(payload: None) -> None:
        try:
            await anyio.sleep(3600)
        except anyio.get_cancelled_exc_class():
            cancelled.append(True)
            raise

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("slow")).id, timeout=30)
    assert cancelled == [True]
    assert done.status is JobStatus.FAILED
    assert done.error == "timed out after 0.1 s (attempt cancelled)"


@pytest.mark.trio_only
async def test_a_timed_out_attempt_is_retried_with_backoff(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    registry = conveyor.Registry()
    starts: list[float] = []

    @registry.handler(
        "slow_once", timeout=5, backoff=conveyor.Backoff(initial=20, jitter=0), max_attempts=2
    )
    async def slow_once(payload: None) -> str:
        starts.append(wall_clock())
        if len(starts) == 1:
            await anyio.sleep(3600)
        return "fast enough"

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("slow_once")).id)
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 2
    assert starts[1] - starts[0] == pytest.approx(25, abs=0.01)


async def test_the_jobs_own_timeout_wins_over_the_handlers(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("slow", max_attempts=1, timeout=3600)
    async def slow(payload: None) -> None:
        await anyio.sleep(3600)

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("slow", timeout=0.05)).id, timeout=30)
    assert done.error == "timed out after 0.05 s (attempt cancelled)"


async def test_wait_returns_at_once_for_a_finished_job(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> None:
        return None

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("noop")
        first = await queue.wait(job.id, timeout=10)
        with anyio.fail_after(1):
            assert await queue.wait(job.id, timeout=0) == first


async def test_wait_gives_up_after_its_timeout(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> None:
        return None

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("noop", delay=3600)
        with pytest.raises(conveyor.WaitTimeout, match=f"job {job.id} did not finish within 0.1 s"):
            await queue.wait(job.id, timeout=0.1)
        with pytest.raises(TimeoutError):
            await queue.wait(job.id, timeout=0.1)


async def test_wait_for_an_unknown_job_raises_job_not_found(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(conveyor.Registry()) as queue:
        with pytest.raises(conveyor.JobNotFound, match="no job has id 99"):
            await queue.wait(99)


async def test_many_waiters_on_one_job_all_wake(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> int:
        return 1

    results: list[object] = []
    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("noop", delay=0.1)

        async def waiter() -> None:
            results.append((await queue.wait(job.id, timeout=10)).result)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(waiter)
    assert results == [1] * 5
