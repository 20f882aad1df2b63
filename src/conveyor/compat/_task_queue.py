"""``TaskQueueManager`` and its helpers: the SQLite task queue's interface, over conveyor.

Tasks are conveyor jobs and task ids are job ids. Handlers run on the caller's event loop (trio
or asyncio) while the manager is started; a call on a manager that is not started opens the file
for that call only, as a producer (so a process that only enqueues needs no ``start``). The
helpers (``TaskChain``, ``TaskGroup``, ``wait_for_task``, ``schedule_recurring_task``,
``create_workflow``) take ``manager=`` and default to the module-level :data:`task_queue`.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

import anyio
import attrs

from .._errors import InvalidArgument, JobNotFound, WaitTimeout
from .._events import Change
from .._job import JSON, Event, Job, JobSpec, JobStatus
from .._queue import Queue
from .._registry import Registry
from .._retry import Backoff
from .._runtime import open_queue
from .._storage import sqlite as storage
from .._workflow import Step, Workflow
from ._host import Host

logger = logging.getLogger("conveyor.compat")


class TaskStatus(enum.StrEnum):
    """The statuses of the task queue's tasks, as its documentation names them."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # failed after its retries were spent


class TaskPriority(int, enum.Enum):
    """The task queue's priority levels: 1 runs first, as in conveyor."""

    CRITICAL = 1
    HIGH = 3
    NORMAL = 5
    LOW = 7
    BACKGROUND = 10


SEED_BACKOFF: Final = Backoff(initial=2.0, multiplier=2.0)
"""The task queue's retry delay, ``2 ** retry_count`` seconds (with conveyor's jitter)."""

FINISHED: Final = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED}
)


_LIFE: Final = {
    JobStatus.WAITING: TaskStatus.PENDING,
    JobStatus.PENDING: TaskStatus.PENDING,
    JobStatus.RUNNING: TaskStatus.PROCESSING,
    JobStatus.COMPLETED: TaskStatus.COMPLETED,
    JobStatus.CANCELLED: TaskStatus.CANCELLED,
}
"""conveyor's statuses in the task queue's words, but for ``failed`` (see :func:`task_status`)."""


def task_status(job: Job) -> TaskStatus:
    """A job's status in the task queue's words: a failed job whose attempts were spent is
    ``dead``; one that failed with attempts left (it raised ``Fail``) is ``failed``."""
    if job.status is JobStatus.FAILED:
        return TaskStatus.DEAD if job.attempts >= job.max_attempts else TaskStatus.FAILED
    return _LIFE[job.status]


def task_dict(job: Job) -> dict[str, Any]:
    """The task queue's status dict of ``job`` (times as ISO 8601 text in UTC)."""
    return {
        "id": job.id,
        "type": job.name,
        "status": task_status(job),
        "priority": job.priority,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.finished_at),
        "retry_count": max(job.attempts - 1, 0),
        "error": job.error,
        "result": job.result,
    }


@attrs.define
class Counters:
    """What this manager's workers did since it was made, as the task queue counted it."""

    tasks_processed: int = 0
    tasks_failed: int = 0
    tasks_retried: int = 0
    avg_processing_time: float = 0.0

    def note(self, changes: Iterable[Change]) -> None:
        for change in changes:
            if change.event is Event.COMPLETED:
                self.tasks_processed += 1
                duration = change.duration or 0.0
                self.avg_processing_time += (
                    duration - self.avg_processing_time
                ) / self.tasks_processed
            elif change.event is Event.FAILED:
                self.tasks_failed += 1
            elif change.event is Event.RETRIED:
                self.tasks_retried += 1


