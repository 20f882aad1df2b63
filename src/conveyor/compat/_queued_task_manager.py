"""``QueuedTaskManager``: the background-task manager's interface, over conveyor.

Tasks of registered handlers (``register_task`` / ``schedule_task``) are plain conveyor jobs.
An in-process task (``start_task(run, coro)``) is a coroutine, which cannot be stored: it is a
job of the handler :data:`IN_PROCESS` whose row records the run's id (its idempotency key) and
its status, while the coroutine waits in this process's memory until the job starts and awaits
it. Such a job is cancellable race-free like any other, and visible in the dashboard and
statistics. If the process stops before the coroutine ends, the job ends ``failed`` with
:data:`CANNOT_RESUME` when the file is next opened.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Final, Protocol

import anyio

from .._errors import InvalidArgument
from .._events import Change
from .._job import JSON, Job, JobStatus
from .._queue import Queue
from .._registry import Registry
from .._retry import Fail
from .._runtime import open_queue

IN_PROCESS: Final = "conveyor.compat.in_process_task"

CANNOT_RESUME: Final = (
    "an in-process task (a coroutine) cannot be resumed: the process that started it stopped "
    "before it finished"
)

STATUS_NAMES: Final = {
    JobStatus.WAITING: "queued",
    JobStatus.PENDING: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.COMPLETED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
"""conveyor's statuses in the background-task manager's words."""


class Run(Protocol):
    """What ``start_task`` needs of a run: its id."""

    @property
    def run_id(self) -> object: ...


class QueuedTaskManager:
    """The background-task manager's interface over a conveyor queue on ``db_path``.

    Used as ``async with manager:``, or between ``await manager.start()`` and
    ``await manager.stop()``. ``options`` are :func:`conveyor.open_queue`'s (``workers``, ...).
    Handlers are registered (``register_task``) before it starts: a queue's handlers are
    fixed when it opens.
    """

    def __init__(self, db_path: str | os.PathLike[str] = "conveyor.db", **options: Any) -> None:
        self._db_path = db_path
        self._options = options
        self._registry = Registry()
        # A second attempt runs only after the process stopped: it finds no coroutine.
        self._registry.handler(IN_PROCESS, max_attempts=2)(self._run_coroutine)
        self.descriptions: dict[str, str] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._queue: Queue | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._coroutines: dict[str, Coroutine[Any, Any, Any]] = {}
        self._jobs: dict[str, int] = {}
        self._runs: dict[int, str] = {}
        self._stored: dict[str, anyio.Event] = {}
        self._active: set[str] = set()

    # --- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._stack is not None:
            return
        stack = contextlib.AsyncExitStack()
        try:
            self._queue = await stack.enter_async_context(
                open_queue(self._db_path, handlers=self._registry, **self._options)
            )
            self._queue.subscribe(self._on_changes)
            self._tasks = await stack.enter_async_context(anyio.create_task_group())
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def stop(self) -> None:
        """Stop gracefully, as leaving :func:`conveyor.open_queue`'s block does."""
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._queue = self._tasks = None
        for coroutine in self._coroutines.values():
            coroutine.close()
        self._coroutines.clear()

    async def __aenter__(self) -> QueuedTaskManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in-process tasks ------------------------------------------------------------------
    def start_task(self, run: Run, coro: Coroutine[Any, Any, Any]) -> str:
        """Run the coroutine ``coro`` as a tracked task of ``run``; the run's id, which is the
        task's id (a second start of one run id keeps the first, and closes ``coro``)."""
        tasks = self._started()[1]
        run_id = str(run.run_id)
        if run_id in self._stored:
            coro.close()
            return run_id
        self._coroutines[run_id] = coro
        self._active.add(run_id)
        self._stored[run_id] = stored = anyio.Event()
        tasks.start_soon(self._store_run, run_id, stored)
        return run_id

    async def cancel_task(self, run_id: str) -> bool:
        """Cancel the task of ``run_id`` (queued or running); False if it finished already, or
        was not started by this manager."""
        queue = self._started()[0]
        stored = self._stored.get(str(run_id))
        if stored is None:
            return False
        await stored.wait()
        job_id = self._jobs.get(str(run_id))
        return job_id is not None and await queue.cancel(job_id)

    async def wait_all(self) -> None:
        """Wait until every task this manager started has finished."""
        queue = self._started()[0]
        for stored in list(self._stored.values()):
            await stored.wait()
        await queue.wait_all(list(self._jobs.values()))

    def get_active_task_count(self) -> int:
        return len(self._active)

    def get_active_task_ids(self) -> list[str]:
        return sorted(self._active)

    def is_task_active(self, run_id: str) -> bool:
        return str(run_id) in self._active

    # --- registered tasks ------------------------------------------------------------------
    def register_task(
        self, task_type: str, handler: Callable[[Any], Any], description: str = ""
    ) -> None:
        """Register ``handler`` (sync or async, taking the payload) for ``task_type``."""
        if self._stack is not None:
            raise InvalidArgument(
                f"register {task_type!r} before the manager starts: a queue's handlers are "
                "fixed when it opens"
            )
        self._registry.handler(task_type)(handler)
        self.descriptions[task_type] = description

    async def schedule_task(
        self,
        task_type: str,
        payload: JSON = None,
        priority: int = 5,
        *,
        idempotency_key: str | None = None,
        delay: float | None = None,
    ) -> str:
        """Queue a task of a registered type; its id. ``priority`` is conveyor's (1 runs
        first, 10 last); a taken ``idempotency_key`` answers with the task holding it."""
        job = await self._started()[0].enqueue(
            task_type, payload, priority=priority, idempotency_key=idempotency_key, delay=delay
        )
        return str(job.id)

    async def get_task_status(self, task_id: str) -> dict[str, Any] | None:
        """``task_id`` (a run id, or an id ``schedule_task`` gave), ``status`` (``queued``,
        ``running``, ``completed``, ``failed`` or ``cancelled``), ``type``, ``attempts``,
        ``error_message``, ``result``, ``created_at``, ``started_at``, ``finished_at``;
        ``None`` for an unknown id."""
        queue = self._started()[0]
        stored = self._stored.get(str(task_id))
        if stored is not None:
            await stored.wait()
        job_id = self._jobs.get(str(task_id))
        if job_id is None:
            try:
                job_id = int(task_id)
            except ValueError:
                return None
        job = await queue.get(job_id)
        return None if job is None else _status(str(task_id), job)

    # --- inside --------------------------------------------------------------------------------
    def _started(self) -> tuple[Queue, anyio.abc.TaskGroup]:
        if self._queue is None or self._tasks is None:
            raise InvalidArgument(
                "the manager is not started: use `async with manager:` or `await manager.start()`"
            )
        return self._queue, self._tasks

    async def _store_run(self, run_id: str, stored: anyio.Event) -> None:
        try:
            job = await self._started()[0].enqueue(
                IN_PROCESS, {"run_id": run_id}, idempotency_key=f"run:{run_id}"
            )
            self._jobs[run_id] = job.id
            self._runs[job.id] = run_id
            if job.status.is_terminal:
                self._finished(run_id)
        except BaseException:
            self._finished(run_id)
            raise
        finally:
            stored.set()

    async def _run_coroutine(self, payload: dict[str, str]) -> JSON:
        coroutine = self._coroutines.pop(payload["run_id"], None)
        if coroutine is None:
            raise Fail(CANNOT_RESUME)
        try:
            result = await coroutine
        except Exception as exc:
            # A coroutine cannot be awaited twice: its error ends the task, no retry.
            raise Fail(f"{type(exc).__name__}: {exc}") from exc
        return result if _is_json(result) else None

    def _on_changes(self, changes: Iterable[Change]) -> None:
        for change in changes:
            run_id = self._runs.get(change.job_id)
            if run_id is not None and change.is_finish:
                self._finished(run_id)

    def _finished(self, run_id: str) -> None:
        self._active.discard(run_id)
        coroutine = self._coroutines.pop(run_id, None)
        if coroutine is not None:
            coroutine.close()  # cancelled before it ran


def _is_json(value: object) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _status(task_id: str, job: Job) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "status": STATUS_NAMES[job.status],
        "type": job.name,
        "attempts": job.attempts,
        "error_message": job.error,
        "result": job.result,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }
