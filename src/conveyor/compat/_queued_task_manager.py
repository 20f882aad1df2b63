"""``QueuedTaskManager``: the background-task manager's interface, over conveyor.

Tasks of registered handlers (``register_task`` / ``schedule_task``) are plain conveyor jobs.
An in-process task (``start_task(run, coro)``) is a coroutine, which cannot be stored: it is a
job whose row records the run's id (its idempotency key ``run:<id>``) and its status, while the
coroutine waits in this process's memory until the job starts and awaits it. Such a job is
cancellable race-free like any other, and visible in the dashboard and statistics.

Only the manager that started a coroutine may run its job, so each manager runs jobs of a
handler name of its own, :data:`IN_PROCESS` ``+ ":" +`` a random token, and holds a lock file
beside the database (``<db>.in-process-<token>.lock``) while it is started. A manager that
stops with tasks unfinished leaves its lock file behind; the next manager to start on the file
finds it unlocked, takes it over and runs that name's jobs, which end ``failed`` with
:data:`CANNOT_RESUME` (no process has their coroutines).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, Protocol

import anyio
import anyio.abc

from .._errors import ConveyorError, InvalidArgument
from .._events import Change
from .._job import JSON, Job, JobStatus
from .._queue import MAX_LIST_LIMIT, Queue
from .._registry import Registry
from .._retry import Fail
from .._runtime import open_queue
from ._host import Host

logger = logging.getLogger("conveyor.compat")

IN_PROCESS: Final = "conveyor.compat.in_process_task"
"""The prefix of the handler names of in-process tasks (alone, the name an earlier conveyor
gave them all)."""

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

_UNFINISHED: Final = (JobStatus.PENDING, JobStatus.RUNNING, JobStatus.WAITING)


class Run(Protocol):
    """What ``start_task`` needs of a run: its id."""

    @property
    def run_id(self) -> object: ...


class QueuedTaskManager:
    """The background-task manager's interface over a conveyor queue on ``db_path``.

    Used as ``async with manager:``, or between ``await manager.start()`` and
    ``await manager.stop()``, which may be called from different tasks. ``options`` are
    :func:`conveyor.open_queue`'s (``workers``, ...). Handlers are registered
    (``register_task``) before it starts: a queue's handlers are fixed when it opens.
    """

    def __init__(self, db_path: str | os.PathLike[str] = "conveyor.db", **options: Any) -> None:
        self._db_path = db_path
        self._options = options
        self._name = f"{IN_PROCESS}:{secrets.token_hex(8)}"
        self._handlers: dict[str, Callable[[Any], Any]] = {}
        self.descriptions: dict[str, str] = {}
        self._host: Host[tuple[Queue, anyio.abc.TaskGroup]] | None = None
        self._queue: Queue | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._coroutines: dict[str, Coroutine[Any, Any, Any]] = {}
        self._jobs: dict[str, int] = {}
        self._runs: dict[int, str] = {}
        self._found: dict[str, int] = {}
        self._stored: dict[str, anyio.Event] = {}
        self._unstored: dict[str, str] = {}
        self._active: set[str] = set()
        self._leftovers: dict[int, str] = {}

    # --- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the queue (nothing if started), held by a task of its own: :meth:`stop` may be
        called from another task. Fails the leftover in-process tasks of stopped managers."""
        if self._host is not None:
            return
        host = Host(self._open_started)
        self._host = host
        try:
            self._queue, self._tasks = await host.start()
        except BaseException:
            self._host = None
            self._clear()
            raise

    async def stop(self) -> None:
        """Stop gracefully, as leaving :func:`conveyor.open_queue`'s block does (at once, as a
        crash, if the caller is cancelled). The coroutines not yet run are closed and the
        manager forgets its runs, whatever happens."""
        host, self._host = self._host, None
        try:
            if host is not None:
                await host.stop()
        finally:
            self._clear()

    async def __aenter__(self) -> QueuedTaskManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- in-process tasks ------------------------------------------------------------------
    def start_task(self, run: Run, coro: Coroutine[Any, Any, Any]) -> str:
        """Run the coroutine ``coro`` as a tracked task of ``run``; the run's id, which is the
        task's id (a second start of one run id keeps the first, and closes ``coro``).

        The job is stored in the background: if storing fails (``conveyor.QueueFull`` beyond
        ``max_pending``, say), a warning is logged, the task is no longer active, its status is
        ``failed`` with ``error_message`` saying it was not stored, and ``coro`` is closed; a
        later ``start_task`` of the run tries again."""
        tasks = self._started()[1]
        run_id = str(run.run_id)
        if run_id in self._stored and run_id not in self._unstored:
            coro.close()
            return run_id
        self._unstored.pop(run_id, None)
        self._coroutines[run_id] = coro
        self._active.add(run_id)
        self._stored[run_id] = stored = anyio.Event()
        tasks.start_soon(self._store_run, run_id, stored)
        return run_id

    async def cancel_task(self, task_id: str) -> bool:
        """Cancel the task ``task_id`` (a run id, or an id ``schedule_task`` gave), queued or
        running; False if it finished already or is unknown."""
        queue = self._started()[0]
        job = await self._job_of(queue, str(task_id))
        return job is not None and await queue.cancel(job.id)

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
        if self._host is not None:
            raise InvalidArgument(
                f"register {task_type!r} before the manager starts: a queue's handlers are "
                "fixed when it opens"
            )
        Registry().handler(task_type)(handler)  # checks the name and the function now
        self._handlers[task_type] = handler
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
        """Queue a task of a registered type; its id (the job's id, as a str). ``priority`` is
        conveyor's (1 runs first, 10 last); a taken ``idempotency_key`` answers with the task
        holding it."""
        job = await self._started()[0].enqueue(
            task_type, payload, priority=priority, idempotency_key=idempotency_key, delay=delay
        )
        return str(job.id)

    async def get_task_status(self, task_id: str) -> dict[str, Any] | None:
        """``task_id`` (a run id, or an id ``schedule_task`` gave), ``status`` (``queued``,
        ``running``, ``completed``, ``failed`` or ``cancelled``), ``type``, ``attempts``,
        ``error_message``, ``result``, ``created_at``, ``started_at``, ``finished_at``;
        ``None`` for an unknown id.

        A run id is looked up first, so a run whose id is a number hides the scheduled task
        of that id. A run this manager did not start (before a restart, or in another process)
        is found by its key in the store, which reads every in-process task's row."""
        queue = self._started()[0]
        task_id = str(task_id)
        await self._until_stored(task_id)
        if task_id in self._unstored:
            return _unstored_status(task_id, self._name, self._unstored[task_id])
        job = await self._job_of(queue, task_id)
        return None if job is None else _status(task_id, job)

    # --- inside: the open queue ----------------------------------------------------------------
    def _started(self) -> tuple[Queue, anyio.abc.TaskGroup]:
        if self._queue is None or self._tasks is None:
            raise InvalidArgument(
                "the manager is not started: use `async with manager:` or `await manager.start()`"
            )
        return self._queue, self._tasks

    @contextlib.asynccontextmanager
    async def _open_started(self) -> AsyncIterator[tuple[Queue, anyio.abc.TaskGroup]]:
        """The queue while started, running this manager's in-process tasks and the leftovers
        of the managers whose lock files it took over, and the task group that stores runs."""
        locks = _take_locks(self._db_path, self._name)
        try:
            registry = self._registry(locks)
            async with open_queue(self._db_path, handlers=registry, **self._options) as queue:
                queue.subscribe(self._on_changes)
                await self._note_leftovers(queue, [*locks, IN_PROCESS])
                async with anyio.create_task_group() as tasks:
                    yield queue, tasks
        finally:
            self._release_locks(locks)

    def _registry(self, in_process_names: Iterable[str]) -> Registry:
        registry = Registry()
        for task_type, handler in self._handlers.items():
            registry.handler(task_type)(handler)
        # A second attempt runs only after the job was taken over (its process stopped
        # renewing its lease): it finds no coroutine.
        registry.handler(self._name, max_attempts=2)(self._run_coroutine)
        for name in {*in_process_names, IN_PROCESS} - {self._name}:
            registry.handler(name, max_attempts=2)(_cannot_resume)
        return registry

    async def _note_leftovers(self, queue: Queue, names: Iterable[str]) -> None:
        """Remember the unfinished jobs of ``names`` (in-process tasks no coroutine is left
        for), so that a lock file is removed only once its jobs have all ended."""
        for name in names:
            for status in _UNFINISHED:
                for job in await _all_jobs(queue, name=name, status=status):
                    self._leftovers[job.id] = name

    def _release_locks(self, locks: Mapping[str, tuple[int, str]]) -> None:
        """Unlock the lock files; remove those whose tasks have all ended (the others tell the
        next manager that jobs of that name are left for it to fail)."""
        unfinished = {*self._leftovers.values()}
        if self._active:
            unfinished.add(self._name)
        for name, (fd, path) in locks.items():
            if name not in unfinished:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.close(fd)

    def _clear(self) -> None:
        """Forget the runs of this start; close the coroutines that never ran."""
        self._queue = self._tasks = None
        coroutines = list(self._coroutines.values())
        for state in (self._coroutines, self._jobs, self._runs, self._found, self._stored):
            state.clear()
        self._unstored.clear()
        self._active.clear()
        self._leftovers.clear()
        for coroutine in coroutines:
            coroutine.close()

    # --- inside: runs --------------------------------------------------------------------------
    async def _store_run(self, run_id: str, stored: anyio.Event) -> None:
        queue = self._started()[0]
        try:
            job = await queue.enqueue(
                self._name, {"run_id": run_id}, idempotency_key=f"run:{run_id}"
            )
            self._jobs[run_id] = job.id
            self._runs[job.id] = run_id
        except Exception as exc:
            # Not raised into the manager's task group, which would end the user's block.
            logger.warning("in-process task %s was not stored, so it will not run: %s", run_id, exc)
            self._unstored[run_id] = f"not stored: {type(exc).__name__}: {exc}"
            self._finished(run_id)
        except BaseException:
            self._finished(run_id)
            raise
        else:
            # The job may have run and finished before this task resumed, its finish then not
            # known as this run's: mapped now, a finish is seen either here or by _on_changes.
            with contextlib.suppress(ConveyorError):  # a failed read leaves it to _on_changes
                now = await queue.get(job.id)
                if now is None or now.status.is_terminal:
                    self._finished(run_id)
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
            if not change.is_finish:
                continue
            self._leftovers.pop(change.job_id, None)
            run_id = self._runs.get(change.job_id)
            if run_id is not None:
                self._finished(run_id)

    def _finished(self, run_id: str) -> None:
        self._active.discard(run_id)
        coroutine = self._coroutines.pop(run_id, None)
        if coroutine is not None:
            coroutine.close()  # cancelled before it ran

    async def _until_stored(self, run_id: str) -> None:
        """Wait until this manager's run ``run_id`` (if it is one) was stored, or refused."""
        stored = self._stored.get(run_id)
        if stored is not None:
            await stored.wait()

    async def _job_of(self, queue: Queue, task_id: str) -> Job | None:
        """The job of ``task_id``: a run's (by its key), else a scheduled task's (by job id)."""
        job_id = await self._run_job_id(queue, task_id)
        if job_id is not None:
            return await queue.get(job_id)
        job_id = _int(task_id)
        job = None if job_id is None else await queue.get(job_id)
        # A number names a scheduled task: an in-process task is named by its run id only.
        return None if job is None or is_in_process(job.name) else job

    async def _run_job_id(self, queue: Queue, run_id: str) -> int | None:
        """The id of the job holding key ``run:<run_id>``: this manager's runs are known;
        others are searched for in the store (and remembered)."""
        await self._until_stored(run_id)
        if run_id in self._jobs:
            return self._jobs[run_id]
        key = f"run:{run_id}"
        found = self._found.get(run_id)
        if found is not None:
            job = await queue.get(found)
            if job is not None and job.idempotency_key == key:
                return found
        job_id = await _find_key(queue, key)
        if job_id is not None:
            self._found[run_id] = job_id
        return job_id


