"""The TaskQueueManager facade: the SQLite task queue's Testing Guide, ported (its
``dequeue``-based tests become tests of what runs first), and its helpers over conveyor's
workflows and schedules."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import conveyor
from conveyor.compat import tasks
from conveyor.compat.tasks import (
    TaskChain,
    TaskGroup,
    TaskPriority,
    TaskQueueManager,
    TaskStatus,
    create_workflow,
    schedule_recurring_task,
    wait_for_task,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def options(
    db_path: Path, wall_clock: Callable[[], float], anyio_backend_name: str
) -> dict[str, Any]:
    return {"clock": wall_clock, "sql_thread": anyio_backend_name != "trio"}


@pytest.fixture
def manager(db_path: Path, options: dict[str, Any]) -> TaskQueueManager:
    """The Testing Guide's ``test_queue``: a manager with the ``test`` handler, not started."""
    made = TaskQueueManager(db_path, **options)
    made.register_handler("test", processed)
    return made


async def processed(payload: dict[str, Any]) -> dict[str, str]:
    await anyio.sleep(0.1)  # simulate work
    return {"result": f"processed_{payload.get('data')}"}


@pytest.fixture
async def started(manager: TaskQueueManager) -> AsyncIterator[TaskQueueManager]:
    """The Testing Guide's fixture as written: started, yielded, stopped."""
    await manager.start()
    yield manager
    await manager.stop()


def utc(timestamp: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC)


async def test_an_enqueued_task_is_pending_with_its_type_and_priority(
    manager: TaskQueueManager,
) -> None:
    task_id = await manager.enqueue("test", {"data": "test_value"}, priority=TaskPriority.HIGH)
    status = await manager.get_task_status(task_id)
    assert status is not None
    assert (status["type"], status["status"], status["priority"]) == ("test", "pending", 3)
    assert status["status"] is TaskStatus.PENDING
    assert status["retry_count"] == 0


async def test_higher_priority_tasks_run_first(db_path: Path, options: dict[str, Any]) -> None:
    order: list[int] = []

    async def record(payload: dict[str, int]) -> None:
        order.append(payload["n"])

    manager = TaskQueueManager(db_path, worker_count=1, **options)
    manager.register_handler("test", record)
    await manager.enqueue("test", {"n": 1}, priority=TaskPriority.LOW)
    await manager.enqueue("test", {"n": 2}, priority=TaskPriority.HIGH)
    last = await manager.enqueue("test", {"n": 3}, priority=TaskPriority.NORMAL)
    async with manager:
        await wait_for_task(last, manager=manager)
        await wait_for_task(last - 2, manager=manager)
    assert order == [2, 3, 1]


async def test_a_task_runs_and_its_result_is_in_its_status(started: TaskQueueManager) -> None:
    task_id = await started.enqueue("test", {"data": "process_me"})
    status = await wait_for_task(task_id, manager=started)
    assert status is not None
    assert status["status"] == TaskStatus.COMPLETED
    assert status["result"]["result"] == "processed_process_me"
    assert status["started_at"] is not None
    assert status["completed_at"] is not None


@pytest.mark.trio_only
async def test_a_failing_task_is_retried_until_it_succeeds(
    db_path: Path, options: dict[str, Any]
) -> None:
    fail_count = 0

    async def failing(payload: object) -> dict[str, bool]:
        nonlocal fail_count
        fail_count += 1
        if fail_count < 3:
            raise RuntimeError("Simulated failure")
        return {"success": True}

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("fail_test", failing)
    async with manager:
        started = anyio.current_time()
        task_id = await manager.enqueue("fail_test", {})
        status = await wait_for_task(task_id, manager=manager)
        waited = anyio.current_time() - started
    assert fail_count == 3
    assert status is not None
    assert (status["status"], status["retry_count"]) == ("completed", 2)
    assert 2 * 0.9 + 4 * 0.9 <= waited <= 2 * 1.1 + 4 * 1.1 + 1  # 2 ** retry_count seconds


