"""Reading the queue: get, list with filters and pages, stats, and purge."""

from __future__ import annotations

import anyio
import pytest

import conveyor
from conveyor import JobSpec, JobStatus

from helpers import Gate, QueueOpener, wait_all

pytestmark = pytest.mark.anyio


def mixed_registry(gate: Gate | None = None) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("ok")
    async def ok(payload: None) -> str:
        await anyio.sleep(0.01)
        return "fine"

    @registry.handler("bad", max_attempts=1)
    async def bad(payload: None) -> None:
        raise conveyor.Fail("nope")

    @registry.handler("hold")
    async def hold(payload: None) -> None:
        assert gate is not None
        await gate.pass_through()

    return registry


async def test_get_of_an_unknown_id_returns_none(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        assert await queue.get(404) is None


async def test_list_returns_newest_first_filtered_by_status_and_name(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        done = await wait_all(
            queue, await queue.enqueue_many([JobSpec("ok"), JobSpec("bad"), JobSpec("ok")])
        )
        later = await queue.enqueue("bad", delay=3600)
        assert [job.id for job in await queue.list()] == [later.id] + [j.id for j in done[::-1]]
        failed = await queue.list(status=JobStatus.FAILED)
        assert [job.id for job in failed] == [done[1].id]
        assert [job.id for job in await queue.list(status="pending")] == [later.id]
        assert [job.id for job in await queue.list(name="ok")] == [done[2].id, done[0].id]
        assert await queue.list(status=JobStatus.FAILED, name="ok") == []


async def test_list_pages_with_the_last_id_seen(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        jobs = await queue.enqueue_many([JobSpec("ok", delay=60) for _ in range(25)])
        pages: list[list[int]] = []
        before = None
        while page := await queue.list(limit=10, before=before):
            pages.append([job.id for job in page])
            before = page[-1].id
    assert [len(page) for page in pages] == [10, 10, 5]
    assert [job_id for page in pages for job_id in page] == sorted(
        (job.id for job in jobs), reverse=True
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "limit must be an int within 1..1000"),
        ({"limit": 1001}, "limit must be an int within 1..1000"),
        ({"status": "done"}, "status must be one of waiting, pending, running"),
        ({"before": "x"}, "job id is an int"),
    ],
)
async def test_list_refuses_bad_arguments(
    open_test_queue: QueueOpener, kwargs: dict[str, object], message: str
) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match=message):
            await queue.list(**kwargs)  # type: ignore[arg-type]


async def test_stats_count_by_status_and_name(open_test_queue: QueueOpener) -> None:
    gate = Gate()
    async with open_test_queue(mixed_registry(gate), workers=2) as queue:
        await wait_all(queue, await queue.enqueue_many([JobSpec("ok")] * 3 + [JobSpec("bad")]))
        await queue.enqueue("hold")
        await gate.entered.wait()
        await queue.enqueue("ok", delay=3600)
        stats = await queue.stats()
        gate.open()
    assert stats.by_status == {
        JobStatus.WAITING: 0,
        JobStatus.PENDING: 1,
        JobStatus.RUNNING: 1,
        JobStatus.COMPLETED: 3,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }
    assert stats.by_name["ok"][JobStatus.COMPLETED] == 3
    assert stats.by_name["ok"][JobStatus.PENDING] == 1
    assert stats.by_name["bad"][JobStatus.FAILED] == 1
    assert stats.by_name["hold"][JobStatus.RUNNING] == 1
    assert stats.success_rate == pytest.approx(0.75)
    assert stats.throughput == pytest.approx(4 / 60)
    assert stats.avg_duration is not None
    assert stats.oldest_pending_age is not None


