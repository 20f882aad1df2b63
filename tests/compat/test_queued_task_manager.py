"""The QueuedTaskManager facade: the background-task manager's interface over conveyor, with
the test categories of its adapter's report (initialization, backward compatibility, handler
registration, multiple tasks, idempotency, edge cases, status mapping), and a crash."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

import conveyor
from conveyor.compat import CANNOT_RESUME, QueuedTaskManager

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@attrs.frozen
class Run:
    run_id: str


@pytest.fixture
def options(
    db_path: Path, wall_clock: Callable[[], float], anyio_backend_name: str
) -> dict[str, Any]:
    return {"db_path": db_path, "clock": wall_clock, "sql_thread": anyio_backend_name != "trio"}


async def test_a_manager_runs_nothing_until_it_starts(options: dict[str, Any]) -> None:
    manager = QueuedTaskManager(**options)
    with pytest.raises(conveyor.InvalidArgument, match="not started"):
        await manager.wait_all()
    await manager.start()
    await manager.stop()


async def test_a_started_coroutine_runs_as_a_tracked_task(options: dict[str, Any]) -> None:
    ran = anyio.Event()

    async def work() -> str:
        ran.set()
        return "done"

    async with QueuedTaskManager(**options) as manager:
        task_id = manager.start_task(Run("run-1"), work())
        assert task_id == "run-1"
        assert manager.is_task_active("run-1")
        await manager.wait_all()
        status = await manager.get_task_status("run-1")
        assert manager.get_active_task_count() == 0
    assert ran.is_set()
    assert status is not None
    assert (status["status"], status["result"]) == ("completed", "done")


async def test_a_running_task_is_cancelled(options: dict[str, Any]) -> None:
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async with QueuedTaskManager(**options) as manager:
        manager.start_task(Run("run-1"), forever())
        await started.wait()
        assert manager.get_active_task_ids() == ["run-1"]
        assert await manager.cancel_task("run-1")
        await manager.wait_all()
        status = await manager.get_task_status("run-1")
        assert not await manager.cancel_task("run-1")  # finished already
        assert manager.get_active_task_ids() == []
    assert status is not None
    assert status["status"] == "cancelled"


async def test_a_task_cancelled_before_it_runs_never_runs(options: dict[str, Any]) -> None:
    ran: list[str] = []

    async def work(name: str) -> None:
        ran.append(name)

    busy = anyio.Event()

    async def blocker() -> None:
        busy.set()
        await anyio.sleep_forever()

    async with QueuedTaskManager(workers=1, **options) as manager:
        manager.start_task(Run("busy"), blocker())
        await busy.wait()  # the one slot is taken: the next task waits in the queue
        manager.start_task(Run("queued"), work("queued"))
        assert await manager.cancel_task("queued")
        await manager.cancel_task("busy")
        await manager.wait_all()
    assert ran == []


async def test_a_coroutine_that_raises_fails_its_task_without_retry(
    options: dict[str, Any],
) -> None:
    async def broken() -> None:
        raise ValueError("no such file")

    async with QueuedTaskManager(**options) as manager:
        manager.start_task(Run("run-1"), broken())
        await manager.wait_all()
        status = await manager.get_task_status("run-1")
    assert status is not None
    assert (status["status"], status["attempts"]) == ("failed", 1)
    assert "ValueError: no such file" in status["error_message"]


async def test_a_registered_task_type_runs_what_schedule_task_queues(
    options: dict[str, Any],
) -> None:
    manager = QueuedTaskManager(**options)
    manager.register_task("cleanup", lambda payload: {"removed": payload["max_age"]}, "cleanup")
    async with manager:
        task_id = await manager.schedule_task("cleanup", {"max_age": 24}, priority=1)
        # No timeout: on trio's MockClock, time jumps to it while the sync handler's thread runs.
        job = await manager._started()[0].wait(int(task_id))
        status = await manager.get_task_status(task_id)
    assert job.result == {"removed": 24}
    assert status is not None
    assert (status["type"], status["status"]) == ("cleanup", "completed")
    assert manager.descriptions == {"cleanup": "cleanup"}


async def test_a_task_type_registered_after_the_start_is_refused(
    options: dict[str, Any],
) -> None:
    async with QueuedTaskManager(**options) as manager:
        with pytest.raises(conveyor.InvalidArgument, match="before the manager starts"):
            manager.register_task("late", lambda payload: None)


async def test_many_tasks_run_and_are_waited_for(options: dict[str, Any]) -> None:
    async def work(n: int) -> int:
        await anyio.sleep(0.01)
        return n

    async with QueuedTaskManager(workers=4, **options) as manager:
        for n in range(20):
            manager.start_task(Run(f"run-{n}"), work(n))
        await manager.wait_all()
        results = [(await manager.get_task_status(f"run-{n}")) for n in range(20)]
    assert [r["result"] for r in results if r] == list(range(20))


async def test_a_run_started_twice_is_one_task(options: dict[str, Any]) -> None:
    calls: list[int] = []

    async def work(n: int) -> None:
        calls.append(n)

    async with QueuedTaskManager(**options) as manager:
        assert manager.start_task(Run("run-1"), work(1)) == "run-1"
        assert manager.start_task(Run("run-1"), work(2)) == "run-1"
        await manager.wait_all()
    assert calls == [1]


async def test_an_idempotency_key_answers_with_the_task_holding_it(
    options: dict[str, Any],
) -> None:
    manager = QueuedTaskManager(**options)
    manager.register_task("cleanup", lambda payload: None)
    async with manager:
        first = await manager.schedule_task("cleanup", {}, idempotency_key="cleanup-2025-01-01")
        second = await manager.schedule_task("cleanup", {}, idempotency_key="cleanup-2025-01-01")
    assert first == second


async def test_unknown_tasks_have_no_status_and_cannot_be_cancelled(
    options: dict[str, Any],
) -> None:
    async with QueuedTaskManager(**options) as manager:
        assert await manager.get_task_status("no-such-run") is None
        assert await manager.get_task_status("999") is None
        assert not await manager.cancel_task("no-such-run")


async def test_an_in_process_task_cut_short_by_a_crash_fails_when_the_file_reopens(
    options: dict[str, Any],
) -> None:
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    with anyio.CancelScope() as crash:
        async with QueuedTaskManager(**options) as manager:
            manager.start_task(Run("run-1"), forever())
            await started.wait()
            crash.cancel()  # the process stops: nothing is shut down gracefully
    async with QueuedTaskManager(**options) as manager:
        queue = manager._started()[0]
        (job,) = await queue.list()
        done = await queue.wait(job.id, timeout=60)
    assert done.status is conveyor.JobStatus.FAILED
    assert CANNOT_RESUME in (done.error or "")


# --- many managers on one file: each runs only its own coroutines ------------------------------
async def test_two_managers_on_one_file_each_run_only_their_own_coroutines(
    options: dict[str, Any],
) -> None:
    ran: list[str] = []

    async def work(name: str) -> str:
        ran.append(name)
        await anyio.sleep(0.01)
        return name

    async with QueuedTaskManager(**options) as first, QueuedTaskManager(**options) as second:
        for n in range(10):
            first.start_task(Run(f"run-{n}"), work(f"run-{n}"))
        await first.wait_all()
        statuses = [await second.get_task_status(f"run-{n}") for n in range(10)]
    assert sorted(ran) == sorted(f"run-{n}" for n in range(10))
    assert [s["status"] for s in statuses if s] == ["completed"] * 10


async def test_tasks_left_by_a_stopped_manager_fail_when_the_next_one_starts(
    options: dict[str, Any], db_path: Path
) -> None:
    busy = anyio.Event()

    async def blocker() -> None:
        busy.set()
        await anyio.sleep_forever()

    async def never() -> None:
        raise AssertionError("a leftover coroutine ran")

    async with QueuedTaskManager(workers=1, shutdown_grace=0, **options) as first:
        first.start_task(Run("busy"), blocker())
        await busy.wait()
        first.start_task(Run("left"), never())  # queued behind the busy one when it stops
        await first.get_task_status("left")
    assert list(db_path.parent.glob("*.in-process-*.lock"))  # tells the next manager
    async with QueuedTaskManager(**options) as second:
        queue = second._started()[0]
        ids = [job.id for job in await queue.list()]
        done = await queue.wait_all(ids, timeout=60)
    assert [job.status for job in done] == [conveyor.JobStatus.FAILED] * 2
    assert all(CANNOT_RESUME in (job.error or "") for job in done)
    assert list(db_path.parent.glob("*.in-process-*.lock")) == []  # all ended: removed


# --- start and stop ----------------------------------------------------------------------------
async def test_start_and_stop_may_be_called_from_different_tasks(
    options: dict[str, Any],
) -> None:
    async def work() -> str:
        return "done"

    manager = QueuedTaskManager(**options)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(manager.start)  # a task that ends once the manager started
    manager.start_task(Run("run-1"), work())
    await manager.wait_all()
    status = await manager.get_task_status("run-1")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(manager.stop)
    assert status is not None
    assert status["status"] == "completed"
    with pytest.raises(conveyor.InvalidArgument, match="not started"):
        await manager.wait_all()


async def test_stop_closes_the_coroutines_that_never_ran(options: dict[str, Any]) -> None:
    busy = anyio.Event()

    async def blocker() -> None:
        busy.set()
        await anyio.sleep_forever()

    async def never() -> None:
        pass

    queued = never()
    manager = QueuedTaskManager(workers=1, shutdown_grace=0, **options)
    await manager.start()
    manager.start_task(Run("busy"), blocker())
    await busy.wait()
    manager.start_task(Run("queued"), queued)
    await manager.stop()
    assert queued.cr_frame is None  # closed: no "never awaited" warning
    assert manager.get_active_task_ids() == []


async def test_a_run_the_full_queue_refuses_fails_and_the_block_goes_on(
    options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    busy = anyio.Event()

    async def blocker() -> None:
        busy.set()
        await anyio.sleep_forever()

    async def refused() -> None:
        raise AssertionError("a refused run ran")

    async with QueuedTaskManager(workers=1, max_pending=1, **options) as manager:
        manager.start_task(Run("busy"), blocker())
        await busy.wait()
        manager.start_task(Run("queued"), refused())  # the one pending job allowed
        await manager.get_task_status("queued")  # stored: runs are stored in the background
        manager.start_task(Run("refused"), refused())
        status = await manager.get_task_status("refused")
        active = manager.get_active_task_ids()
        await manager.cancel_task("busy")
        await manager.cancel_task("queued")
    assert status is not None
    assert status["status"] == "failed"
    assert "not stored: QueueFull" in status["error_message"]
    assert "refused" not in active
    assert "refused was not stored" in caplog.text


# --- ids: run ids and schedule_task ids ---------------------------------------------------------
async def test_a_run_is_found_by_its_key_after_a_restart(options: dict[str, Any]) -> None:
    async def work() -> str:
        return "ok"

    async with QueuedTaskManager(**options) as first:
        first.start_task(Run("run-abc"), work())
        await first.wait_all()
    async with QueuedTaskManager(**options) as second:
        status = await second.get_task_status("run-abc")
    assert status is not None
    assert (status["task_id"], status["status"], status["result"]) == ("run-abc", "completed", "ok")


async def test_a_scheduled_tasks_id_never_names_a_runs_job(options: dict[str, Any]) -> None:
    async def work() -> str:
        return "run result"

    manager = QueuedTaskManager(**options)
    manager.register_task("cleanup", lambda payload: "cleanup result")
    async with manager:
        manager.start_task(Run("run-1"), work())  # job 1
        await manager.wait_all()
        scheduled = await manager.schedule_task("cleanup", {})  # job 2
        await manager._started()[0].wait(int(scheduled))
        run_job = await manager.get_task_status("1")
        status = await manager.get_task_status(scheduled)
    assert run_job is None  # a run is named by its run id only
    assert status is not None
    assert (status["type"], status["result"]) == ("cleanup", "cleanup result")


async def test_a_scheduled_task_is_cancelled_by_its_id(options: dict[str, Any]) -> None:
    manager = QueuedTaskManager(**options)
    manager.register_task("cleanup", lambda payload: None)
    async with manager:
        scheduled = await manager.schedule_task("cleanup", {}, delay=3600)
        assert await manager.cancel_task(scheduled)
        status = await manager.get_task_status(scheduled)
    assert status is not None
    assert status["status"] == "cancelled"