class TaskQueueManager:
    """The SQLite task queue's interface over a conveyor queue on ``db_path``.

    ``worker_count`` tasks run at once while it is started (``await manager.start()`` to
    ``await manager.stop()``, or ``async with manager:``); ``max_retries`` is how often a
    failing task is retried by default. ``options`` are :func:`conveyor.open_queue`'s. The
    manager is not bound to an event loop until it starts, so a module-level one (as
    :data:`task_queue`) is fine.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str] = "conveyor.db",
        *,
        worker_count: int = 4,
        max_retries: int = 3,
        **options: Any,
    ) -> None:
        _check_count("worker_count", worker_count, minimum=1)
        _check_count("max_retries", max_retries, minimum=0)
        if "handlers" in options or "workers" in options:
            raise InvalidArgument(
                "give handlers with register_handler and the number of workers as worker_count"
            )
        self.db_path = db_path
        self.worker_count = worker_count
        self.max_retries = max_retries
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self.counters = Counters()
        self._options = options
        self._host: Host[Queue] | None = None
        self._queue: Queue | None = None

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._queue is not None

    @property
    def stats(self) -> dict[str, Any]:
        """This manager's counters (tasks processed, failed and retried, mean run time)."""
        return attrs.asdict(self.counters)

    # --- life --------------------------------------------------------------------------------
    def register_handler(self, task_type: str, handler: Callable[[Any], Any]) -> None:
        """Run ``handler`` (async or sync, taking the payload, returning a JSON value) for
        tasks of ``task_type``; registered before the manager starts (a later one replaces it
        at the next start)."""
        if not isinstance(task_type, str) or not callable(handler):
            raise InvalidArgument(
                f"register_handler takes a task type (str) and a function, not "
                f"{task_type!r} and {handler!r}"
            )
        if self.running:
            raise InvalidArgument(
                f"register {task_type!r} before the manager starts (or stop it first): a "
                "queue's handlers are fixed when it opens"
            )
        self.handlers[task_type] = handler
        logger.info("registered handler for task type %s", task_type)

    async def start(self) -> None:
        """Start ``worker_count`` workers on the caller's event loop; nothing if started.

        The queue is held open by a task of its own, so :meth:`stop` may be called from
        another task than this (a web framework's shutdown hook, a fixture's teardown)."""
        if self._host is not None:
            return
        host = Host(self._open_started)
        self._host = host
        try:
            self._queue = await host.start()
        except BaseException:
            self._host = None
            raise
        logger.info("started the task queue with %d workers", self.worker_count)

    async def stop(self) -> None:
        """Stop gracefully (running tasks finish or go back to pending, as leaving
        :func:`conveyor.open_queue`'s block does); nothing if not started. Any task may call
        it; if it is cancelled, the queue stops at once, as a crash."""
        host, self._host, self._queue = self._host, None, None
        if host is not None:
            await host.stop()
            logger.info("stopped the task queue")

    @contextlib.asynccontextmanager
    async def _open_started(self) -> AsyncIterator[Queue]:
        """The queue while started: this manager's workers, counted."""
        async with open_queue(
            self.db_path, handlers=self._registry(), workers=self.worker_count, **self._options
        ) as queue:
            queue.subscribe(self.counters.note)
            yield queue

    async def __aenter__(self) -> TaskQueueManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- tasks -------------------------------------------------------------------------------
    async def enqueue(
        self,
        task_type: str,
        payload: JSON = None,
        priority: int = TaskPriority.NORMAL,
        scheduled_at: datetime.datetime | None = None,
        user_id: str | None = None,
        *,
        max_retries: int | None = None,
    ) -> int:
        """Queue a task; its id. ``scheduled_at`` (a naive datetime is UTC, as the task queue's
        ``utcnow()``) delays it; ``max_retries`` overrides the manager's. ``user_id`` is
        accepted and, as in the task queue, not stored."""
        spec = self._spec(task_type, payload, priority, scheduled_at, max_retries)
        async with self.open() as queue:
            job = (await queue.enqueue_many([spec]))[0]
        logger.debug("enqueued task %d: type=%s, priority=%s", job.id, task_type, priority)
        return job.id

    async def enqueue_batch(
        self, tasks: Sequence[Mapping[str, Any]], priority: int = TaskPriority.NORMAL
    ) -> list[int]:
        """Queue every task of ``tasks`` (dicts with ``type`` and optional ``payload`` and
        ``priority``) in one transaction: all or none; their ids in order."""
        specs = [self._spec_of(index, task, priority) for index, task in enumerate(tasks)]
        async with self.open() as queue:
            jobs = await queue.enqueue_many(specs)
        logger.info("enqueued %d tasks", len(jobs))
        return [job.id for job in jobs]

    async def cancel_task(self, task_id: int) -> bool:
        """Cancel a pending or running task; False if it finished already or is unknown."""
        async with self.open() as queue:
            cancelled = await queue.cancel(task_id)
        if cancelled:
            logger.info("task %d cancelled", task_id)
        return cancelled

    async def get_task_status(self, task_id: int) -> dict[str, Any] | None:
        """The task's ``id``, ``type``, ``status``, ``priority``, ``created_at``,
        ``started_at``, ``completed_at``, ``retry_count``, ``error`` and ``result``; ``None``
        for an unknown id."""
        async with self.open() as queue:
            job = await queue.get(task_id)
        return None if job is None else task_dict(job)

    async def get_queue_stats(self) -> dict[str, Any]:
        """``status_counts`` (every status), ``type_counts``, ``avg_wait_time_seconds`` (of the
        pending tasks), ``worker_count``, ``active_workers`` and this manager's counters."""
        async with self.open() as queue:
            stats = await queue.stats()
            # Reads the task queue counted that conveyor's statistics do not, on the queue's
            # own read path and clock (a test's clock may be virtual).
            failed_early = await queue._read(storage.count_failed_early)
            mean_run_at = await queue._read(storage.mean_pending_run_at)
            now = queue._runtime.clock()
        counts = dict.fromkeys((status.value for status in TaskStatus), 0)
        for status, count in stats.by_status.items():
            if status is not JobStatus.FAILED:
                counts[_LIFE[status].value] += count
        counts[TaskStatus.FAILED.value] = failed_early
        counts[TaskStatus.DEAD.value] = stats.by_status.get(JobStatus.FAILED, 0) - failed_early
        return {
            "status_counts": counts,
            "type_counts": {name: sum(by.values()) for name, by in stats.by_name.items()},
            "avg_wait_time_seconds": 0.0 if mean_run_at is None else now - mean_run_at,
            "worker_count": self.worker_count,
            "active_workers": self.worker_count if self.running else 0,
            **self.stats,
        }

    async def clear_queue(self, status: TaskStatus | str | None = None) -> int:
        """Delete tasks; how many. With no ``status``, every task but the running ones (the
        pending ones are cancelled first, so none starts meanwhile). With a finished status,
        the tasks of it (``failed`` and ``dead`` are one status in conveyor: either clears
        both). With ``pending``, the pending tasks are cancelled and their rows stay, as
        ``cancelled``. Running tasks are never cleared: cancel them one by one."""
        wanted = None if status is None else _task_status(status)
        if wanted is TaskStatus.PROCESSING:
            raise InvalidArgument(
                "running tasks cannot be cleared: cancel each with cancel_task(task_id)"
            )
        async with self.open() as queue:
            if wanted is TaskStatus.PENDING:
                cleared = await queue.cancel_pending()
            elif wanted is None:
                await queue.cancel_pending()
                cleared = await queue.purge(0)
            else:
                cleared = await queue.purge(0, status=_PURGED[wanted])
        logger.info("cleared %d tasks from the queue", cleared)
        return cleared

    async def requeue_failed(self) -> int:
        """Requeue every ``failed`` task (not the ``dead`` ones, whose retries were spent),
        attempts reset; how many. Tasks left running by a crash need no requeue: conveyor
        recovers them when the file is next opened."""
        requeued = 0
        async with self.open() as queue:
            for job in await _all_failed(queue):
                if task_status(job) is TaskStatus.FAILED and await queue.requeue(job.id):
                    requeued += 1
        if requeued:
            logger.info("requeued %d failed tasks", requeued)
        return requeued

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Queue]:
        """The conveyor queue under this manager: the started one, or the file opened as a
        producer for the block."""
        if self._queue is not None:
            yield self._queue
            return
        handlers = self._registry() if self.handlers else None
        async with open_queue(self.db_path, handlers=handlers, workers=0, **self._options) as queue:
            yield queue

    # --- inside --------------------------------------------------------------------------------
    def _registry(self) -> Registry:
        registry = Registry()
        for task_type, handler in self.handlers.items():
            registry.handler(task_type, max_attempts=self.max_retries + 1, backoff=SEED_BACKOFF)(
                handler
            )
        return registry

    def _spec(
        self,
        task_type: str,
        payload: JSON,
        priority: int,
        scheduled_at: datetime.datetime | None,
        max_retries: int | None,
    ) -> JobSpec:
        if max_retries is not None:
            _check_count("max_retries", max_retries, minimum=0)
        return JobSpec(
            task_type,
            payload,
            priority=_priority(priority),
            run_at=None if scheduled_at is None else _timestamp(scheduled_at),
            max_attempts=None if max_retries is None else max_retries + 1,
        )

    def _spec_of(self, index: int, task: Mapping[str, Any], priority: int) -> JobSpec:
        if not isinstance(task, Mapping) or "type" not in task:
            raise InvalidArgument(
                f"task {index} of the batch must be a dict with a 'type', not {task!r}"
            )
        unknown = set(task) - {"type", "payload", "priority"}
        if unknown:
            raise InvalidArgument(
                f"task {index} of the batch has unknown keys {sorted(unknown)}: it takes "
                "'type', 'payload' and 'priority'"
            )
        return self._spec(
            task["type"], task.get("payload", {}), task.get("priority", priority), None, None
        )