async def test_a_task_whose_retries_are_spent_is_dead(
    db_path: Path, options: dict[str, Any]
) -> None:
    async def failing(payload: object) -> None:
        raise RuntimeError("always")

    manager = TaskQueueManager(db_path, max_retries=0, **options)
    manager.register_handler("fail_test", failing)
    async with manager:
        status = await wait_for_task(await manager.enqueue("fail_test", {}), manager=manager)
    assert status is not None
    assert status["status"] is TaskStatus.DEAD
    assert "always" in status["error"]


async def test_max_retries_given_at_enqueue_wins(db_path: Path, options: dict[str, Any]) -> None:
    runs = 0

    async def failing(payload: object) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("always")

    manager = TaskQueueManager(db_path, max_retries=5, **options)
    manager.register_handler("fail_test", failing)
    async with manager:
        task_id = await manager.enqueue("fail_test", {}, max_retries=0)
        status = await wait_for_task(task_id, manager=manager)
    assert status is not None
    assert (status["status"], runs) == ("dead", 1)


async def test_a_pending_task_is_cancelled(manager: TaskQueueManager) -> None:
    task_id = await manager.enqueue("test", {"data": "cancel_me"})
    assert await manager.cancel_task(task_id)
    status = await manager.get_task_status(task_id)
    assert status is not None
    assert status["status"] == TaskStatus.CANCELLED
    assert not await manager.cancel_task(task_id)


async def test_a_running_task_is_cancelled_too(db_path: Path, options: dict[str, Any]) -> None:
    started = anyio.Event()

    async def forever(payload: object) -> None:
        started.set()
        await anyio.sleep_forever()

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("forever", forever)
    async with manager:
        task_id = await manager.enqueue("forever", {})
        await started.wait()
        assert await manager.cancel_task(task_id)
        status = await wait_for_task(task_id, manager=manager)
    assert status is not None
    assert status["status"] is TaskStatus.CANCELLED


async def test_cancelling_an_unknown_task_is_false(manager: TaskQueueManager) -> None:
    assert not await manager.cancel_task(12345)


async def test_a_batch_is_enqueued(manager: TaskQueueManager) -> None:
    task_ids = await manager.enqueue_batch(
        [{"type": "test", "payload": {"n": i}} for i in range(5)]
    )
    assert len(task_ids) == 5
    for task_id in task_ids:
        assert await manager.get_task_status(task_id) is not None


async def test_a_batch_with_a_bad_task_writes_nothing(manager: TaskQueueManager) -> None:
    with pytest.raises(conveyor.InvalidArgument, match="task 1 of the batch"):
        await manager.enqueue_batch([{"type": "test"}, {"payload": {}}])
    with pytest.raises(conveyor.UnknownHandler):
        await manager.enqueue_batch([{"type": "test"}, {"type": "nobody"}])
    stats = await manager.get_queue_stats()
    assert sum(stats["status_counts"].values()) == 0


async def test_statistics_count_tasks_by_status_and_type(manager: TaskQueueManager) -> None:
    async with manager:
        ids = [await manager.enqueue("test", {"n": i}) for i in range(3)]
        for task_id in ids:
            await wait_for_task(task_id, manager=manager)
        stats = await manager.get_queue_stats()
    assert stats["status_counts"][TaskStatus.COMPLETED] >= 3
    assert stats["type_counts"]["test"] >= 3
    assert stats["worker_count"] == manager.worker_count
    assert set(stats["status_counts"]) == {status.value for status in TaskStatus}
    assert stats["tasks_processed"] == 3
    assert stats["avg_processing_time"] > 0


async def test_statistics_split_failed_from_dead(db_path: Path, options: dict[str, Any]) -> None:
    async def failing(payload: dict[str, bool]) -> None:
        if payload["give_up"]:
            raise conveyor.Fail("given up")
        raise RuntimeError("retry me")

    manager = TaskQueueManager(db_path, max_retries=0, **options)
    manager.register_handler("fail_test", failing)
    async with manager:
        ids = [
            await manager.enqueue("fail_test", {"give_up": g}, max_retries=m)
            for g, m in [(True, 2), (False, 0), (False, 0)]
        ]
        for task_id in ids:
            await wait_for_task(task_id, manager=manager)
        await manager.enqueue("fail_test", {"give_up": True}, scheduled_at=utc(2e9))
        stats = await manager.get_queue_stats()
    counts = stats["status_counts"]
    assert (counts["failed"], counts["dead"], counts["pending"]) == (1, 2, 1)
    assert stats["tasks_failed"] == 3
    assert stats["avg_wait_time_seconds"] < 0  # due in the future


async def test_a_chain_runs_its_tasks_in_order(db_path: Path, options: dict[str, Any]) -> None:
    order: list[int] = []

    async def step(payload: dict[str, int]) -> int:
        await anyio.sleep(0.01 * (3 - payload["step"]))  # later steps are quicker
        order.append(payload["step"])
        return payload["step"]

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("test", step)
    chain = TaskChain(manager).add("test", {"step": 1}).add("test", {"step": 2})
    chain.add("test", {"step": 3})
    async with manager:
        task_ids = await chain.execute()
        last = await wait_for_task(task_ids[-1], manager=manager)
    assert len(task_ids) == 3
    assert last is not None
    assert last["result"] == 3
    assert order == [1, 2, 3]


async def test_a_failed_link_cancels_the_rest_of_the_chain(
    db_path: Path, options: dict[str, Any]
) -> None:
    async def step(payload: dict[str, bool]) -> None:
        if payload["fail"]:
            raise conveyor.Fail("broken link")

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("test", step)
    chain = TaskChain(manager).add("test", {"fail": True}).add("test", {"fail": False})
    async with manager:
        first, second = await chain.execute()
        results = await TaskGroup(manager).wait_all([first, second])
    assert [result["status"] for result in results] == ["failed", "cancelled"]


async def test_a_group_runs_its_tasks_and_waits_for_all(manager: TaskQueueManager) -> None:
    group = TaskGroup(manager)
    for task in (1, 2, 3):
        group.add("test", {"data": task})
    async with manager:
        task_ids = await group.execute()
        results = await group.wait_all(task_ids)
    assert len(task_ids) == 3
    assert [result["result"]["result"] for result in results] == [
        "processed_1",
        "processed_2",
        "processed_3",
    ]


async def test_waiting_past_the_timeout_gives_none(manager: TaskQueueManager) -> None:
    task_id = await manager.enqueue("test", {})
    assert await wait_for_task(task_id, timeout=0.5, manager=manager) is None
    assert await wait_for_task(999, timeout=0.5, manager=manager) is None


async def test_a_scheduled_task_runs_at_its_time(
    manager: TaskQueueManager, wall_clock: Callable[[], float]
) -> None:
    async with manager:
        task_id = await manager.enqueue(
            "test", {"scheduled": True}, scheduled_at=utc(wall_clock() + 2)
        )
        await anyio.sleep(0.5)
        status = await manager.get_task_status(task_id)
        assert status is not None
        assert status["status"] == TaskStatus.PENDING
        done = await wait_for_task(task_id, timeout=10, manager=manager)
    assert done is not None
    assert done["status"] == TaskStatus.COMPLETED
    started = datetime.datetime.fromisoformat(done["started_at"])
    assert started >= utc(wall_clock() - 60)
    assert started.timestamp() >= datetime.datetime.fromisoformat(done["created_at"]).timestamp()


async def test_a_naive_scheduled_time_is_utc(
    manager: TaskQueueManager, wall_clock: Callable[[], float]
) -> None:
    naive = utc(wall_clock() + 3600).replace(tzinfo=None)
    task_id = await manager.enqueue("test", {}, scheduled_at=naive)
    async with manager.open() as queue:
        job = await queue.get(task_id)
    assert job is not None
    assert job.run_at == pytest.approx(wall_clock() + 3600, abs=5)


