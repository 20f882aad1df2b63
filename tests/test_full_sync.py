"""``synchronous="full"``: a call is answered only once its commit is synced to disk; the jobs a
commit claims start without waiting for the sync."""

from __future__ import annotations

import contextlib
import errno
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import pytest

import conveyor
from conveyor._actors import store
from conveyor._actors.messages import Ping, Reply
from conveyor._runtime import Readers
from conveyor._storage.sqlite import Writer

T = TypeVar("T")

pytestmark = pytest.mark.anyio


def noop_registry(started: anyio.Event | None = None) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> None:
        if started is not None:
            started.set()

    return registry


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every commit and sync of the queue's writer, in order."""
    writes: list[str] = []
    commit, sync = Writer.commit, Writer.sync

    def logged_commit(self: Writer) -> None:
        commit(self)
        writes.append("commit")

    def logged_sync(self: Writer) -> None:
        sync(self)
        writes.append("sync")

    monkeypatch.setattr(Writer, "commit", logged_commit)
    monkeypatch.setattr(Writer, "sync", logged_sync)
    return writes


@pytest.fixture
def held_syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Once patched in, syncs wait (on the SQL thread) until the event is set."""
    release = threading.Event()
    yield release
    release.set()


def hold_syncs(monkeypatch: pytest.MonkeyPatch, release: threading.Event) -> None:
    sync = Writer.sync

    def held(self: Writer) -> None:
        release.wait(10)
        sync(self)

    monkeypatch.setattr(Writer, "sync", held)


async def test_an_enqueue_is_answered_after_its_commit_is_synced(
    db_path: Path, writes: list[str]
) -> None:
    async with conveyor.open_queue(
        db_path, handlers=noop_registry(), workers=0, synchronous="full"
    ) as queue:
        before = len(writes)
        await queue.enqueue("noop")
        its_commit = writes.index("commit", before)
        assert "sync" in writes[its_commit:]


async def test_a_normal_queue_never_syncs_after_a_commit(db_path: Path, writes: list[str]) -> None:
    async with conveyor.open_queue(db_path, handlers=noop_registry(), workers=0) as queue:
        await queue.enqueue("noop")
    assert "commit" in writes
    assert "sync" not in writes


async def test_a_claimed_job_starts_before_its_commit_is_synced(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, held_syncs: threading.Event
) -> None:
    started = anyio.Event()
    answered: list[conveyor.Job] = []
    async with conveyor.open_queue(
        db_path, handlers=noop_registry(started), synchronous="full", sql_thread=True
    ) as queue:
        hold_syncs(monkeypatch, held_syncs)

        async def enqueue() -> None:
            answered.append(await queue.enqueue("noop"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(enqueue)
            await started.wait()
            await anyio.wait_all_tasks_blocked()
            assert answered == []
            held_syncs.set()
        assert len(answered) == 1


def note_reads(monkeypatch: pytest.MonkeyPatch) -> anyio.Event:
    """An event set when a read of the queue's returns from its read connection."""
    read_done = anyio.Event()
    run = Readers.run

    async def noted(self: Readers, read: Callable[[sqlite3.Connection], T]) -> T:
        value = await run(self, read)
        read_done.set()
        return value

    monkeypatch.setattr(Readers, "run", noted)
    return read_done


