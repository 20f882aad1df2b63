"""Failures: retries with backoff, Fail, Retry, the dead-letter state and requeue."""

from __future__ import annotations

import itertools
import typing

import pytest

import conveyor
from conveyor import JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio

NO_JITTER = conveyor.Backoff(initial=10, multiplier=3, maximum=100, jitter=0)


def failing_registry(
    starts: list[float], wall_clock: object, *, fail_times: int
) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("flaky", max_attempts=4, backoff=NO_JITTER)
    async def flaky(payload: None) -> str:
        starts.append(wall_clock())  # type: ignore[operator]
        if len(starts) <= fail_times:
            raise RuntimeError(f"failure {len(starts)}")
        return "finally"

    return registry


@pytest.mark.trio_only
async def test_a_failing_job_is_retried_after_exponential_backoff(
    open_test_queue: QueueOpener, wall_clock: object
) -> None:
    starts: list[float] = []
    async with open_test_queue(failing_registry(starts, wall_clock, fail_times=3)) as queue:
        done = await queue.wait((await queue.enqueue("flaky")).id)
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps == pytest.approx([10, 30, 90], abs=0.01)


@pytest.mark.trio_only
async def test_a_job_that_always_fails_ends_failed_after_max_attempts(
    open_test_queue: QueueOpener, wall_clock: object
) -> None:
    starts: list[float] = []
    async with open_test_queue(failing_registry(starts, wall_clock, fail_times=99)) as queue:
        done = await queue.wait((await queue.enqueue("flaky")).id)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 4
    assert len(starts) == 4
    assert done.error is not None
    assert "RuntimeError: failure 4" in done.error
    assert "Traceback" in done.error


@pytest.mark.trio_only
async def test_the_backoff_is_capped_at_its_maximum(
    open_test_queue: QueueOpener, wall_clock: object
) -> None:
    registry = conveyor.Registry()
    starts: list[float] = []

    @registry.handler("flaky", max_attempts=6, backoff=NO_JITTER)
    async def flaky(payload: None) -> None:
        starts.append(wall_clock())  # type: ignore[operator]
        raise RuntimeError("again")

    async with open_test_queue(registry) as queue:
        await queue.wait((await queue.enqueue("flaky")).id)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert gaps == pytest.approx([10, 30, 90, 100, 100], abs=0.01)


async def test_fail_ends_the_job_at_once_without_retry(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("refuse", max_attempts=5)
    async def refuse(payload: None) -> None:
        raise conveyor.Fail("the input is corrupt")

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("refuse")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 1
    assert done.error is not None
    assert "the input is corrupt" in done.error


async def test_a_fail_is_stored_under_its_public_name(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("refuse", max_attempts=1)
    async def refuse(payload: None) -> None:
        raise conveyor.Fail("the input is corrupt")

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("refuse")).id, timeout=10)
    assert done.error is not None
    assert done.error.splitlines()[-1] == "conveyor.Fail: the input is corrupt"


def test_public_exceptions_are_named_after_the_package_not_their_private_module() -> None:
    classes = [getattr(conveyor, name) for name in conveyor.__all__]
    exceptions = [cls for cls in classes if isinstance(cls, type) and issubclass(cls, Exception)]
    assert {cls.__module__ for cls in exceptions} == {"conveyor"}
    assert repr(conveyor.QueueFull) == "<class 'conveyor.QueueFull'>"


def test_public_value_classes_resolve_their_annotations() -> None:
    for cls in (conveyor.Job, conveyor.JobSpec, conveyor.Schedule, conveyor.Change):
        assert typing.get_type_hints(cls), cls


@pytest.mark.trio_only
async def test_retry_reruns_after_its_own_delay(
    open_test_queue: QueueOpener, wall_clock: object
) -> None:
    registry = conveyor.Registry()
    starts: list[float] = []

    @registry.handler("later", backoff=NO_JITTER)
    async def later(payload: None) -> str:
        starts.append(wall_clock())  # type: ignore[operator]
        if len(starts) == 1:
            raise conveyor.Retry(delay=300)
        return "ok"

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("later")).id)
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 2
    assert starts[1] - starts[0] == pytest.approx(300, abs=0.01)


async def test_retry_on_the_last_attempt_fails_the_job(open_test_queue: QueueOpener) -> None:
    registry = conveyor.Registry()

    @registry.handler("later", max_attempts=2)
    async def later(payload: None) -> None:
        raise conveyor.Retry(delay=0)

    async with open_test_queue(registry) as queue:
        done = await queue.wait((await queue.enqueue("later")).id, timeout=10)
    assert done.status is JobStatus.FAILED
    assert done.attempts == 2


def test_retry_refuses_a_negative_delay() -> None:
    with pytest.raises(conveyor.InvalidArgument, match="Retry"):
        conveyor.Retry(delay=-1)


async def test_requeue_brings_a_failed_job_back_with_attempts_reset(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()
    calls: list[int] = []

    @registry.handler("once_broken", max_attempts=1)
    async def once_broken(payload: None) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("broken")
        return "fixed"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("once_broken")
        assert (await queue.wait(job.id, timeout=10)).status is JobStatus.FAILED
        assert await queue.requeue(job.id) is True
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 1
    assert done.error is None
    assert done.result == "fixed"


async def test_requeue_refuses_jobs_that_are_not_failed_or_cancelled(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: None) -> None:
        return None

    async with open_test_queue(registry) as queue:
        pending = await queue.enqueue("noop", delay=60)
        completed = await queue.enqueue("noop")
        await queue.wait(completed.id, timeout=10)
        assert await queue.requeue(pending.id) is False
        assert await queue.requeue(completed.id) is False
        assert await queue.requeue(10_000) is False
        assert (await queue.get(completed.id)).status is JobStatus.COMPLETED  # type: ignore[union-attr]


def test_backoff_refuses_a_shrinking_multiplier() -> None:
    with pytest.raises(conveyor.InvalidArgument, match="multiplier must be >= 1"):
        conveyor.Backoff(multiplier=0.5)


def test_backoff_jitter_spreads_the_delay_within_its_fraction() -> None:
    backoff = conveyor.Backoff(initial=100, multiplier=2, maximum=1000, jitter=0.1)
    delays = [backoff.delay(2) for _ in range(200)]
    assert all(180 <= delay <= 220 for delay in delays)
    assert len(set(delays)) > 1


async def test_wait_and_get_agree_on_a_job_that_failed_then_completed(
    open_test_queue: QueueOpener,
) -> None:
    registry = conveyor.Registry()

    @registry.handler("flaky", backoff=conveyor.Backoff(initial=0, jitter=0))
    async def flaky(payload: None) -> str:
        if conveyor.current_job().attempt == 1:
            raise RuntimeError("first try fails")
        return "ok"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("flaky")
        waited = await queue.wait(job.id, timeout=10)
        read = await queue.get(job.id)
    assert waited == read
    assert "first try fails" in (waited.error or "")


async def test_a_retry_and_a_dead_letter_are_logged_for_the_operator(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    registry = conveyor.Registry()

    @registry.handler("flaky", max_attempts=2, backoff=conveyor.Backoff(initial=0.5, jitter=0))
    async def flaky(payload: None) -> None:
        raise ValueError("the disk said no")

    @registry.handler("fine")
    async def fine(payload: None) -> str:
        return "ok"

    caplog.set_level("INFO", logger="conveyor")
    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("flaky")
        await queue.wait(job.id, timeout=60)
        await queue.wait((await queue.enqueue("fine")).id, timeout=60)
    ends = [r for r in caplog.records if getattr(r, "conveyor_job", None) is not None]
    assert [(r.levelname, r.conveyor_event, r.conveyor_attempt) for r in ends] == [  # type: ignore[attr-defined]
        ("INFO", "retried", 1),
        ("WARNING", "failed", 2),
    ]
    assert ends[0].getMessage() == (
        f"job {job.id} (flaky) attempt 1 of 2 failed: ValueError: the disk said no; "
        "it runs again in 0.50 s"
    )
    assert "dead-lettered: ValueError: the disk said no" in ends[1].getMessage()
    assert all(r.conveyor_handler == "flaky" for r in ends)  # type: ignore[attr-defined]