async def test_requeue_failed_requeues_failed_tasks_but_not_dead_ones(
    db_path: Path, options: dict[str, Any]
) -> None:
    async def failing(payload: dict[str, bool]) -> None:
        if payload["give_up"]:
            raise conveyor.Fail("given up")
        raise RuntimeError("retries spent")

    manager = TaskQueueManager(db_path, max_retries=0, **options)
    manager.register_handler("test", failing)
    async with manager:
        ids = [
            await manager.enqueue("test", {"give_up": g}, max_retries=3) for g in (True, True, True)
        ]
        dead = await manager.enqueue("test", {"give_up": False})
        for task_id in [*ids, dead]:
            await wait_for_task(task_id, manager=manager)
    assert await manager.requeue_failed() == 3
    stats = await manager.get_queue_stats()
    assert stats["status_counts"][TaskStatus.PENDING] == 3
    assert stats["status_counts"][TaskStatus.DEAD] == 1


async def test_clearing_the_queue_deletes_every_task_not_running(
    manager: TaskQueueManager,
) -> None:
    async with manager:
        done = await manager.enqueue("test", {})
        await wait_for_task(done, manager=manager)
    pending = await manager.enqueue("test", {})
    assert await manager.clear_queue() == 2
    assert await manager.get_task_status(done) is None
    assert await manager.get_task_status(pending) is None


async def test_clearing_pending_tasks_cancels_them(manager: TaskQueueManager) -> None:
    pending = await manager.enqueue("test", {})
    assert await manager.clear_queue(TaskStatus.PENDING) == 1
    status = await manager.get_task_status(pending)
    assert status is not None
    assert status["status"] == "cancelled"
    assert await manager.clear_queue("cancelled") == 1
    assert await manager.get_task_status(pending) is None


async def test_clearing_one_status_keeps_the_others(manager: TaskQueueManager) -> None:
    async with manager:
        done = await manager.enqueue("test", {})
        await wait_for_task(done, manager=manager)
    pending = await manager.enqueue("test", {})
    assert await manager.clear_queue(TaskStatus.COMPLETED) == 1
    status = await manager.get_task_status(pending)
    assert status is not None
    assert status["status"] == "pending"


async def test_running_tasks_are_not_cleared(manager: TaskQueueManager) -> None:
    with pytest.raises(conveyor.InvalidArgument, match="running tasks cannot be cleared"):
        await manager.clear_queue(TaskStatus.PROCESSING)
    with pytest.raises(conveyor.InvalidArgument, match="status must be one of"):
        await manager.clear_queue("lost")


async def test_a_handler_is_registered_before_the_manager_starts(
    manager: TaskQueueManager,
) -> None:
    async with manager:
        assert manager.running
        with pytest.raises(conveyor.InvalidArgument, match="before the manager starts"):
            manager.register_handler("late", processed)
    assert not manager.running


@pytest.fixture
def ticking(db_path: Path, options: dict[str, Any]) -> tuple[TaskQueueManager, list[float]]:
    """A manager whose ``tick`` handler notes when each run starts, and those times."""
    runs: list[float] = []

    async def tick(payload: object) -> None:
        runs.append(anyio.current_time())

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("tick", tick)
    return manager, runs


@pytest.mark.trio_only
async def test_a_bounded_recurring_task_runs_that_many_times(
    ticking: tuple[TaskQueueManager, list[float]],
) -> None:
    manager, runs = ticking
    async with manager:
        start = anyio.current_time()
        recurring = await schedule_recurring_task("tick", {}, 10, max_runs=3, manager=manager)
        await anyio.sleep(35)
    assert [round(at - start) for at in runs] == [0, 10, 20]
    assert recurring.key is None
    assert len(recurring.task_ids) == 3