# --- helpers ---------------------------------------------------------------------------------
@attrs.frozen
class _Task:
    type: str
    payload: JSON
    priority: int


class TaskChain:
    """Tasks that run one after the other: each starts once the one before it completed (a
    failed or cancelled one cancels the rest). Stored in one transaction, so the chain goes on
    across restarts; ``execute`` does not wait for it."""

    def __init__(self, manager: TaskQueueManager | None = None) -> None:
        self.manager = manager or task_queue
        self.tasks: list[_Task] = []

    def add(self, task_type: str, payload: JSON, priority: int = TaskPriority.NORMAL) -> TaskChain:
        """Add a task at the end of the chain; the chain."""
        self.tasks.append(_Task(task_type, payload, _priority(priority)))
        return self

    async def execute(self) -> list[int]:
        """Store the chain; the tasks' ids in order, at once (wait for the last one with
        :func:`wait_for_task`)."""
        specs = [self.manager._spec(t.type, t.payload, t.priority, None, None) for t in self.tasks]
        async with self.manager.open() as queue:
            jobs = await queue.enqueue_workflow(Workflow.chain(specs))
        return [job.id for job in jobs]


class TaskGroup:
    """Tasks that run in parallel, stored in one transaction."""

    def __init__(self, manager: TaskQueueManager | None = None) -> None:
        self.manager = manager or task_queue
        self.tasks: list[_Task] = []

    def add(self, task_type: str, payload: JSON, priority: int = TaskPriority.NORMAL) -> TaskGroup:
        """Add a task to the group; the group."""
        self.tasks.append(_Task(task_type, payload, _priority(priority)))
        return self

    async def execute(self) -> list[int]:
        """Store every task of the group (all or none); their ids in order."""
        return await self.manager.enqueue_batch(
            [{"type": t.type, "payload": t.payload, "priority": t.priority} for t in self.tasks]
        )

    async def wait_all(self, task_ids: Iterable[int], timeout: float = 300) -> list[Any]:
        """Each task's status dict once it finished, in order; ``None`` for a task that did
        not finish within ``timeout`` seconds (counted from the call) or is unknown."""
        task_ids = list(task_ids)
        deadline = anyio.current_time() + timeout
        async with self.manager.open() as queue:
            results: list[Any] = []
            for task_id in task_ids:
                left = max(deadline - anyio.current_time(), 0.0)
                results.append(await _wait(queue, task_id, left))
        return results


