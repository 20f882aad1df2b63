"""Retention: ``open_queue(retention=...)`` purges old finished jobs in the background."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import JobSpec, JobStatus
from conveyor._job import TERMINAL
from conveyor._retention import interval
from conveyor._storage.sqlite import Writer

from helpers import Gate, QueueOpener, wait_all

pytestmark = pytest.mark.anyio


def registry(gate: Gate | None = None) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("ok")
    async def ok(payload: Any) -> str:
        return "fine"

    @registry.handler("bad", max_attempts=1)
    async def bad(payload: Any) -> None:
        raise conveyor.Fail("nope")

    @registry.handler("results")
    async def results(payload: Any) -> dict[int, Any]:
        return conveyor.current_job().dependency_results

    @registry.handler("hold")
    async def hold(payload: Any) -> None:
        assert gate is not None
        await gate.pass_through()

    return registry


def purge_records(records: Iterable[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "conveyor_event", None) == "purged"]


@pytest.mark.trio_only
async def test_finished_jobs_older_than_the_retention_are_purged_in_the_background(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(), retention=600) as queue:
        done, failed = await wait_all(
            queue, await queue.enqueue_many([JobSpec("ok"), JobSpec("bad")])
        )
        cancelled = await queue.enqueue("ok", delay=600)
        assert await queue.cancel(cancelled.id)
        assert done.status is JobStatus.COMPLETED
        assert failed.status is JobStatus.FAILED
        await anyio.sleep(700)
        assert [await queue.get(job.id) for job in (done, failed, cancelled)] == [None] * 3


@pytest.mark.trio_only
async def test_newer_finished_jobs_and_unfinished_jobs_are_kept(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(gate), workers=1, retention=360) as queue:
        old = await queue.wait((await queue.enqueue("ok")).id)
        await anyio.sleep(300)
        recent = await queue.wait((await queue.enqueue("ok")).id)
        running = await queue.enqueue("hold")
        await gate.entered.wait()
        pending = await queue.enqueue("ok")  # its only slot is taken
        scheduled = await queue.enqueue("ok", delay=86400)
        waiting = await queue.enqueue("ok", after=[running.id])
        await anyio.sleep(120)  # the old job is 420 s old, the recent one 120 s
        statuses = {job.id: job.status for job in await queue.list()}
        gate.open()
    assert statuses == {
        recent.id: JobStatus.COMPLETED,
        running.id: JobStatus.RUNNING,
        pending.id: JobStatus.PENDING,
        scheduled.id: JobStatus.PENDING,
        waiting.id: JobStatus.WAITING,
    }
    assert old.id not in statuses


@pytest.mark.trio_only
async def test_a_purged_jobs_idempotency_key_can_be_used_again(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(registry(), retention=60) as queue:
        first = await queue.enqueue("ok", idempotency_key="k")
        await queue.wait(first.id)
        await anyio.sleep(120)
        assert await queue.get(first.id) is None
        second = await queue.enqueue("ok", idempotency_key="k")
        assert second.id != first.id
        assert (await queue.wait(second.id)).status is JobStatus.COMPLETED


@pytest.mark.trio_only
async def test_a_purge_of_more_than_one_batch_removes_all_in_one_transaction_per_batch(
    open_test_queue: QueueOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conveyor._retention.PURGE_BATCH", 3)
    batches: list[tuple[int | None, int]] = []
    purge = Writer.purge

    def counting(
        self: Writer,
        finished_before: float,
        statuses: Iterable[JobStatus] = TERMINAL,
        *,
        limit: int | None = None,
    ) -> int:
        purged = purge(self, finished_before, statuses, limit=limit)
        batches.append((limit, purged))
        return purged

    monkeypatch.setattr(Writer, "purge", counting)
    async with open_test_queue(registry(), retention=60) as queue:
        await wait_all(queue, await queue.enqueue_many([JobSpec("ok")] * 7))
        await anyio.sleep(120)
        assert await queue.list() == []
    # Each batch is a command of its own, sent once the one before was committed.
    assert batches == [(3, 3), (3, 3), (3, 1)]


@pytest.mark.trio_only
async def test_a_finished_dependency_is_kept_until_its_dependents_have_finished(
    open_test_queue: QueueOpener,
) -> None:
    gate = Gate()
    async with open_test_queue(registry(gate), retention=60) as queue:
        first = await queue.wait((await queue.enqueue("ok")).id)
        held = await queue.enqueue("hold")
        after_both = await queue.enqueue("results", after=[first.id, held.id])
        await anyio.sleep(120)
        assert await queue.get(first.id) is not None  # after_both still waits to read it
        gate.open()
        finished = await queue.wait(after_both.id)
        assert finished.result == {str(first.id): "fine", str(held.id): None}
        await anyio.sleep(120)
        assert [await queue.get(job.id) for job in (first, held, after_both)] == [None] * 3
        dependency_rows = await queue._runtime.read(
            lambda conn: conn.execute("SELECT dep_id, job_id FROM job_deps").fetchall()
        )
    assert dependency_rows == []


@pytest.mark.trio_only
async def test_a_purge_that_removed_jobs_is_logged_at_info_with_its_count(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    async with open_test_queue(registry(), retention=60) as queue:
        await wait_all(queue, await queue.enqueue_many([JobSpec("ok"), JobSpec("bad")]))
        await anyio.sleep(120)
    (record,) = purge_records(caplog.records)
    assert record.levelno == logging.INFO
    assert record.conveyor_purged == 2  # type: ignore[attr-defined]
    assert record.conveyor_retention == 60  # type: ignore[attr-defined]
    assert "purged 2 finished jobs" in record.getMessage()


@pytest.mark.trio_only
async def test_a_purge_that_removed_nothing_is_not_logged(
    open_test_queue: QueueOpener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")
    async with open_test_queue(registry(), retention=600) as queue:
        await queue.wait((await queue.enqueue("ok")).id)
        await anyio.sleep(500)  # several rounds, each too early for the job
        assert await queue.list() != []
    assert purge_records(caplog.records) == []


@pytest.mark.trio_only
async def test_without_retention_finished_jobs_are_kept(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(registry()) as queue:
        done = await queue.wait((await queue.enqueue("ok")).id)
        await anyio.sleep(600)
        assert await queue.get(done.id) is not None


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, "7d", True])
async def test_an_invalid_retention_is_refused_naming_it_and_its_value(
    open_test_queue: QueueOpener, value: object
) -> None:
    with pytest.raises(conveyor.InvalidArgument, match=rf"retention must be .*{value!r}"):
        async with open_test_queue(registry(), retention=value):
            pass


@pytest.mark.parametrize(
    ("retention", "seconds"), [(7 * 86400, 60.0), (300, 30.0), (5, 1.0), (0.001, 1.0)]
)
def test_rounds_run_every_tenth_of_the_retention_within_a_second_and_a_minute(
    retention: float, seconds: float
) -> None:
    assert interval(retention) == seconds
