"""The QueueManager facade, run as its documentation's usage examples run it: blocking, with
the files processed in worker processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import processors
import pytest

import conveyor
from conveyor.compat import QueueManager, TaskStatus, _queue_manager, get_queue_manager

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def files(tmp_path: Path) -> list[str]:
    paths = []
    for n, size in enumerate((10, 20, 30)):
        path = tmp_path / f"audio{n}.mp3"
        path.write_bytes(b"x" * size)
        paths.append(str(path))
    return paths


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[QueueManager]:
    with QueueManager(
        max_workers=2, processor=processors.analyse, db_path=tmp_path / "queue.db"
    ) as manager:
        yield manager


def until_idle(manager: QueueManager, timeout: float = 120) -> dict[str, Any]:
    """Poll the statistics as the documentation's example does, until nothing is left."""
    deadline = time.monotonic() + timeout
    while True:
        stats = manager.get_statistics()
        if stats["pending_tasks"] == 0 and stats["processing_tasks"] == 0:
            return stats
        assert time.monotonic() < deadline, stats
        time.sleep(0.05)


def process_one(file_path: str, **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one file through a one-worker manager made with ``options``: the statistics once
    nothing is left, and the task's status."""
    with QueueManager(max_workers=1, **options) as manager:
        task_id = manager.add_task(file_path)
        manager.start_processing()
        stats = until_idle(manager)
        status = manager.get_task_status(task_id)
        manager.stop_processing()
    assert status is not None
    return stats, status


def done_order(folder: Path) -> list[str]:
    return (folder / "done.log").read_text().splitlines()


def test_the_basic_usage_processes_every_file(manager: QueueManager, files: list[str]) -> None:
    task_ids = manager.add_tasks(files)
    assert manager.start_processing()
    stats = until_idle(manager)
    manager.stop_processing()
    assert stats["total_tasks"] == stats["completed_tasks"] == 3
    results = [manager.get_task_status(task_id) for task_id in task_ids]
    assert [r["result"] for r in results if r] == [{"bytes": 10}, {"bytes": 20}, {"bytes": 30}]
    assert {r["status"] for r in results if r} == {TaskStatus.COMPLETED.value}


def test_the_progress_callback_gets_the_statistics(tmp_path: Path, files: list[str]) -> None:
    seen: list[dict[str, Any]] = []
    with QueueManager(
        max_workers=1,
        progress_update_interval=0.05,
        processor=processors.analyse,
        db_path=tmp_path / "queue.db",
    ) as manager:
        manager.add_tasks(files)
        manager.start_processing(seen.append)
        until_idle(manager)
        time.sleep(0.2)
        manager.stop_processing()
    assert seen
    assert seen[-1]["completed_tasks"] == 3


def test_a_higher_priority_runs_first(tmp_path: Path, files: list[str]) -> None:
    """Also bug 3 of the implementation report (000): priority order not kept."""
    with QueueManager(
        max_workers=1, processor=processors.analyse, db_path=tmp_path / "queue.db"
    ) as manager:
        low = manager.add_task(files[0], priority=1)
        normal = manager.add_task(files[1], priority=5)
        high = manager.add_task(files[2], priority=10)
        manager.start_processing()
        until_idle(manager)
        manager.stop_processing()
        assert [manager.get_task_status(t)["priority"] for t in (low, normal, high)] == [10, 6, 1]  # type: ignore[index]
    assert done_order(tmp_path) == [files[2], files[1], files[0]]


def test_a_failed_task_is_retried_and_can_complete(tmp_path: Path, files: list[str]) -> None:
    _, status = process_one(
        files[0], retry_delay=0.1, processor=processors.flaky, db_path=tmp_path / "q.db"
    )
    assert (status["status"], status["retry_count"]) == ("completed", 1)
    assert status["result"] == "analysed on retry"


def test_a_task_past_the_worker_timeout_fails_once_its_retries_are_spent(
    tmp_path: Path, files: list[str]
) -> None:
    stats, status = process_one(
        files[0],
        worker_timeout=1,
        max_retries=0,
        processor=processors.hangs,
        db_path=tmp_path / "queue.db",
    )
    assert stats["failed_tasks"] == 1
    assert status["status"] == "failed"
    assert "timed out after 1 s" in status["error_message"]


def test_a_full_queue_refuses_more_tasks(tmp_path: Path, files: list[str]) -> None:
    with QueueManager(
        queue_size=2, processor=processors.analyse, db_path=tmp_path / "queue.db"
    ) as manager:
        manager.add_tasks(files[:2])
        with pytest.raises(conveyor.QueueFull):
            manager.add_task(files[2])


def test_queued_tasks_survive_a_restart(tmp_path: Path, files: list[str]) -> None:
    db = tmp_path / "queue.db"
    with QueueManager(processor=processors.analyse, db_path=db) as first:
        task_ids = first.add_tasks(files)
    with QueueManager(max_workers=2, processor=processors.analyse, db_path=db) as second:
        second.start_processing()
        until_idle(second)
        statuses = [second.get_task_status(task_id) for task_id in task_ids]
        second.stop_processing()
    assert [s["status"] for s in statuses if s] == ["completed"] * 3


def test_an_unknown_task_has_no_status(manager: QueueManager) -> None:
    assert manager.get_task_status("task_1234") is None
    assert manager.get_task_status(99) is None


def test_processing_started_twice_says_so(manager: QueueManager) -> None:
    assert manager.start_processing()
    assert not manager.start_processing()
    manager.stop_processing()


def test_a_processor_a_worker_process_cannot_import_is_refused(tmp_path: Path) -> None:
    with pytest.raises(conveyor.InvalidArgument, match="lambda"):
        QueueManager(processor=lambda path: None, db_path=tmp_path / "queue.db")


def test_the_global_instance_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_queue_manager, "_instance", None)
    with pytest.raises(conveyor.InvalidArgument, match="processor="):
        get_queue_manager()
    first = get_queue_manager(processor=processors.analyse, db_path=tmp_path / "queue.db")
    try:
        assert get_queue_manager() is first
    finally:
        first.close()