async def wait_for_task(
    task_id: int,
    timeout: float = 300,
    poll_interval: float = 1.0,
    *,
    manager: TaskQueueManager | None = None,
) -> dict[str, Any] | None:
    """The task's status dict once it finished (completed, failed, dead or cancelled);
    ``None`` if it did not within ``timeout`` seconds, or is unknown. Woken by the change
    itself: ``poll_interval`` is accepted and unused."""
    async with (manager or task_queue).open() as queue:
        return await _wait(queue, task_id, timeout)


@attrs.frozen
class RecurringTask:
    """What :func:`schedule_recurring_task` stored: a schedule under ``key``, or, for a
    bounded number of runs, the ids of the tasks it queued. ``await cancel()`` stops it."""

    manager: TaskQueueManager = attrs.field(repr=False)
    key: str | None
    task_ids: tuple[int, ...]

    async def cancel(self) -> None:
        """Delete the schedule, or cancel the runs not started yet."""
        async with self.manager.open() as queue:
            if self.key is not None:
                await queue.unschedule(self.key)
            for task_id in self.task_ids:
                await queue.cancel(task_id)


async def schedule_recurring_task(
    task_type: str,
    payload: JSON,
    interval_seconds: float,
    max_runs: int | None = None,
    *,
    manager: TaskQueueManager | None = None,
    key: str | None = None,
) -> RecurringTask:
    """Run a task now and every ``interval_seconds`` after, durably.

    Unbounded, it is a conveyor schedule under ``key`` (by default one derived from the task
    type, the interval and the payload, so calling it again at each start replaces it rather
    than adding another), plus the first run now. With ``max_runs`` the runs are queued at once,
    each ``interval_seconds`` after the one before.
    """
    manager = manager or task_queue
    if isinstance(interval_seconds, bool) or not isinstance(interval_seconds, int | float):
        raise InvalidArgument(f"interval_seconds must be a number, not {interval_seconds!r}")
    if not interval_seconds > 0:
        raise InvalidArgument(f"interval_seconds must be > 0, not {interval_seconds!r}")
    if max_runs is not None:
        _check_count("max_runs", max_runs, minimum=1)
        specs = [
            JobSpec(task_type, payload, delay=run * interval_seconds) for run in range(max_runs)
        ]
        async with manager.open() as queue:
            jobs = await queue.enqueue_many(specs)
        return RecurringTask(manager, None, tuple(job.id for job in jobs))
    key = key or _recurring_key(task_type, payload, interval_seconds)
    async with manager.open() as queue:
        await queue.schedule(key, task_type, payload, every=interval_seconds)
        await queue.enqueue(task_type, payload)
    return RecurringTask(manager, key, ())