@pytest.mark.trio_only
async def test_a_recurring_task_runs_now_and_every_interval_until_cancelled(
    ticking: tuple[TaskQueueManager, list[float]],
) -> None:
    manager, runs = ticking
    async with manager:
        start = anyio.current_time()
        recurring = await schedule_recurring_task("tick", {"a": 1}, 60, manager=manager)
        again = await schedule_recurring_task("tick", {"a": 1}, 60, manager=manager)
        await anyio.sleep(125)
        await recurring.cancel()
        async with manager.open() as queue:
            assert await queue.schedules() == []
        await anyio.sleep(120)
    assert recurring.key == again.key
    # Two calls ran twice at once, but made one schedule.
    assert [round(at - start) for at in runs] == [0, 0, 60, 120]


async def test_a_workflow_runs_its_steps_in_order_by_default(
    db_path: Path, options: dict[str, Any]
) -> None:
    order: list[str] = []

    async def step(payload: dict[str, str]) -> None:
        order.append(payload["name"])

    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("step", step)
    steps = [{"type": "step", "payload": {"name": n}} for n in ("fetch", "parse", "store")]
    async with manager:
        workflow_id = await create_workflow("etl", steps, manager=manager)
        async with manager.open() as queue:
            graph = await queue.workflow(workflow_id)
            await queue.wait_all([job.id for job in graph.jobs])
    assert order == ["fetch", "parse", "store"]
    assert len(graph.jobs) == 3


async def test_a_workflow_step_may_run_after_chosen_steps(
    db_path: Path, options: dict[str, Any]
) -> None:
    manager = TaskQueueManager(db_path, **options)
    manager.register_handler("step", processed)
    steps: list[dict[str, Any]] = [
        {"type": "step", "payload": {"data": "a"}},
        {"type": "step", "payload": {"data": "b"}, "after": []},
        {"type": "step", "payload": {"data": "join"}, "after": [0, 1]},
    ]
    workflow_id = await create_workflow("fan-in", steps, manager=manager)
    async with manager.open() as queue:
        jobs = (await queue.workflow(workflow_id)).jobs
    by_data = {job.payload["data"]: job for job in jobs}
    assert by_data["join"].after == (by_data["a"].id, by_data["b"].id)
    assert by_data["b"].after == ()


async def test_a_workflow_step_after_a_later_step_is_refused(manager: TaskQueueManager) -> None:
    steps: list[dict[str, Any]] = [{"type": "test", "after": [1]}, {"type": "test"}]
    with pytest.raises(conveyor.InvalidArgument, match="after must list indices of earlier"):
        await create_workflow("bad", steps, manager=manager)


async def test_the_helpers_default_to_the_module_level_manager(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(tasks.task_queue.handlers, "test", processed)
    group = TaskGroup().add("test", {"data": 1})
    assert group.manager is tasks.task_queue
    (task_id,) = await group.execute()
    status = await tasks.task_queue.get_task_status(task_id)
    assert status is not None
    assert status["status"] == "pending"
    assert (tmp_path / "conveyor.db").exists()


async def test_start_and_stop_may_be_called_from_different_tasks(
    manager: TaskQueueManager,
) -> None:
    """As a web framework's startup and shutdown hooks, or a fixture's, call them."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.start)  # a task that ends once the manager started
    assert manager.running
    task_id = await manager.enqueue("test", {"data": "x"})
    status = await wait_for_task(task_id, timeout=60, manager=manager)
    async with anyio.create_task_group() as tg:
        tg.start_soon(manager.stop)
    assert not manager.running
    assert status is not None
    assert status["status"] == TaskStatus.COMPLETED


async def test_a_cancelled_stop_stops_the_queue_at_once(manager: TaskQueueManager) -> None:
    """Cancelling the task in stop() is a crash, as cancelling open_queue's block is: the
    queue is closed when it returns, however long the running task would take."""
    started = anyio.Event()

    async def forever(payload: Any) -> None:
        started.set()
        await anyio.sleep_forever()

    manager.register_handler("forever", forever)
    await manager.start()
    task_id = await manager.enqueue("forever", {})
    await started.wait()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await manager.stop()
    assert not manager.running
    # Opening the file anew (as a producer) finds the task left running by the crash, and
    # puts it back to pending.
    status = await manager.get_task_status(task_id)
    assert status is not None
    assert status["status"] == TaskStatus.PENDING
