"""Cancelling: pending jobs never start, running handlers are cancelled, finished jobs stay."""

from __future__ import annotations

import threading

import anyio
import pytest

import conveyor
from conveyor import JobStatus

from helpers import Gate, QueueOpener

pytestmark = pytest.mark.anyio


async def test_a_cancelled_pending_job_never_starts(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    started: list[int] = []

    @registry.handler("work")
    async def work(payload: int) -> None:
        started.append(payload)

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("work", 1, delay=0.5)
        assert await queue.cancel(job.id) is True
        done = await queue.wait(job.id, timeout=10)
        await anyio.sleep(1)
    assert done.status is JobStatus.CANCELLED
    assert done.attempts == 0
    assert started == []


async def test_cancel_racing_dequeue_never_runs_the_job(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    finished: list[int] = []

    @registry.handler("work")
    async def work(payload: int) -> None:
        await anyio.sleep(0.01)
        finished.append(payload)

    async with open_test_queue(registry, workers=4) as queue:
        jobs = await queue.enqueue_many([conveyor.JobSpec("work", n) for n in range(40)])
        results = [await queue.cancel(job.id) for job in jobs]
        done = [await queue.wait(job.id, timeout=30) for job in jobs]
    for job, cancelled in zip(done, results, strict=True):
        if cancelled:
            assert job.status is JobStatus.CANCELLED
            if job.attempts == 0:
                # Cancelled while pending: it never ran. (A job cancelled while running may
                # have passed its last await before the cancel reached it; it still ends
                # cancelled, as the README says.)
                assert job.payload not in finished
        else:
            assert job.status is JobStatus.COMPLETED


async def test_cancel_of_a_running_job_cancels_its_handler(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()
    gate = Gate()
    saw_cancel: list[bool] = []

    @registry.handler("long")
    async def long(payload: None) -> str:
        try:
            await gate.pass_through()
        except anyio.get_cancelled_exc_class():
            saw_cancel.append(True)
            raise
        return "should not happen"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("long")
        await gate.entered.wait()
        assert await queue.cancel(job.id) is True
        done = await queue.wait(job.id, timeout=10)
    assert saw_cancel == [True]
    assert done.status is JobStatus.CANCELLED
    assert done.result is None


async def test_a_cancel_of_a_running_job_is_logged(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    registry = conveyor.Registry()
    gate = Gate()

    @registry.handler("long")
    async def long(payload: None) -> None:
        await gate.pass_through()

    caplog.set_level("INFO", logger="conveyor")
    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("long")
        await gate.entered.wait()
        await queue.cancel(job.id)
        await queue.wait(job.id, timeout=10)
    (record,) = [r for r in caplog.records if getattr(r, "conveyor_job", None) == job.id]
    assert record.levelname == "INFO"
    assert record.getMessage() == f"job {job.id} (long) was cancelled while running attempt 1"


async def test_a_cancelled_sync_handler_finishes_and_its_result_is_discarded(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    entered = threading.Event()
    release = threading.Event()

    @registry.handler("blocking")
    def blocking(payload: None) -> str:
        entered.set()
        release.wait(10)
        return "discarded"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("blocking")
        await anyio.to_thread.run_sync(entered.wait, 10)
        assert await queue.cancel(job.id) is True
        release.set()
        done = await queue.wait(job.id)
    assert done.status is JobStatus.CANCELLED
    assert done.result is None


async def test_cancel_of_a_finished_job_returns_false_and_changes_nothing(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> int:
        return 7

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("noop")
        before = await queue.wait(job.id, timeout=10)
        assert await queue.cancel(job.id) is False
        assert await queue.get(job.id) == before


async def test_cancel_of_an_unknown_job_returns_false(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(conveyor.Registry()) as queue:
        assert await queue.cancel(12345) is False


async def test_a_cancelled_job_can_be_requeued(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> str:
        return "ran"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("noop", delay=60)
        await queue.cancel(job.id)
        assert await queue.requeue(job.id) is True
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.COMPLETED
    assert done.result == "ran"


async def test_a_job_id_must_be_an_int(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(conveyor.Registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match="job id is an int"):
            await queue.cancel("7")  # type: ignore[arg-type]
