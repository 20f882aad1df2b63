"""Running jobs: results, order, sync handlers, the job context and progress."""

from __future__ import annotations

import math
import threading

import anyio
import pytest
import trio

import conveyor
from conveyor import JobSpec, JobStatus
from conveyor._actors import pool

from helpers import Gate, QueueOpener, wait_all

pytestmark = pytest.mark.anyio


async def test_a_completed_job_holds_the_handlers_result(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("add")
    async def add(payload: dict[str, int]) -> dict[str, int]:
        return {"sum": payload["a"] + payload["b"]}

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("add", {"a": 2, "b": 3})
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.COMPLETED
    assert done.result == {"sum": 5}
    assert done.attempts == 1
    assert done.error is None
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.started_at <= done.finished_at


async def test_with_one_worker_jobs_start_by_priority_then_fifo(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    order: list[int] = []

    @registry.handler("record")
    async def record(payload: int) -> None:
        order.append(payload)

    async with open_test_queue(registry, workers=1) as queue:
        # Delayed, so that all of them are queued before the first one can start.
        specs = [
            JobSpec("record", n, priority=p, delay=1) for n, p in enumerate([5, 9, 1, 5, 1, 3])
        ]
        jobs = await queue.enqueue_many(specs)
        await wait_all(queue, jobs)
    assert order == [2, 4, 5, 0, 3, 1]


async def test_a_higher_priority_job_enqueued_later_runs_before_queued_lower_ones(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    order: list[str] = []
    gate = Gate()

    @registry.handler("block")
    async def block(payload: None) -> None:
        await gate.pass_through()

    @registry.handler("record")
    async def record(payload: str) -> None:
        order.append(payload)

    async with open_test_queue(registry, workers=1) as queue:
        blocker = await queue.enqueue("block")
        await gate.entered.wait()
        low = [await queue.enqueue("record", f"low{n}", priority=9) for n in range(3)]
        high = await queue.enqueue("record", "high", priority=1)
        gate.open()
        await wait_all(queue, [blocker, *low, high])
    assert order == ["high", "low0", "low1", "low2"]


async def test_workers_run_jobs_concurrently(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    running = 0
    most = 0

    @registry.handler("overlap")
    async def overlap(payload: None) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await anyio.sleep(0.05)
        running -= 1

    async with open_test_queue(registry, workers=3) as queue:
        jobs = await queue.enqueue_many([JobSpec("overlap") for _ in range(9)])
        await wait_all(queue, jobs)
    assert most == 3


class WorkerSteps(trio.abc.Instrument):
    """Counts the steps trio runs the pool's worker tasks."""

    def __init__(self) -> None:
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("Pool._work"):
            self.count += 1


@pytest.mark.trio_only  # counts trio's task steps
async def test_a_batch_of_jobs_that_never_wait_wakes_one_idle_worker_besides_the_one_running_it(
    open_test_queue: QueueOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "HOG_LIMIT", math.inf)  # no yield between jobs on a slow machine
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> None:
        return None

    steps = WorkerSteps()
    async with open_test_queue(registry, workers=8) as queue:
        await anyio.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        jobs = await queue.enqueue_many([JobSpec("noop") for _ in range(8)])
        await wait_all(queue, jobs)
        trio.lowlevel.remove_instrument(steps)
    assert steps.count == 2


async def test_a_sync_handler_runs_in_a_worker_thread(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    threads: list[int] = []

    @registry.handler("blocking")
    def blocking(payload: int) -> int:
        threads.append(threading.get_ident())
        assert conveyor.current_job().name == "blocking"
        return payload * 2

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("blocking", 21)
        # No timeout: under the mock clock, time may leap while the thread runs (trio#456).
        done = await queue.wait(job.id)
    assert done.result == 42
    assert threads != [threading.get_ident()]


async def test_current_job_describes_the_running_job(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    seen: list[tuple[int, str, int, object]] = []

    @registry.handler("look")
    async def look(payload: object) -> None:
        context = conveyor.current_job()
        seen.append((context.id, context.name, context.attempt, context.payload))

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("look", {"x": 1})
        await queue.wait(job.id, timeout=10)
    assert seen == [(job.id, "look", 1, {"x": 1})]


def test_current_job_outside_a_handler_raises() -> None:
    with pytest.raises(conveyor.NoJobContext, match="only available inside"):
        conveyor.current_job()


async def test_progress_is_visible_while_the_job_runs(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    gate = Gate()

    @registry.handler("slow")
    async def slow(payload: None) -> str:
        conveyor.current_job().set_progress(0.25, "warming up")
        conveyor.current_job().set_progress(0.5, "half way")
        await gate.pass_through()
        return "done"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("slow")
        await gate.entered.wait()
        with anyio.fail_after(10):
            # Progress is observable only by reading the job, so the test polls.
            while (running := await queue.get(job.id)) is not None and running.progress != 0.5:  # noqa: ASYNC110
                await anyio.sleep(0.001)
        assert running is not None
        assert running.status is JobStatus.RUNNING
        assert running.progress_message == "half way"
        gate.open()
        done = await queue.wait(job.id, timeout=10)
    assert (done.progress, done.progress_message) == (0.5, "half way")


async def test_progress_from_a_sync_handler_is_recorded(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("steps")
    def steps(payload: None) -> None:
        for n in range(1, 5):
            conveyor.current_job().set_progress(n / 4, f"step {n}")

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("steps")
        done = await queue.wait(job.id)  # no timeout: see the sync handler test above
    assert (done.progress, done.progress_message) == (1.0, "step 4")


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), "half"])
async def test_progress_outside_zero_to_one_is_refused(
    open_test_queue: QueueOpener, fraction: object
) -> None:
    registry = conveyor.Registry()
    errors: list[str] = []

    @registry.handler("bad")
    async def bad(payload: None) -> None:
        with pytest.raises(conveyor.InvalidArgument, match="progress must be a number") as caught:
            conveyor.current_job().set_progress(fraction)  # type: ignore[arg-type]
        errors.append(str(caught.value))

    async with open_test_queue(registry) as queue:
        await queue.wait((await queue.enqueue("bad")).id, timeout=10)
    assert len(errors) == 1


async def test_a_result_that_is_not_json_fails_the_job_without_retry(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("odd", max_attempts=5)
    async def odd(payload: None) -> object:
        return {1, 2}

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("odd")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1
    assert done.error is not None
    assert "result of job" in done.error
    assert "not JSON-serializable" in done.error


async def test_progress_from_a_thread_does_not_wait_for_the_event_loop(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    started = threading.Event()
    loop_blocked = threading.Event()
    reported = threading.Event()

    @registry.handler("step")
    def step(payload: None) -> None:
        started.set()
        loop_blocked.wait(10)
        conveyor.current_job().set_progress(0.5, "half way")
        reported.set()

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("step")
        await anyio.to_thread.run_sync(started.wait, 10)
        # The event loop is blocked here on purpose: a report that needed it would hang.
        loop_blocked.set()
        returned_while_blocked = reported.wait(10)
        done = await queue.wait(job.id)  # no timeout: see the sync handler test above
    assert returned_while_blocked
    assert (done.progress, done.progress_message) == (0.5, "half way")
