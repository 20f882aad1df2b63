"""Opening and closing: argument checks, graceful shutdown, and stopping abruptly."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import conveyor
from conveyor import JobStatus

from helpers import Gate, QueueOpener

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"handlers": {}}, "handlers must be a conveyor.Registry"),
        ({"workers": -1}, "workers must be an int >= 0"),
        ({"shutdown_grace": -1}, "shutdown_grace must be >= 0"),
        ({"max_pending": 0}, "max_pending must be an int >= 1"),
        ({"synchronous": "off"}, "synchronous must be 'normal' or 'full'"),
        ({"clock": 5}, "clock must be a function"),
    ],
)
async def test_open_queue_refuses_bad_options(
    db_path: Path, options: dict[str, object], message: str
) -> None:
    options.setdefault("handlers", conveyor.Registry())
    with pytest.raises(conveyor.InvalidArgument, match=message):
        async with conveyor.open_queue(db_path, **options):  # type: ignore[arg-type]
            pass


async def test_leaving_the_block_lets_running_jobs_finish(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("short")
    async def short(payload: None) -> str:
        await anyio.sleep(0.2)
        return "finished"

    async with open_test_queue(registry, shutdown_grace=30) as queue:
        job = await queue.enqueue("short")
        await anyio.sleep(0.05)
    async with open_test_queue(registry) as queue:
        done = await queue.get(job.id)
    assert done is not None
    assert done.status is JobStatus.COMPLETED


async def test_jobs_past_the_grace_return_to_pending_without_losing_an_attempt(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    gate = Gate()
    attempts: list[int] = []

    @registry.handler("stuck", max_attempts=1)
    async def stuck(payload: None) -> str:
        attempts.append(conveyor.current_job().attempt)
        if len(attempts) == 1:
            await gate.pass_through()
        return "done"

    async with open_test_queue(registry, shutdown_grace=0.1) as queue:
        job = await queue.enqueue("stuck")
        await gate.entered.wait()
    async with open_test_queue(registry) as queue:
        done = await queue.wait(job.id, timeout=10)
    assert attempts == [1, 1]
    assert done.status is JobStatus.COMPLETED


@pytest.mark.trio_only  # a grace of several heartbeats: virtual time only
async def test_a_queue_keeps_its_lease_through_the_grace_of_its_shutdown(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    gate = Gate()

    @registry.handler("stuck", max_attempts=1)
    async def stuck(payload: None) -> None:
        await gate.pass_through()

    # Another process on the file would take over the jobs of a lease that lapsed.
    async with open_test_queue(None) as other:
        async with open_test_queue(registry, heartbeat=1.0, shutdown_grace=6.0) as queue:
            job = await queue.enqueue("stuck")
            await gate.entered.wait()
        interrupted = await other.get(job.id)
    assert interrupted is not None
    assert (interrupted.status, interrupted.attempts) == (JobStatus.PENDING, 0)


async def test_commands_after_the_block_raise_queue_closed(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> None:
        return None

    async with open_test_queue(registry) as queue:
        pass
    with pytest.raises(conveyor.QueueClosed):
        await queue.enqueue("noop")
    with pytest.raises(conveyor.QueueClosed):
        await queue.get(1)


async def test_an_error_in_the_block_propagates_as_itself(open_test_queue: QueueOpener) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with open_test_queue(conveyor.Registry()):
            raise KeyError("mine")


async def test_a_cancelled_block_stops_at_once_and_recovery_counts_the_attempt(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    gate = Gate()
    attempts: list[int] = []

    @registry.handler("stuck", max_attempts=3)
    async def stuck(payload: None) -> str:
        attempts.append(conveyor.current_job().attempt)
        if len(attempts) == 1:
            await gate.pass_through()
        return "second time lucky"

    with anyio.CancelScope() as scope:
        async with open_test_queue(registry, shutdown_grace=3600) as queue:
            job = await queue.enqueue("stuck")
            await gate.entered.wait()
            scope.cancel()
            await anyio.sleep(3600)
    async with open_test_queue(registry) as queue:
        done = await queue.wait(job.id, timeout=10)
    assert attempts == [1, 2]
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 2


async def test_recovery_fails_a_job_whose_last_attempt_was_interrupted(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    gate = Gate()

    @registry.handler("stuck", max_attempts=1)
    async def stuck(payload: None) -> None:
        await gate.pass_through()

    with anyio.CancelScope() as scope:
        async with open_test_queue(registry) as queue:
            job = await queue.enqueue("stuck")
            await gate.entered.wait()
            scope.cancel()
    # On SQLite the lock the process held tells at once that it is gone; on PostgreSQL its
    # lease lapses after two heartbeats.
    async with open_test_queue(conveyor.Registry()) as queue:
        recovered = await queue.wait(job.id, timeout=30)
    assert recovered.status is JobStatus.FAILED


@pytest.mark.trio_only  # the handler ignores cancellation for an hour: virtual time only
async def test_recovery_completes_a_cancel_requested_before_the_crash(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    entered = anyio.Event()

    @registry.handler("deaf")
    async def deaf(payload: None) -> None:
        entered.set()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(3600)

    with anyio.CancelScope() as scope:
        async with open_test_queue(registry) as queue:
            job = await queue.enqueue("deaf")
            await entered.wait()
            assert await queue.cancel(job.id) is True
            scope.cancel()
    async with open_test_queue(conveyor.Registry()) as queue:
        recovered = await queue.get(job.id)
    assert recovered is not None
    assert recovered.status is JobStatus.CANCELLED