# The bugs of the queue manager's implementation report (000): each one, shown absent.
def test_a_task_cancelled_before_it_runs_never_runs(tmp_path: Path, files: list[str]) -> None:
    """Bug 1: a cancelled queued task still ran (the cancel raced the queue's worker)."""
    with QueueManager(
        max_workers=1, processor=processors.analyse, db_path=tmp_path / "queue.db"
    ) as manager:
        kept, cancelled = manager.add_tasks(files[:2])
        assert manager.cancel_task(cancelled)
        manager.start_processing()
        until_idle(manager)
        statuses = [manager.get_task_status(t)["status"] for t in (kept, cancelled)]  # type: ignore[index]
        assert not manager.cancel_task(cancelled)  # finished already
        manager.stop_processing()
    assert statuses == ["completed", "cancelled"]
    assert done_order(tmp_path) == [files[0]]


def test_a_failing_task_runs_exactly_max_retries_plus_one_times(
    tmp_path: Path, files: list[str]
) -> None:
    """Bug 2: a failing task was not retried the expected number of times."""
    stats, status = process_one(
        files[0],
        max_retries=2,
        retry_delay=0.05,
        processor=processors.always_fails,
        db_path=tmp_path / "queue.db",
    )
    assert stats["failed_tasks"] == 1
    assert status["retry_count"] == 2
    assert (tmp_path / "attempts.log").read_text().splitlines() == [files[0]] * 3


def test_tasks_cancelled_while_processing_runs_never_run(tmp_path: Path) -> None:
    """Bug 1 again, with the workers claiming tasks as they are added and cancelled."""
    paths = []
    for n in range(60):
        path = tmp_path / f"audio{n}.mp3"
        path.write_bytes(b"x")
        paths.append(str(path))
    with QueueManager(
        max_workers=2, processor=processors.analyse, db_path=tmp_path / "queue.db"
    ) as manager:
        manager.start_processing()
        cancelled = {}
        for path in paths:
            task_id = manager.add_task(path)
            cancelled[task_id] = manager.cancel_task(task_id)
        until_idle(manager)
        statuses = {t: manager.get_task_status(t)["status"] for t in cancelled}  # type: ignore[index]
        manager.stop_processing()
    ran = set(done_order(tmp_path)) if (tmp_path / "done.log").exists() else set()
    assert any(cancelled.values())
    for task_id, was_cancelled in cancelled.items():
        if was_cancelled:
            assert statuses[task_id] == "cancelled"
    ran_ids = {t for t, path in zip(cancelled, paths, strict=True) if path in ran}
    assert not ran_ids & {t for t, c in cancelled.items() if c}


# --- the review's findings (015): each one, shown absent ------------------------------------------
def test_the_first_add_tasks_of_many_threads_at_once_all_store(tmp_path: Path) -> None:
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def add(n: int) -> None:
        start.wait()
        try:
            manager.add_task(str(tmp_path / f"{n}.mp3"))
        except BaseException as exc:
            errors.append(exc)

    with QueueManager(processor=processors.analyse, db_path=tmp_path / "queue.db") as manager:
        threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        total = manager.get_statistics()["total_tasks"]
    assert errors == []
    assert total == 8


def test_a_missing_file_fails_at_once_without_retry(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.mp3")
    _, status = process_one(
        missing,
        max_retries=3,
        retry_delay=0.05,
        processor=processors.analyse,
        db_path=tmp_path / "queue.db",
    )
    assert (status["status"], status["retry_count"]) == ("failed", 0)
    assert status["error_message"] == f"file not found: {missing}"


def test_an_error_message_is_the_processors_error_not_a_traceback(
    tmp_path: Path, files: list[str]
) -> None:
    _, status = process_one(
        files[0], max_retries=0, processor=processors.always_fails, db_path=tmp_path / "q.db"
    )
    assert status["error_message"] == f"OSError: cannot analyse {files[0]}"


def test_stop_processing_may_be_called_from_the_progress_callback(
    tmp_path: Path, files: list[str]
) -> None:
    stopped = threading.Event()
    failures: list[BaseException] = []

    def stop_when_done(stats: dict[str, Any]) -> None:
        if stats["pending_tasks"] == 0 and stats["processing_tasks"] == 0:
            try:
                manager.stop_processing()
            except BaseException as exc:
                failures.append(exc)
            stopped.set()

    with QueueManager(
        max_workers=1,
        progress_update_interval=0.05,
        processor=processors.analyse,
        db_path=tmp_path / "queue.db",
    ) as manager:
        manager.add_tasks(files)
        manager.start_processing(stop_when_done)
        assert stopped.wait(120)
        assert manager.start_processing()  # it did stop: it starts again
        manager.stop_processing()
    assert failures == []


def test_the_global_instance_is_closed_at_exit(tmp_path: Path) -> None:
    """A program that never closes it leaves no owner behind (its tasks are not cut short)."""
    db = tmp_path / "queue.db"
    program = (
        "import processors\n"
        "from conveyor.compat import get_queue_manager\n"
        f"manager = get_queue_manager(processor=processors.analyse, db_path={str(db)!r})\n"
        f"manager.add_task({str(tmp_path / 'a.mp3')!r})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(processors.__file__).parent)}
    subprocess.run([sys.executable, "-c", program], check=True, env=env, timeout=60)
    assert [p.name for p in tmp_path.iterdir() if ".owner-" in p.name] == []
