"""The worker pool's close: news the store commits after it starts no job."""

from __future__ import annotations

import anyio
import pytest

import conveyor
from conveyor import Job, JobStatus
from conveyor._actors.mailbox import Mailbox
from conveyor._actors.messages import News, PoolMessage, Report, StoreCommand
from conveyor._actors.pool import Pool
from conveyor._job import Event

pytestmark = pytest.mark.anyio


def claimed_job(job_id: int) -> Job:
    return Job(job_id, "work", None, JobStatus.RUNNING, 5, 1, 3, 0.0, 0.0, 0.0)


async def test_jobs_of_news_heard_after_close_go_back_unstarted() -> None:
    started: list[object] = []
    registry = conveyor.Registry()

    @registry.handler("work")
    async def work(payload: object) -> None:
        started.append(payload)

    store = Mailbox[StoreCommand]()
    pool = Pool(registry=registry, slots=1, inbox=Mailbox[PoolMessage](), store=store)
    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run)
        first = await store.receive()  # the pool asks for its free slot
        assert isinstance(first, Report)
        assert first.more == 1
        idle = anyio.Event()
        pool.close(idle)
        # The store commits the claim the pool asked for after the close began.
        pool.hear(News([claimed_job(7)], answered=1, released=False, cancel=[]))
        report = await store.receive()
        assert isinstance(report, Report)
        assert [(o.job.id, o.event) for o in report.outcomes] == [(7, Event.INTERRUPTED)]
        assert report.release
        pool.hear(News([], answered=1, released=True, cancel=[]))
        with anyio.fail_after(5):
            await idle.wait()
        tg.cancel_scope.cancel()
    assert started == []
