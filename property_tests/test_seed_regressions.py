"""The three bugs that made the old asyncio queue unusable, each pinned on the real queue."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

import conveyor
from conveyor import JobStatus
from harness import EPOCH


def run_queue(
    path: Path,
    registry: conveyor.Registry,
    body: Callable[[conveyor.Queue], Awaitable[None]],
    *,
    workers: int = 1,
) -> None:
    """Run ``body`` against a queue on ``path`` under virtual time (jumps whenever all wait)."""

    async def main() -> None:
        async with conveyor.open_queue(
            path,
            handlers=registry,
            workers=workers,
            clock=lambda: EPOCH + trio.current_time(),
            sql_thread=False,
        ) as queue:
            await body(queue)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("checkpoints", range(6))
def test_a_job_cancelled_as_it_is_dequeued_never_reports_completed(
    tmp_path: Path, checkpoints: int
) -> None:
    # The old queue let a worker dequeue a job while cancel marked it, and the worker's result
    # then overwrote the cancel. The scheduling points between the two vary who is first.
    registry = conveyor.Registry()
    started: list[int] = []

    @registry.handler("work")
    async def work(payload: int) -> int:
        started.append(payload)
        await trio.sleep(1)
        return payload

    async def body(queue: conveyor.Queue) -> None:
        job = await queue.enqueue("work", 1)
        for _ in range(checkpoints):
            await trio.lowlevel.checkpoint()
        assert await queue.cancel(job.id) is True
        done = await queue.wait(job.id, timeout=10)
        await trio.sleep(5)
        assert done.status is JobStatus.CANCELLED
        assert done.result is None
        assert (await queue.get(job.id)) == done
        # Claimed, its attempt counted, it may be cancelled before its handler starts.
        assert len(started) <= done.attempts <= 1

    run_queue(tmp_path / "jobs.db", registry, body)


def test_a_failing_job_runs_exactly_max_attempts_times_after_each_backoff(
    tmp_path: Path,
) -> None:
    # The old queue retried at once, and one time too many or too few.
    registry = conveyor.Registry()
    starts: list[float] = []

    @registry.handler(
        "flaky", max_attempts=4, backoff=conveyor.Backoff(initial=2, multiplier=3, jitter=0)
    )
    async def flaky(payload: None) -> None:
        starts.append(trio.current_time())
        raise ValueError("still broken")

    async def body(queue: conveyor.Queue) -> None:
        job = await queue.enqueue("flaky")
        done = await queue.wait(job.id, timeout=3600)
        await trio.sleep(3600)
        assert done.status is JobStatus.FAILED
        assert done.attempts == 4
        assert starts == [0.0, 2.0, 8.0, 26.0]

    run_queue(tmp_path / "jobs.db", registry, body)


def test_a_retry_with_a_delay_waits_exactly_that_long(tmp_path: Path) -> None:
    registry = conveyor.Registry()
    starts: list[float] = []

    @registry.handler("later", max_attempts=3)
    async def later(payload: None) -> str:
        starts.append(trio.current_time())
        if len(starts) < 3:
            raise conveyor.Retry(delay=30)
        return "done"

    async def body(queue: conveyor.Queue) -> None:
        job = await queue.enqueue("later")
        done = await queue.wait(job.id, timeout=3600)
        assert (done.status, done.attempts, done.result) == (JobStatus.COMPLETED, 3, "done")
        assert starts == [0.0, 30.0, 60.0]

    run_queue(tmp_path / "jobs.db", registry, body)


def test_a_higher_priority_job_runs_before_lower_priority_jobs_queued_before_it(
    tmp_path: Path,
) -> None:
    # The old queue ran jobs in arrival order once they were in its in-memory buffer.
    registry = conveyor.Registry()
    order: list[str] = []
    release = trio.Event()

    @registry.handler("work")
    async def work(payload: str) -> None:
        order.append(payload)
        if payload == "blocker":
            await release.wait()

    async def body(queue: conveyor.Queue) -> None:
        blocker = await queue.enqueue("work", "blocker", priority=1)
        await trio.testing.wait_all_tasks_blocked()
        low = [await queue.enqueue("work", f"low {n}", priority=9) for n in range(3)]
        urgent = await queue.enqueue("work", "urgent", priority=2)
        release.set()
        for job in [blocker, *low, urgent]:
            await queue.wait(job.id, timeout=60)
        assert order == ["blocker", "urgent", "low 0", "low 1", "low 2"]

    run_queue(tmp_path / "jobs.db", registry, body)