async def _cannot_resume(payload: JSON) -> JSON:
    """The handler of another manager's leftover in-process tasks: no coroutine is left."""
    raise Fail(CANNOT_RESUME)


def is_in_process(name: str) -> bool:
    """Whether ``name`` is the handler name of in-process tasks (of any manager)."""
    return name == IN_PROCESS or name.startswith(f"{IN_PROCESS}:")


async def _find_key(queue: Queue, key: str) -> int | None:
    """The id of the in-process task holding idempotency key ``key``; the public API has no
    lookup by key, so the in-process tasks' rows are read, newest first."""
    names = [name for name in (await queue.stats()).by_name if is_in_process(name)]
    for name in names:
        for job in await _all_jobs(queue, name=name):
            if job.idempotency_key == key:
                return job.id
    return None


async def _all_jobs(queue: Queue, *, name: str, status: JobStatus | None = None) -> list[Job]:
    """Every job of handler ``name`` (of ``status`` only, if given), newest first."""
    jobs: list[Job] = []
    before: int | None = None
    while True:
        page = await queue.list(status=status, name=name, limit=MAX_LIST_LIMIT, before=before)
        jobs.extend(page)
        if len(page) < MAX_LIST_LIMIT:
            return jobs
        before = page[-1].id


# --- lock files: which managers are alive ------------------------------------------------------
def _lock_prefix(db_path: str | os.PathLike[str]) -> str | None:
    """Where the lock files of managers on ``db_path`` go (``None`` for a PostgreSQL URL: the
    processes on one database need not share a file system)."""
    path = os.fspath(db_path)
    if path.startswith(("postgresql://", "postgres://")):
        return None
    return f"{path}.in-process-"


