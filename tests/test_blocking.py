"""The blocking API: the queue in its own event loop thread, called from plain threads."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

import conveyor
from conveyor import JobStatus

pytestmark = pytest.mark.timeout(120)


def registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("double")
    async def double(payload: int) -> int:
        return payload * 2

    @registry.handler("slow")
    async def slow(payload: None) -> None:
        await trio.sleep(3600)

    return registry


def test_a_job_enqueued_and_waited_for_without_an_event_loop(tmp_path: Path) -> None:
    with conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()) as queue:
        job = queue.enqueue("double", 21)
        done = queue.wait(job.id, timeout=30)
    assert done.status is JobStatus.COMPLETED
    assert done.result == 42


def test_threads_call_one_queue_at_once(tmp_path: Path) -> None:
    results: dict[int, list[object]] = {}
    with conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()) as queue:

        def produce(thread: int) -> None:
            jobs = [queue.enqueue("double", thread * 1000 + n) for n in range(25)]
            done = queue.wait_all([job.id for job in jobs], timeout=60)
            results[thread] = [job.result for job in done]

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = queue.stats()
    assert results == {t: [2 * (t * 1000 + n) for n in range(25)] for t in range(8)}
    assert stats.by_status[JobStatus.COMPLETED] == 200


def test_progress_is_a_blocking_iterator(tmp_path: Path) -> None:
    with conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()) as queue:
        jobs = queue.enqueue_many([conveyor.JobSpec("double", n) for n in range(5)])
        seen = list(queue.progress([job.id for job in jobs]))
    assert seen[-1].completed == 5


def interrupt_a_running_job(db: Path) -> int:
    """Start a job that runs for an hour, then raise KeyboardInterrupt in the block, as a
    Ctrl-C in the main thread would; the job's id, were it returned."""
    with conveyor.blocking.open_queue(db, handlers=registry(), shutdown_grace=0) as queue:
        job = queue.enqueue("slow")
        while queue.get(job.id).status is not JobStatus.RUNNING:  # type: ignore[union-attr]
            time.sleep(0.01)
        raise KeyboardInterrupt


def test_leaving_the_block_by_an_exception_shuts_down_gracefully(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with pytest.raises(KeyboardInterrupt):
        interrupt_a_running_job(db)
    with conveyor.blocking.open_queue(db, handlers=registry(), workers=0) as queue:
        (found,) = queue.list()
    assert (found.status, found.attempts) == (JobStatus.PENDING, 0)  # given back, not counted


def test_a_blocking_call_inside_an_event_loop_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        with (
            pytest.raises(conveyor.InvalidArgument, match="inside a running trio event loop"),
            conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()),
        ):
            pass

    trio.run(main)


def test_a_blocking_method_called_inside_an_event_loop_is_refused(tmp_path: Path) -> None:
    with conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()) as queue:

        async def main() -> None:
            with pytest.raises(conveyor.InvalidArgument, match=r"Queue\.stats.*async API"):
                queue.stats()

        trio.run(main)


def test_a_subscribed_listener_gets_every_commits_changes_on_the_loop_thread(
    tmp_path: Path,
) -> None:
    seen: list[tuple[str, str]] = []
    threads: set[str] = set()

    def listener(changes: Sequence[conveyor.Change]) -> None:
        threads.add(threading.current_thread().name)
        seen.extend((change.name, change.status.value) for change in changes)

    with conveyor.blocking.open_queue(tmp_path / "jobs.db", handlers=registry()) as queue:
        queue.subscribe(listener)
        queue.wait(queue.enqueue("double", 1).id, timeout=30)
        queue.unsubscribe(listener)
        count = len(seen)
        queue.wait(queue.enqueue("double", 2).id, timeout=30)
    assert ("double", "completed") in seen
    assert len(seen) == count  # not called once unsubscribed
    assert threads == {"conveyor-loop"}