async def test_stats_print_as_readable_lines(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        await wait_all(queue, await queue.enqueue_many([JobSpec("ok")] * 2 + [JobSpec("bad")]))
        await queue.enqueue("ok", delay=3600)
        stats = await queue.stats()
    lines = str(stats).splitlines()
    assert lines[0] == "jobs: 0 waiting, 1 pending, 0 running, 2 completed, 1 failed, 0 cancelled"
    assert lines[1].startswith("oldest pending job: ")
    assert lines[1].endswith(" s old")
    assert lines[2].startswith("last minute: 0.05 jobs/s finished, mean duration ")
    assert lines[2].endswith(" s, 67% completed")
    assert lines[3:] == [
        "by handler:",
        "  bad: 0 waiting, 0 pending, 0 running, 0 completed, 1 failed, 0 cancelled",
        "  ok: 0 waiting, 1 pending, 0 running, 2 completed, 0 failed, 0 cancelled",
    ]
    assert repr(stats).startswith("Stats(by_status=")


async def test_stats_of_an_empty_queue(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        stats = await queue.stats()
    assert set(stats.by_status.values()) == {0}
    assert stats.by_name == {}
    assert (stats.throughput, stats.avg_duration, stats.success_rate) == (0, None, None)


@pytest.mark.trio_only
async def test_stats_throughput_covers_only_the_last_minute(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        await wait_all(queue, await queue.enqueue_many([JobSpec("ok")] * 3))
        await anyio.sleep(61)
        stats = await queue.stats()
    assert stats.throughput == 0
    assert stats.by_status[JobStatus.COMPLETED] == 3


@pytest.mark.trio_only
async def test_purge_deletes_only_finished_jobs_older_than_the_age(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        old = await wait_all(queue, await queue.enqueue_many([JobSpec("ok"), JobSpec("bad")]))
        await anyio.sleep(3600)
        recent = await wait_all(queue, [await queue.enqueue("ok")])
        pending = await queue.enqueue("ok", delay=86400)
        assert await queue.purge(older_than=1800) == 2
        remaining = {job.id for job in await queue.list()}
    assert remaining == {recent[0].id, pending.id}
    assert not remaining & {job.id for job in old}


async def test_purge_refuses_a_negative_age(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match="older_than must be >= 0"):
            await queue.purge(older_than=-5)


async def test_purge_of_one_status_keeps_the_others(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        done, failed = await wait_all(
            queue, await queue.enqueue_many([JobSpec("ok"), JobSpec("bad")])
        )
        assert await queue.purge(0, status="failed") == 1
        remaining = {job.id for job in await queue.list()}
    assert remaining == {done.id}
    assert failed.status is JobStatus.FAILED


async def test_purge_refuses_an_unfinished_status(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(mixed_registry()) as queue:
        with pytest.raises(conveyor.InvalidArgument, match="only finished jobs are purged"):
            await queue.purge(0, status=JobStatus.PENDING)


async def test_subscribers_see_each_change_once_committed(open_test_queue: QueueOpener) -> None:
    seen: list[tuple[str, str]] = []

    def listener(changes: object) -> None:
        seen.extend((change.event, change.name) for change in changes)  # type: ignore[attr-defined]

    async with open_test_queue(mixed_registry()) as queue:
        queue.subscribe(listener)
        await wait_all(queue, [await queue.enqueue("ok"), await queue.enqueue("bad")])
        queue.unsubscribe(listener)
        await wait_all(queue, [await queue.enqueue("ok")])
    expected = [("enqueued", "ok"), ("started", "ok"), ("completed", "ok")]
    expected += [("enqueued", "bad"), ("started", "bad"), ("failed", "bad")]
    assert sorted(seen) == sorted(expected)


async def test_wait_reads_the_job_once_and_takes_its_end_from_the_commit(
    open_test_queue: QueueOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor._storage import sqlite as storage

    reads: list[int] = []
    get_job = storage.get_job

    def counting(conn: object, job_id: int) -> object:
        reads.append(job_id)
        return get_job(conn, job_id)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "get_job", counting)
    registry = conveyor.Registry()
    gate = anyio.Event()

    @registry.handler("slow")
    async def slow(payload: None) -> str:
        await gate.wait()
        return "done"

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("slow")
        async with anyio.create_task_group() as tg:

            async def finish() -> None:
                await anyio.sleep(0.01)
                gate.set()

            tg.start_soon(finish)
            done = await queue.wait(job.id, timeout=10)
    assert (done.status, done.result) == (conveyor.JobStatus.COMPLETED, "done")
    assert reads == [job.id]