def _take_locks(db_path: str | os.PathLike[str], own: str) -> dict[str, tuple[int, str]]:
    """Lock this manager's file (handler name ``own``), and take over the lock files of
    managers that are gone (the kernel released their locks); by handler name, the locked
    descriptor and the path."""
    prefix = _lock_prefix(db_path)
    if prefix is None:
        return {}
    locks = {own: _hold_new_lock(f"{prefix}{own.rpartition(':')[2]}.lock")}
    try:
        for path in glob.glob(f"{glob.escape(prefix)}*.lock"):
            token = path[len(prefix) : -len(".lock")]
            name = f"{IN_PROCESS}:{token}"
            if name != own and token.isalnum():
                fd = _try_lock(path)
                if fd is not None:
                    locks[name] = (fd, path)
    except BaseException:
        for fd, _ in locks.values():
            os.close(fd)
        raise
    return locks


def _hold_new_lock(path: str) -> tuple[int, str]:
    """Create ``path`` locked: locked under a temporary name first, so that no other manager
    sees it unlocked and takes it over."""
    temporary = f"{path}.{os.getpid()}.new"
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(temporary, path)
    except BaseException:
        os.close(fd)
        raise
    return fd, path


def _try_lock(path: str) -> int | None:
    """Lock ``path`` if no live process holds it (its manager is gone); the descriptor."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None  # removed by its taker meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not os.path.exists(path):
        os.close(fd)  # removed between the open and the lock: its jobs had all ended
        return None
    return fd


def _int(text: str) -> int | None:
    """``text`` as a job id, if it can be one."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if -(2**63) <= value < 2**63 else None


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


def _unstored_status(task_id: str, name: str, error: str) -> dict[str, Any]:
    """The status of a run whose job could not be stored: failed, never run."""
    return {
        "task_id": task_id,
        "status": "failed",
        "type": name,
        "attempts": 0,
        "error_message": error,
        "result": None,
        "created_at": None,
        "started_at": None,
        "finished_at": None,
    }
