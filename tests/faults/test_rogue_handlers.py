"""Handlers that misbehave: whatever a handler raises, or however long it blocks, only its own
attempt fails, and the queue keeps running."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

import anyio
import pytest
import sniffio
import trio

import conveyor
from conveyor import JobStatus
from conveyor._actors import pool

from helpers import QueueOpener

pytestmark = pytest.mark.anyio

NO_WAIT = conveyor.Backoff(initial=0, jitter=0)


class Rogue(BaseException):
    """A ``BaseException`` of a handler's own."""


def registry_with_ok() -> conveyor.Registry:
    """A registry whose ``ok`` handler returns its payload: the queue still runs if it does."""
    registry = conveyor.Registry()

    @registry.handler("ok")
    async def ok(payload: int) -> int:
        return payload

    return registry


async def still_runs(queue: conveyor.Queue) -> bool:
    done = await queue.wait((await queue.enqueue("ok", 7)).id, timeout=30)
    return done.status is JobStatus.COMPLETED and done.result == 7


@pytest.mark.parametrize("exception", [SystemExit, KeyboardInterrupt, GeneratorExit, Rogue])
@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handler_raising_a_base_exception_fails_its_attempt_and_is_retried(
    open_test_queue: QueueOpener, exception: type[BaseException], kind: str
) -> None:
    registry = registry_with_ok()

    def rogue(payload: None) -> None:
        raise exception("from the handler")

    async def async_rogue(payload: None) -> None:
        rogue(payload)

    registry.handler("rogue", max_attempts=2, backoff=NO_WAIT)(
        async_rogue if kind == "async" else rogue
    )

    async with open_test_queue(registry) as queue:
        # No timeout for a sync handler: under the mock clock, time may leap while a thread
        # runs (trio#456).
        failed = await queue.wait((await queue.enqueue("rogue")).id)
        assert await still_runs(queue)
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 2
    assert f"{exception.__name__}: from the handler" in (failed.error or "")


async def raise_someone_elses_cancellation() -> None:
    """Raise the cancellation of a scope or task that is not the caller's."""
    if sniffio.current_async_library() == "asyncio":
        task = asyncio.ensure_future(asyncio.sleep(3600))
        await asyncio.sleep(0)
        task.cancel()
        await task  # raises the CancelledError of the task that was cancelled
    with trio.CancelScope() as elsewhere:
        elsewhere.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            caught = exc
    raise caught


async def test_a_cancellation_from_someone_elses_scope_fails_the_attempt(
    open_test_queue: QueueOpener,
) -> None:
    registry = registry_with_ok()

    @registry.handler("awaits_a_cancelled_task", max_attempts=2, backoff=NO_WAIT)
    async def awaits_a_cancelled_task(payload: None) -> None:
        await raise_someone_elses_cancellation()

    body_ran_to_its_end = False
    async with open_test_queue(registry) as queue:
        failed = await queue.wait((await queue.enqueue("awaits_a_cancelled_task")).id, timeout=30)
        assert await still_runs(queue)
        body_ran_to_its_end = True
    assert body_ran_to_its_end
    assert failed.status is JobStatus.FAILED
    assert failed.attempts == 2
    assert "Cancelled" in (failed.error or "")


async def sleep_beside_two_children(started: anyio.Event) -> None:
    """Sleep in a nursery (a task group) of one's own with two children: cancelled, a trio
    nursery raises a group of three cancellations."""
    if sniffio.current_async_library() == "trio":
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            started.set()
            await trio.sleep_forever()
    async with asyncio.TaskGroup() as group:
        group.create_task(asyncio.sleep(3600))
        group.create_task(asyncio.sleep(3600))
        started.set()
        await asyncio.sleep(3600)


