"""Several queues on one file in one process: producers (no handlers), routing by handler,
waits and progress across queues, and a shutdown that gives back only its own jobs. (Real
processes: ``test_many_processes.py``.)"""

from __future__ import annotations

import anyio
import pytest

import conveyor
from conveyor import JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


def tagged(tag: str, **options: object) -> conveyor.Registry:
    """A registry whose ``alpha`` and ``beta`` handlers return ``tag``; ``slow`` sleeps."""
    registry = conveyor.Registry()

    async def run(payload: object) -> str:
        return tag

    async def slow(payload: object) -> str:
        await anyio.sleep(3600)
        return tag

    for name in ("alpha", "beta"):
        registry.handler(name, **options)(run)  # type: ignore[arg-type]
    registry.handler("slow")(slow)
    return registry


def only(name: str, tag: str) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler(name)
    async def run(payload: object) -> str:
        return tag

    return registry


async def test_a_producer_refuses_a_handler_no_worker_declared(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(None) as producer:
        with pytest.raises(conveyor.UnknownHandler, match=r"'resize'.*registered: none"):
            await producer.enqueue("resize")
        assert await producer.list() == []


async def test_known_handlers_let_a_producer_enqueue_before_any_worker_ran(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(None, known_handlers=["resize"]) as producer:
        job = await producer.enqueue("resize", {"w": 100})
        assert job.status is JobStatus.PENDING
        assert job.max_attempts == 3


async def test_a_producer_gives_its_jobs_the_defaults_a_worker_declared(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(tagged("w", max_attempts=7, timeout=30)):
        pass
    async with open_test_queue(None) as producer:
        job = await producer.enqueue("alpha")
    assert (job.max_attempts, job.timeout) == (7, 30)


async def test_a_queue_with_no_workers_runs_nothing(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(tagged("p"), workers=0) as producer:
        job = await producer.enqueue("alpha")
        await anyio.sleep(1)
        found = await producer.get(job.id)
    assert found is not None
    assert found.status is JobStatus.PENDING


async def test_each_worker_runs_only_the_jobs_of_its_own_handlers(
    open_test_queue: QueueOpener,
) -> None:
    async with (
        open_test_queue(only("alpha", "a")),
        open_test_queue(only("beta", "b")),
        open_test_queue(None) as producer,
    ):
        jobs = await producer.enqueue_many(
            [conveyor.JobSpec(name) for name in ("alpha", "beta", "alpha", "beta")]
        )
        with anyio.fail_after(60):
            done = await producer.wait_all([job.id for job in jobs])
    assert [job.result for job in done] == ["a", "b", "a", "b"]


async def test_progress_in_a_producer_follows_jobs_another_queue_runs(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(tagged("w")), open_test_queue(None) as producer:
        jobs = await producer.enqueue_many([conveyor.JobSpec("alpha") for _ in range(3)])
        seen = []
        with anyio.fail_after(60):
            async for progress in producer.progress([job.id for job in jobs]):
                seen.append(progress)
    assert seen[-1].completed == 3


async def test_a_producer_cancels_a_job_another_queue_runs(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(tagged("w")), open_test_queue(None) as producer:
        job = await producer.enqueue("slow")
        with anyio.fail_after(60):
            while (await producer.get(job.id)).status is not JobStatus.RUNNING:  # type: ignore[union-attr]  # noqa: ASYNC110
                await anyio.sleep(0.01)
            assert await producer.cancel(job.id)
            done = await producer.wait(job.id)
    assert done.status is JobStatus.CANCELLED


async def test_a_shutdown_gives_back_only_its_own_running_jobs(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(tagged("stays"), workers=1) as staying:
        async with open_test_queue(tagged("leaves"), workers=1, shutdown_grace=0) as leaving:
            first, second = await leaving.enqueue_many(
                [conveyor.JobSpec("slow"), conveyor.JobSpec("slow")]
            )
            with anyio.fail_after(60):
                while len(await leaving.list(status="running")) < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        jobs = await staying.get_many([first.id, second.id])
    statuses = sorted((job.status.value, job.attempts) for job in jobs.values())
    assert statuses == [("pending", 0), ("running", 1)]


async def test_a_producer_gives_a_known_handlers_jobs_the_defaults_a_worker_declared(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(tagged("w", max_attempts=7, timeout=30)):
        pass
    async with open_test_queue(None, known_handlers=["alpha"]) as producer:
        job = await producer.enqueue("alpha")
    assert (job.max_attempts, job.timeout) == (7, 30)


async def test_a_producer_waits_again_for_a_job_requeued_after_it_failed(
    open_test_queue: QueueOpener,
) -> None:
    failing = conveyor.Registry()

    @failing.handler("doomed")
    async def doomed(payload: object) -> None:
        raise conveyor.Fail("always")

    async with open_test_queue(failing), open_test_queue(None) as producer:
        job = await producer.enqueue("doomed")
        with anyio.fail_after(60):
            assert (await producer.wait(job.id)).status is JobStatus.FAILED
            assert await producer.requeue(job.id)
            assert (await producer.wait(job.id)).status is JobStatus.FAILED
