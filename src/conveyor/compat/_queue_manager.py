"""``QueueManager``: the parallel file-processing queue manager's interface, over conveyor.

Each file is a conveyor job of the handler :data:`HANDLER`, run in a worker process
(``process=True``) by :func:`process_file`, which imports the manager's ``processor`` by name
and calls it with the file's path. Everything else is conveyor's: the jobs are stored in the
SQLite file (they survive a crash), retried with exponential backoff at a lower priority each
time, killed at ``worker_timeout``, limited to ``worker_memory_limit``, and fewer run at once
above ``memory_threshold_percent``.

Adding tasks needs no processing running: the manager keeps a producer queue open on the file
(``add_task`` stores the job at once), and ``start_processing`` opens a worker queue beside it
until ``stop_processing``.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from .. import blocking
from .._errors import InvalidArgument
from .._job import JSON, Job, JobSpec, JobStatus
from .._process import reference, resolve
from .._registry import Registry
from .._retry import Backoff, Fail

HANDLER: Final = "conveyor.compat.process_file"


class TaskStatus(enum.Enum):
    """The statuses of the manager's tasks, as its documentation names them."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"


def task_status(job: Job) -> TaskStatus:
    """A job's status in the manager's words: a pending job that ran before waits to retry."""
    if job.status is JobStatus.PENDING and job.attempts > 0:
        return TaskStatus.RETRY
    return {
        JobStatus.WAITING: TaskStatus.PENDING,
        JobStatus.PENDING: TaskStatus.PENDING,
        JobStatus.RUNNING: TaskStatus.PROCESSING,
        JobStatus.COMPLETED: TaskStatus.COMPLETED,
        JobStatus.FAILED: TaskStatus.FAILED,
        JobStatus.CANCELLED: TaskStatus.CANCELLED,
    }[job.status]


def conveyor_priority(priority: int) -> int:
    """The manager's priority (higher runs first; 10 the highest) as conveyor's (1 runs
    first): 10 -> 1, 5 -> 6, 1 and 0 -> 10."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"priority must be an int, not {priority!r}")
    return max(1, min(10, 11 - priority))


def error_message(error: str | None) -> str | None:
    """A task's error as the manager gave it: the exception's message (with its type, unless
    it is :class:`conveyor.Fail`), without the traceback conveyor stores with it."""
    if error is None:
        return None
    _, header, tail = error.rpartition("Traceback (most recent call last):\n")
    if not header:
        return error  # not a traceback: a timeout, a lost worker process
    # The frames are indented; the exception's text is what follows them.
    text = "\n".join(itertools.dropwhile(lambda line: line[:1] in ("", " "), tail.splitlines()))
    for prefix in _FAIL_PREFIXES:
        text = text.removeprefix(prefix)
    return text or error


# conveyor.Fail, and the name errors stored by earlier versions gave it.
_FAIL_PREFIXES: Final = (f"{Fail.__module__}.{Fail.__qualname__}: ", "conveyor._retry.Fail: ")


def process_file(payload: dict[str, str]) -> JSON:
    """The handler run in the worker processes: the manager's processor, on one file."""
    file_path = payload["file_path"]
    if not os.path.exists(file_path):
        # Retrying cannot make it appear: the task fails at once, as the manager's did.
        raise Fail(f"file not found: {file_path}")
    processor = resolve(payload["module"], payload["qualname"])
    return processor(file_path)


class QueueManager:
    """Parallel processing of files by ``processor`` (a function of a file's path returning a
    JSON value, defined at the top level of an importable module), with the documented
    options of the manager it replaces.

    ``max_workers`` (default: the number of CPUs) worker processes; ``queue_size`` pending
    tasks at most (``add_task`` raises :class:`conveyor.QueueFull` beyond it);
    ``worker_timeout`` seconds per attempt; ``max_retries`` retries after the first attempt,
    ``retry_delay`` seconds before the first, doubling; ``progress_update_interval`` seconds
    between calls of the progress callback; ``memory_threshold_percent``: above it, one task
    runs at a time; ``worker_memory_limit`` per worker process (``"256MiB"`` or bytes).
    ``db_path`` is the queue's SQLite file.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        queue_size: int = 1000,
        worker_timeout: float = 300,
        max_retries: int = 3,
        retry_delay: float = 5,
        progress_update_interval: float = 10,
        memory_threshold_percent: float = 85,
        worker_memory_limit: int | str = "256MiB",
        *,
        processor: Callable[[str], JSON],
        db_path: str | os.PathLike[str] = "conveyor.db",
    ) -> None:
        module, qualname = reference(processor)
        self._processor = {"module": module, "qualname": qualname}
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidArgument(f"max_retries must be an int >= 0, not {max_retries!r}")
        self._registry = Registry()
        self._registry.handler(
            HANDLER,
            max_attempts=max_retries + 1,
            timeout=worker_timeout,
            backoff=Backoff(initial=retry_delay, multiplier=2, maximum=3600, jitter=0.1),
            retry_priority_step=1,
            process=True,
            memory_limit=worker_memory_limit,
        )(process_file)
        self._workers = max_workers or os.cpu_count() or 1
        self._interval = progress_update_interval
        self._options: dict[str, Any] = {
            "max_pending": queue_size,
            "memory_high_water": memory_threshold_percent / 100,
        }
        self._db_path = db_path
        self._lock = threading.Lock()
        # Apart from _lock, which start_processing holds while it opens the producer.
        self._opening = threading.Lock()
        self._producer: contextlib.ExitStack | None = None
        self._queue: blocking.BlockingQueue | None = None
        self._processing: contextlib.ExitStack | None = None
        self._stop_progress = threading.Event()
        self._started_at: float | None = None

    # --- tasks -------------------------------------------------------------------------------
    def add_task(self, file_path: str, priority: int = 5) -> str:
        """Queue ``file_path`` for processing; its task id. Stored at once."""
        (task_id,) = self.add_tasks([file_path], priority)
        return task_id

    def add_tasks(self, file_paths: Iterable[str], priority: int = 5) -> list[str]:
        """Queue every file of ``file_paths`` (all or none); their task ids, in order."""
        specs = [
            JobSpec(
                HANDLER,
                {**self._processor, "file_path": os.fspath(path)},
                priority=conveyor_priority(priority),
            )
            for path in file_paths
        ]
        return [str(job.id) for job in self._open().enqueue_many(specs)]

    def cancel_task(self, task_id: str | int) -> bool:
        """Cancel a queued or running task; False for a finished or unknown one. A queued
        task cancelled never runs, whatever processing is doing at that moment (the cancel
        and the claim are one writer's commands, so no race lets it start); a running one's
        worker process is killed."""
        job_id = _job_id(task_id)
        return job_id is not None and self._open().cancel(job_id)

    def get_task_status(self, task_id: str | int) -> dict[str, Any] | None:
        """The task's state (``None`` for an unknown id): ``task_id``, ``file_path``,
        ``status`` (a :class:`TaskStatus` value), ``priority`` (conveyor's), ``retry_count``,
        ``worker_id`` (always ``None``: conveyor does not say which process ran it),
        ``started_at``, ``completed_at``, ``error_message`` and ``result``."""
        job_id = _job_id(task_id)
        if job_id is None:
            return None
        job = self._open().get(job_id)
        if job is None or job.name != HANDLER:
            return None
        return {
            "task_id": str(job.id),
            "file_path": job.payload["file_path"] if isinstance(job.payload, dict) else None,
            "status": task_status(job).value,
            "priority": job.priority,
            "retry_count": max(job.attempts - 1, 0),
            "worker_id": None,
            "started_at": job.started_at,
            "completed_at": job.finished_at,
            "error_message": error_message(job.error),
            "result": job.result,
        }

    def get_statistics(self) -> dict[str, Any]:
        """``total_tasks``, ``completed_tasks``, ``failed_tasks``, ``retry_tasks`` (waiting to
        run again), ``pending_tasks`` (those included), ``processing_tasks``, ``throughput``
        (tasks finished per second over the last minute) and ``average_processing_time``."""
        queue = self._open()
        stats = queue.stats()
        counts = stats.by_name.get(HANDLER, {})
        pending = counts.get(JobStatus.PENDING, 0) + counts.get(JobStatus.WAITING, 0)
        retrying = sum(
            1
            for job in queue.list(status=JobStatus.PENDING, name=HANDLER, limit=1000)
            if job.attempts > 0
        )
        return {
            "total_tasks": sum(counts.values()),
            "completed_tasks": counts.get(JobStatus.COMPLETED, 0),
            "failed_tasks": counts.get(JobStatus.FAILED, 0),
            "retry_tasks": retrying,
            "pending_tasks": pending,
            "processing_tasks": counts.get(JobStatus.RUNNING, 0),
            "throughput": stats.throughput,
            "average_processing_time": stats.avg_duration or 0.0,
        }

    # --- processing ----------------------------------------------------------------------------
    def start_processing(
        self, progress_callback: Callable[[dict[str, Any]], object] | None = None
    ) -> bool:
        """Start running the queued tasks in ``max_workers`` worker processes; False if it was
        running already. ``progress_callback`` gets :meth:`get_statistics` every
        ``progress_update_interval`` seconds while it runs (on a thread of its own)."""
        with self._lock:
            if self._processing is not None:
                return False
            self._open()
            stack = contextlib.ExitStack()
            stack.enter_context(
                blocking.open_queue(
                    self._db_path, handlers=self._registry, workers=self._workers, **self._options
                )
            )
            self._processing = stack
            self._started_at = time.monotonic()
            self._stop_progress.clear()
        if progress_callback is not None:
            thread = threading.Thread(
                target=self._report_progress, args=(progress_callback,), daemon=True
            )
            thread.start()
            stack.callback(_join_unless_current, thread)
            stack.callback(self._stop_progress.set)
        return True

    def stop_processing(self) -> None:
        """Stop gracefully: running tasks get 10 s to finish, then go back to pending (the
        attempt not counted), to run when processing starts again. May be called from the
        progress callback, which is then not called again."""
        with self._lock:
            stack, self._processing = self._processing, None
        if stack is not None:
            stack.close()

    def close(self) -> None:
        """Stop processing, and close the manager's queue (a later call opens it again)."""
        self.stop_processing()
        with self._opening:
            producer, self._producer, self._queue = self._producer, None, None
        if producer is not None:
            producer.close()

    def __enter__(self) -> QueueManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _report_progress(self, callback: Callable[[dict[str, Any]], object]) -> None:
        while not self._stop_progress.wait(self._interval):
            callback(self.get_statistics())

    def _open(self) -> blocking.BlockingQueue:
        """The manager's producer queue, opened on first use (by one thread: the others wait
        for it)."""
        queue = self._queue
        if queue is not None:
            return queue
        with self._opening:
            if self._queue is None:
                stack = contextlib.ExitStack()
                self._queue = stack.enter_context(
                    blocking.open_queue(
                        self._db_path,
                        handlers=self._registry,
                        workers=0,
                        max_pending=self._options["max_pending"],
                    )
                )
                self._producer = stack
            return self._queue


def _join_unless_current(thread: threading.Thread) -> None:
    """Join ``thread``, unless it is the caller's own (the progress callback stopping the
    processing): a thread cannot wait for itself to end."""
    if thread is not threading.current_thread():
        thread.join()


def _job_id(task_id: str | int) -> int | None:
    """The job id of a task id (``None`` for one that cannot be conveyor's)."""
    try:
        return int(task_id)
    except ValueError:
        return None


_instance: QueueManager | None = None
_instance_lock = threading.Lock()


def get_queue_manager(**options: Any) -> QueueManager:
    """The process-wide :class:`QueueManager`, made with ``options`` on the first call (which
    must give ``processor``); later calls return it and ignore their options. It is closed
    when the interpreter exits (``atexit``), if the program did not close it."""
    global _instance
    with _instance_lock:
        if _instance is None:
            if "processor" not in options:
                raise InvalidArgument(
                    "the first get_queue_manager() call makes the manager: give it processor="
                )
            _instance = QueueManager(**options)
            # Its queue's thread is a daemon: without a close, the interpreter would end it
            # abruptly, running tasks and all.
            atexit.register(_instance.close)
        return _instance