async def test_a_cancel_reaches_a_handler_inside_its_own_task_group(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    started = anyio.Event()

    @registry.handler("fans_out")
    async def fans_out(payload: None) -> None:
        await sleep_beside_two_children(started)

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("fans_out")
        await started.wait()
        assert await queue.cancel(job.id) is True
        done = await queue.wait(job.id, timeout=30)
    assert done.status is JobStatus.CANCELLED
    assert done.attempts == 1


async def test_shutdown_interrupts_a_handler_inside_its_own_task_group_without_using_an_attempt(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    started = anyio.Event()

    @registry.handler("fans_out")
    async def fans_out(payload: None) -> None:
        await sleep_beside_two_children(started)

    async with open_test_queue(registry, shutdown_grace=0.1) as queue:
        job = await queue.enqueue("fans_out")
        await started.wait()
    async with open_test_queue(conveyor.Registry()) as queue:
        interrupted = await queue.get(job.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.attempts) == (JobStatus.PENDING, 0)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_real_ctrl_c_while_a_handler_runs_still_stops_the_program(
    db_path: Path, backend: str
) -> None:
    registry = conveyor.Registry()

    @registry.handler("busy")
    async def busy(payload: None) -> None:
        signal.raise_signal(signal.SIGINT)
        # Trio raises the interrupt in whatever code runs when the signal lands: this
        # handler's; asyncio's runner cancels the main task instead.
        sum(range(1000))
        await anyio.sleep(3600)

    async def main() -> None:
        async with conveyor.open_queue(db_path, handlers=registry, shutdown_grace=0) as queue:
            await queue.wait((await queue.enqueue("busy")).id)

    with pytest.raises(KeyboardInterrupt):
        anyio.run(main, backend=backend)


async def test_sync_handlers_get_a_thread_for_every_worker_slot(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    # Passes only once all 100 handlers wait at it together (anyio's default limit is 40).
    together = threading.Barrier(100, timeout=20)

    @registry.handler("meet", max_attempts=1)
    def meet(payload: int) -> int:
        together.wait()
        return payload

    async with open_test_queue(registry, workers=100) as queue:
        jobs = await queue.enqueue_many([conveyor.JobSpec("meet", n) for n in range(100)])
        done = [await queue.wait(job.id) for job in jobs]
    assert [job.status for job in done] == [JobStatus.COMPLETED] * 100


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_sync_jobs_timeout_counts_from_its_handlers_start(db_path: Path, backend: str) -> None:
    """Real time: 100 handlers of 1 s each fit their 2.5 s timeout only if none waits for a
    thread (with 40 threads, the third wave would end at 3 s)."""
    registry = conveyor.Registry()

    @registry.handler("second", max_attempts=1, timeout=2.5)
    def second(payload: None) -> None:
        time.sleep(1)

    async def main() -> list[conveyor.Job]:
        async with conveyor.open_queue(db_path, handlers=registry, workers=100) as queue:
            jobs = await queue.enqueue_many([conveyor.JobSpec("second")] * 100)
            return [await queue.wait(job.id, timeout=60) for job in jobs]

    done = anyio.run(main, backend=backend)
    assert [(job.status, job.error) for job in done] == [(JobStatus.COMPLETED, None)] * 100


async def test_an_async_handler_blocking_the_loop_is_named_in_one_warning(
    open_test_queue: QueueOpener,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Seen within 0.5 s + one look (0.2 s) of a 1.5 s stall: wide margins both ways.
    monkeypatch.setattr(pool, "STALL_THRESHOLD", 0.5)
    registry = conveyor.Registry()

    @registry.handler("sleepy")
    async def sleepy(payload: None) -> None:
        time.sleep(1.5)  # noqa: ASYNC251 (blocking the loop is the point)

    with caplog.at_level(logging.INFO, logger="conveyor"):
        async with open_test_queue(registry) as queue:
            job = await queue.enqueue("sleepy")
            await queue.wait(job.id)
    # Only this stall's warnings count: a loaded machine may stall the loop elsewhere too.
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and f"job {job.id} ('sleepy')" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "the event loop has been blocked for" in warnings[0]
    assert "in sleepy" in warnings[0]
    assert any("the event loop runs again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_an_async_handler_that_blocks_past_its_timeout_is_recorded_as_timed_out(
    db_path: Path, backend: str
) -> None:
    """Real time: the handler returns after its deadline without reaching a checkpoint."""
    registry = conveyor.Registry()

    @registry.handler("blocks", max_attempts=1, timeout=0.2)
    async def blocks(payload: None) -> str:
        time.sleep(0.6)  # noqa: ASYNC251 (blocking the loop is the point)
        return "too late"

    async def main() -> conveyor.Job:
        async with conveyor.open_queue(db_path, handlers=registry) as queue:
            return await queue.wait((await queue.enqueue("blocks")).id, timeout=30)

    done = anyio.run(main, backend=backend)
    assert done.status is JobStatus.FAILED
    assert done.result is None
    assert (done.error or "").startswith("timed out after 0.2 s (the handler ran for ")
