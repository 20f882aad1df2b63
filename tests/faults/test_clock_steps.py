"""Time that jumps: the wall clock stepped forward or back (NTP, an administrator, a suspended
machine) neither delays a due job by more than a second, nor starts one early, nor makes a
measured duration wrong or negative."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import pytest
import trio
import trio.testing

import conveyor
from conveyor import Event, JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


class SteppedClock:
    """A wall clock a test can step: the test's own wall clock, plus an offset."""

    def __init__(self, base: Callable[[], float]) -> None:
        self._base = base
        self._offset = 0.0

    def __call__(self) -> float:
        return self._base() + self._offset

    def step(self, seconds: float) -> None:
        self._offset += seconds

    def true_time(self) -> float:
        """The wall clock as it should read: without the steps."""
        return self._base()


@pytest.fixture
def clock(wall_clock: Callable[[], float]) -> SteppedClock:
    return SteppedClock(wall_clock)


def recording_registry(starts: list[float]) -> conveyor.Registry:
    """A registry whose ``due`` handler records the event loop's time when it starts."""
    registry = conveyor.Registry()

    @registry.handler("due")
    async def due(payload: None) -> None:
        starts.append(anyio.current_time())

    return registry


@pytest.mark.trio_only
async def test_a_job_made_due_by_a_step_forward_starts_within_a_second(
    open_test_queue: QueueOpener, clock: SteppedClock
) -> None:
    starts: list[float] = []
    async with open_test_queue(recording_registry(starts), clock=clock) as queue:
        job = await queue.enqueue("due", delay=3600)
        await anyio.sleep(10)
        clock.step(3600)
        stepped_at = anyio.current_time()
        await queue.wait(job.id)
    assert starts[0] - stepped_at <= 1.0


@pytest.mark.trio_only
async def test_a_step_back_then_its_correction_delay_a_due_job_by_at_most_a_second(
    open_test_queue: QueueOpener, clock: SteppedClock
) -> None:
    starts: list[float] = []
    async with open_test_queue(recording_registry(starts), clock=clock) as queue:
        began = anyio.current_time()
        run_at = clock.true_time() + 30
        clock.step(-20)
        job = await queue.enqueue("due", run_at=run_at)
        await anyio.sleep(5)
        clock.step(20)
        await queue.wait(job.id)
    assert 30 <= starts[0] - began <= 31


@pytest.mark.trio_only
async def test_a_step_back_keeps_a_job_from_starting_before_the_clock_reaches_its_time(
    open_test_queue: QueueOpener, clock: SteppedClock
) -> None:
    starts: list[float] = []
    async with open_test_queue(recording_registry(starts), clock=clock) as queue:
        began = anyio.current_time()
        job = await queue.enqueue("due", delay=30)
        await anyio.sleep(10)
        clock.step(-20)
        await queue.wait(job.id)
    assert 50 <= starts[0] - began <= 51


@pytest.mark.trio_only
async def test_an_idle_queue_wakes_only_for_its_heartbeat(open_test_queue: QueueOpener) -> None:
    """Nothing scheduled, nothing running: no task wakes by itself but to renew the lease
    (no polling)."""
    async with open_test_queue(conveyor.Registry(), heartbeat=30.0):
        await trio.testing.wait_all_tasks_blocked()
        assert trio.lowlevel.current_statistics().seconds_to_next_deadline == 30.0


@pytest.mark.trio_only
@pytest.mark.parametrize("ends", ["returns", "raises"])
async def test_a_step_back_during_a_run_leaves_the_attempts_duration_exact(
    open_test_queue: QueueOpener, clock: SteppedClock, ends: str
) -> None:
    registry = conveyor.Registry()
    changes: list[conveyor.Change] = []

    @registry.handler("ten_seconds", max_attempts=1)
    async def ten_seconds(payload: None) -> None:
        await anyio.sleep(5)
        clock.step(-60)
        await anyio.sleep(5)
        if ends == "raises":
            raise ValueError("after ten seconds")

    def record(batch: Sequence[conveyor.Change]) -> None:
        changes.extend(change for change in batch if change.duration is not None)

    async with open_test_queue(registry, clock=clock) as queue:
        queue.subscribe(record)
        await queue.wait((await queue.enqueue("ten_seconds")).id)
    assert [change.event for change in changes] == [
        Event.COMPLETED if ends == "returns" else Event.FAILED
    ]
    assert changes[0].duration == pytest.approx(10)


async def test_stats_count_runs_across_a_step_back_without_a_negative_duration(
    open_test_queue: QueueOpener, clock: SteppedClock
) -> None:
    registry = conveyor.Registry()

    @registry.handler("steps_back", max_attempts=1)
    async def steps_back(payload: bool) -> None:
        clock.step(-10)
        if not payload:
            raise ValueError("failed while the clock stepped back")

    async with open_test_queue(registry, clock=clock, workers=1) as queue:
        jobs = await queue.enqueue_many(
            [conveyor.JobSpec("steps_back", True), conveyor.JobSpec("steps_back", False)]
        )
        done = [await queue.wait(job.id, timeout=30) for job in jobs]
        stats = await queue.stats()
    assert [job.status for job in done] == [JobStatus.COMPLETED, JobStatus.FAILED]
    assert stats.success_rate == 0.5
    assert stats.avg_duration is not None
    assert stats.avg_duration >= 0