def status_in_file(db_path: Path, job_id: int) -> str:
    """The job's status as another connection sees it."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        (status,) = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(status)


@contextlib.asynccontextmanager
async def a_job_then_syncs_held(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, release: threading.Event
) -> AsyncIterator[tuple[conveyor.Queue, conveyor.Job]]:
    """A queue at ``full`` with one job due in an hour; syncs wait for ``release`` after it."""
    async with conveyor.open_queue(
        db_path, handlers=noop_registry(), synchronous="full", sql_thread=True
    ) as queue:
        job = await queue.enqueue("noop", delay=3600)
        hold_syncs(monkeypatch, release)
        yield queue, job


async def until_cancelled_in_file(db_path: Path, job_id: int) -> None:
    """Return once another connection sees the job cancelled (committed)."""
    # Polled: another connection's view has no event to wait on.
    while status_in_file(db_path, job_id) != "cancelled":  # noqa: ASYNC110
        await anyio.sleep(0.001)


async def test_a_wait_is_answered_only_once_the_outcome_is_synced(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, held_syncs: threading.Event
) -> None:
    async with a_job_then_syncs_held(db_path, monkeypatch, held_syncs) as (queue, job):
        waited: list[conveyor.Job] = []

        async def wait() -> None:
            waited.append(await queue.wait(job.id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            tg.start_soon(queue.cancel, job.id)
            await until_cancelled_in_file(db_path, job.id)
            await anyio.wait_all_tasks_blocked()
            assert waited == []
            held_syncs.set()
        assert [j.status for j in waited] == [conveyor.JobStatus.CANCELLED]


async def test_a_read_answers_only_once_what_it_saw_is_synced(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, held_syncs: threading.Event
) -> None:
    async with a_job_then_syncs_held(db_path, monkeypatch, held_syncs) as (queue, job):
        read: list[conveyor.Job] = []
        read_done = note_reads(monkeypatch)

        async def get() -> None:
            read.append(await queue.get(job.id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.cancel, job.id)
            await until_cancelled_in_file(db_path, job.id)
            tg.start_soon(get)
            await read_done.wait()
            await anyio.wait_all_tasks_blocked()
            assert read == []
            held_syncs.set()
        assert [j.status for j in read] == [conveyor.JobStatus.CANCELLED]


async def test_a_failed_sync_stops_the_queue_with_an_error_naming_the_file(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: Writer) -> None:
        raise OSError(errno.EIO, "Input/output error")

    async def enqueue_with_failing_syncs() -> None:
        async with conveyor.open_queue(
            db_path, handlers=noop_registry(), workers=0, synchronous="full"
        ) as queue:
            monkeypatch.setattr(Writer, "sync", failing)
            await queue.enqueue("noop")

    with pytest.raises(conveyor.DatabaseError, match=f"syncing {db_path} to disk failed"):
        await enqueue_with_failing_syncs()


async def test_closing_a_full_queue_answers_every_call_it_committed(db_path: Path) -> None:
    ids: list[int] = []
    async with conveyor.open_queue(
        db_path, handlers=noop_registry(), workers=0, synchronous="full"
    ) as queue:

        async def enqueue(n: int) -> None:
            ids.append((await queue.enqueue("noop", n)).id)

        async with anyio.create_task_group() as tg:
            for n in range(200):
                tg.start_soon(enqueue, n)
    async with conveyor.open_queue(db_path, handlers=noop_registry(), workers=0) as queue:
        stored = await queue.list(limit=1000)
    assert sorted(ids) == sorted(job.id for job in stored)
    assert len(ids) == 200


async def test_a_read_during_the_checkpoint_after_a_commit_waits_for_its_sync(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpointing, release = threading.Event(), threading.Event()
    checkpoint = Writer.checkpoint

    def held_checkpoint(self: Writer) -> None:
        checkpointing.set()
        release.wait(10)
        checkpoint(self)

    async with conveyor.open_queue(
        db_path, handlers=noop_registry(), workers=0, synchronous="full", sql_thread=True
    ) as queue:
        monkeypatch.setattr(store, "CHECKPOINT_PAGES", 1)
        monkeypatch.setattr(Writer, "checkpoint", held_checkpoint)
        read_done = note_reads(monkeypatch)
        listed: list[list[conveyor.Job]] = []

        async def list_jobs() -> None:
            listed.append(await queue.list())

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(queue.enqueue, "noop")
                # Committed: the checkpoint after it holds the store before it is answered.
                await anyio.to_thread.run_sync(checkpointing.wait, 10)
                tg.start_soon(list_jobs)
                await read_done.wait()
                await anyio.wait_all_tasks_blocked()
                assert listed == []
                release.set()
        finally:
            release.set()
        assert [len(jobs) for jobs in listed] == [1]


async def test_an_answer_does_not_wait_for_a_later_batch_that_waits_for_a_lock(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    later = Reply[None]()
    commit = Writer.commit
    armed: list[conveyor.Queue] = []

    def commit_then_lock(self: Writer) -> None:
        commit(self)
        if armed:
            # Another connection takes the lock at once, and a batch is already waiting.
            queue = armed.pop()
            other.execute("BEGIN IMMEDIATE")
            queue._runtime._commands.send_nowait(Ping(later))

    try:
        async with conveyor.open_queue(
            db_path, handlers=noop_registry(), workers=0, synchronous="full", sql_thread=True
        ) as queue:
            monkeypatch.setattr(Writer, "commit", commit_then_lock)
            armed.append(queue)
            await queue.enqueue("noop")
            assert other.in_transaction  # the later batch still waits for the lock
            other.rollback()
            await later.get()
    finally:
        other.close()


async def test_a_failed_commit_is_not_synced(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, writes: list[str]
) -> None:
    commit = Writer.commit
    failing = [True]

    def fails_once(self: Writer) -> None:
        if failing:
            failing.pop()
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        commit(self)

    async with conveyor.open_queue(
        db_path, handlers=noop_registry(), workers=0, synchronous="full"
    ) as queue:
        monkeypatch.setattr(Writer, "commit", fails_once)
        writes.clear()
        with pytest.raises(conveyor.DatabaseUnavailable):
            await queue.enqueue("noop")
        assert await queue.list() == []
        # A heartbeat's commit may come since, and be synced.
        until_a_commit = writes[: writes.index("commit")] if "commit" in writes else writes
        assert "sync" not in until_a_commit