async def create_workflow(
    name: str, steps: Sequence[Mapping[str, Any]], *, manager: TaskQueueManager | None = None
) -> int:
    """Store a workflow of ``steps`` in one transaction; its id (the first step's task id).

    Each step is a dict with ``type`` and optional ``payload``, ``priority`` and ``after`` (the
    indices of earlier steps it runs after; by default the step before it, so the steps run in
    order). ``name`` is logged. Read the whole workflow back with ``Queue.workflow(id)``.
    """
    if not steps:
        raise InvalidArgument(f"workflow {name!r} has no steps")
    manager = manager or task_queue
    flow = Workflow()
    added: list[Step] = []
    for index, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise InvalidArgument(f"step {index} of workflow {name!r} must be a dict, not {step!r}")
        after = step.get("after", [index - 1] if index else [])
        if isinstance(after, int | str) or not all(
            isinstance(i, int) and 0 <= i < index for i in after
        ):
            raise InvalidArgument(
                f"step {index} of workflow {name!r}: after must list indices of earlier steps, "
                f"not {after!r}"
            )
        spec = manager._spec_of(index, {k: v for k, v in step.items() if k != "after"}, 5)
        added.append(flow.add_spec(spec, after=[added[i] for i in after]))
    async with manager.open() as queue:
        jobs = await queue.enqueue_workflow(flow)
    logger.info("created workflow %r: tasks %s", name, [job.id for job in jobs])
    return jobs[0].id


# --- inside --------------------------------------------------------------------------------
_PURGED: Final = {
    TaskStatus.COMPLETED: JobStatus.COMPLETED,
    TaskStatus.CANCELLED: JobStatus.CANCELLED,
    TaskStatus.FAILED: JobStatus.FAILED,
    TaskStatus.DEAD: JobStatus.FAILED,
}


async def _wait(queue: Queue, task_id: int, timeout: float) -> dict[str, Any] | None:
    try:
        return task_dict(await queue.wait(task_id, timeout=timeout))
    except (WaitTimeout, JobNotFound):
        return None


async def _all_failed(queue: Queue) -> list[Job]:
    jobs: list[Job] = []
    before: int | None = None
    while page := await queue.list(status=JobStatus.FAILED, limit=1000, before=before):
        jobs.extend(page)
        before = page[-1].id
    return jobs


def _task_status(value: TaskStatus | str) -> TaskStatus:
    try:
        return TaskStatus(value)
    except ValueError:
        known = ", ".join(status.value for status in TaskStatus)
        raise InvalidArgument(f"status must be one of {known}, not {value!r}") from None


def _priority(value: object) -> Any:
    """A priority given as a :class:`TaskPriority` as the plain int; anything else as it is,
    for :class:`conveyor.JobSpec` to check."""
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _check_count(what: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgument(f"{what} must be an int >= {minimum}, not {value!r}")


def _timestamp(moment: datetime.datetime) -> float:
    if not isinstance(moment, datetime.datetime):
        raise InvalidArgument(f"scheduled_at must be a datetime, not {moment!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


def _recurring_key(task_type: str, payload: JSON, interval: float) -> str:
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return f"recurring:{task_type}:{interval:g}s:{digest}"


task_queue: Final = TaskQueueManager()
"""The process-wide manager on ``conveyor.db``, as the task queue's module-level one."""
