"""``open_queue()`` and the :class:`Queue` facade: the actors' wiring and the public calls."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from ._actors.dispatcher import Dispatcher
from ._actors.messages import (
    Assignment,
    Cancel,
    Close,
    DispatcherMessage,
    Enqueue,
    InterruptAll,
    NextDue,
    Ping,
    Purge,
    Reply,
    Requeue,
    Stop,
    StoreCommand,
)
from ._actors.store import Listener, Store
from ._actors.timer import Timer
from ._actors.worker import Worker
from ._errors import InvalidArgument, JobNotFound, QueueClosed, WaitTimeout
from ._events import Change
from ._job import (
    JSON,
    MAX_INT,
    Job,
    JobSpec,
    JobStatus,
    check_seconds,
    check_text,
    encode_json,
)
from ._registry import Registry
from ._sqlthread import SqlThread
from ._storage import sqlite as storage
from ._storage.sqlite import NewJob, Synchronous, Writer

T = TypeVar("T")

COMMAND_BUFFER: Final = 1024
"""Commands that may wait for the store before senders are made to wait (back-pressure)."""

READ_THREADS: Final = 4
STATS_WINDOW: Final = 60.0
MAX_LIST_LIMIT: Final = 1000


@attrs.frozen
class Stats:
    """A snapshot of the queue, read from the database.

    ``by_status`` counts every job by status; ``by_name`` does so per handler name. Over the last
    minute: ``throughput`` is finished (completed or failed) jobs per second, ``avg_duration``
    their mean run time in seconds, and ``success_rate`` the completed share of them (``None``
    when none finished). ``oldest_pending_age`` is how long the oldest pending job has existed.
    """

    by_status: dict[JobStatus, int]
    by_name: dict[str, dict[JobStatus, int]]
    throughput: float
    avg_duration: float | None
    success_rate: float | None
    oldest_pending_age: float | None


class _Waiters:
    """The events of callers waiting in :meth:`Queue.wait`, set when their job finishes."""

    def __init__(self) -> None:
        self._events: dict[int, set[anyio.Event]] = {}

    def add(self, job_id: int) -> anyio.Event:
        event = anyio.Event()
        self._events.setdefault(job_id, set()).add(event)
        return event

    def discard(self, job_id: int, event: anyio.Event) -> None:
        events = self._events.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._events[job_id]

    def on_changes(self, changes: Sequence[Change]) -> None:
        if not self._events:
            return
        for change in changes:
            if change.is_finish:
                for event in self._events.pop(change.job_id, ()):
                    event.set()

    def wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()
        self._events.clear()


class _Readers:
    """Read-only connections, used one per call; WAL gives each a consistent snapshot."""

    def __init__(self, path: str, *, in_thread: bool) -> None:
        self._path = path
        self._in_thread = in_thread
        self._idle: list[sqlite3.Connection] = []
        self._limiter = anyio.CapacityLimiter(READ_THREADS)

    async def run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._in_thread:
            return await anyio.to_thread.run_sync(self._call, read, limiter=self._limiter)
        return self._call(read)

    def _call(self, read: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._idle.pop() if self._idle else storage.open_reader(self._path)
        try:
            return read(conn)
        finally:
            self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Queue:
    """An open queue: enqueue jobs, steer them, and read their state.

    Made by :func:`open_queue`, valid inside its ``async with`` block. Every method may be called
    from any task of the event loop that opened it. Calls that change jobs go to the store, the
    single writer, and return once the change is committed; reads use their own connections and
    never wait for the writer.
    """

    def __init__(
        self,
        *,
        registry: Registry,
        clock: Callable[[], float],
        commands: MemoryObjectSendStream[StoreCommand],
        readers: _Readers,
        waiters: _Waiters,
        listeners: list[Listener],
    ) -> None:
        self._registry = registry
        self._listeners = listeners
        self._clock = clock
        self._commands = commands
        self._readers = readers
        self._waiters = waiters
        self._closing = False

    # --- writes ------------------------------------------------------------------------------
    async def enqueue(
        self,
        name: str,
        payload: JSON = None,
        *,
        priority: int = 5,
        delay: float | None = None,
        run_at: float | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store a job for handler ``name`` and return it once it is durable.

        ``priority`` 1..10 (1 runs first; FIFO within a priority). ``delay`` (seconds from now)
        or ``run_at`` (wall-clock seconds), not both, schedule it for later. ``max_attempts`` and
        ``timeout`` default to the handler's. With an ``idempotency_key`` already held by a job,
        that job is returned and nothing is written (the key stays held while its job exists).

        Raises :class:`InvalidArgument` (also a ``ValueError``) for a bad argument,
        :class:`UnknownHandler` for a name not in the registry, :class:`NotJSONSerializable` for a
        payload JSON cannot hold, :class:`QueueFull` beyond ``max_pending``, and
        :class:`QueueClosed` once the queue is closing. Nothing is written when it raises.
        """
        spec = JobSpec(
            name,
            payload,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )
        (job,) = await self._enqueue([spec])
        return job

    async def enqueue_many(self, specs: Iterable[JobSpec]) -> list[Job]:
        """Store every job of ``specs`` in one transaction; return them in the same order.

        All or nothing: if any spec is refused (see :meth:`enqueue`), none is written. Specs
        that share an idempotency key yield one job.
        """
        specs = list(specs)
        for index, spec in enumerate(specs):
            if not isinstance(spec, JobSpec):
                raise InvalidArgument(
                    f"enqueue_many takes conveyor.JobSpec values; item {index} is {spec!r}"
                )
        return await self._enqueue(specs) if specs else []

    async def _enqueue(self, specs: Sequence[JobSpec]) -> list[Job]:
        now = self._clock()
        jobs = [self._new_job(spec, now) for spec in specs]
        reply: Reply[list[Job]] = Reply()
        await self._send(Enqueue(jobs, reply))
        return await reply.get()

    def _new_job(self, spec: JobSpec, now: float) -> NewJob:
        handler = self._registry[spec.name]
        payload_json = encode_json(spec.payload, f"the payload of a {spec.name!r} job")
        if spec.delay is not None:
            run_at = now + spec.delay
        elif spec.run_at is not None:
            run_at = spec.run_at
        else:
            run_at = now
        return NewJob(
            name=spec.name,
            payload_json=payload_json,
            # The job carries the payload as stored (tuples become lists, keys strings...);
            # scalars come back from JSON unchanged, so they skip the decoding.
            payload=spec.payload
            if spec.payload is None or type(spec.payload) in (str, int, bool)
            else json.loads(payload_json),
            priority=spec.priority,
            max_attempts=spec.max_attempts or handler.max_attempts,
            timeout=spec.timeout if spec.timeout is not None else handler.timeout,
            run_at=run_at,
            idempotency_key=spec.idempotency_key,
        )

    async def cancel(self, job_id: int) -> bool:
        """Cancel a job; True if the cancel took effect, False for a finished or unknown job.

        A pending job becomes ``cancelled`` at once and never starts. A running job's handler is
        cancelled (an async handler sees it at its next checkpoint; a sync handler, which runs
        in a thread and cannot be interrupted, runs to its end and its result is discarded); the
        job ends ``cancelled`` either way.
        """
        reply: Reply[bool] = Reply()
        await self._send(Cancel(_job_id(job_id), reply))
        return await reply.get()

    async def requeue(self, job_id: int) -> bool:
        """Move a ``failed`` or ``cancelled`` job back to ``pending``, attempts reset.

        Returns False (and changes nothing) for a job in any other status or an unknown id.
        """
        reply: Reply[bool] = Reply()
        await self._send(Requeue(_job_id(job_id), reply))
        return await reply.get()

    async def purge(self, older_than: float) -> int:
        """Delete finished jobs (completed, failed, cancelled) that finished more than
        ``older_than`` seconds ago; return how many. Their idempotency keys become free."""
        check_seconds("older_than", older_than)
        reply: Reply[int] = Reply()
        await self._send(Purge(older_than, reply))
        return await reply.get()

    async def ping(self) -> None:
        """Return once the store has committed a write: the queue is open and writable."""
        reply: Reply[None] = Reply()
        await self._send(Ping(reply))
        await reply.get()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with the :class:`Change` values of every commit, once durable.

        It runs on the event loop's thread right after the commit, so it must be quick and must
        not block (count, set an event, ``send_nowait`` on a channel). Metrics and dashboards
        use it.
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling a listener given to :meth:`subscribe`."""
        self._listeners.remove(listener)

    async def _send(self, command: StoreCommand) -> None:
        if self._closing:
            raise QueueClosed("the queue is closing or closed and takes no more commands")
        try:
            await self._commands.send(command)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise QueueClosed("the queue is closed and takes no more commands") from None

    # --- reads -------------------------------------------------------------------------------
    async def get(self, job_id: int) -> Job | None:
        """The job with this id as stored now, or ``None`` if there is none."""
        job_id = _job_id(job_id)
        return await self._read(lambda conn: storage.get_job(conn, job_id))

    async def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Wait until the job is finished (completed, failed or cancelled) and return it.

        Returns at once for a job already finished. Event-driven: nothing polls. Raises
        :class:`WaitTimeout` (a ``TimeoutError``) after ``timeout`` seconds, :class:`JobNotFound`
        for an unknown id, and :class:`QueueClosed` if the queue closes first.
        """
        job_id = _job_id(job_id)
        check_seconds("timeout", timeout)
        deadline = anyio.current_time() + (math.inf if timeout is None else timeout)
        while True:
            event = self._waiters.add(job_id)
            try:
                # Read after registering, so that a finish between the two is not missed.
                job = await self.get(job_id)
                if job is None:
                    raise JobNotFound(f"no job has id {job_id}")
                if job.status.is_terminal:
                    return job
                with anyio.move_on_at(deadline):
                    await event.wait()
                if not event.is_set():
                    raise WaitTimeout(f"job {job_id} did not finish within {timeout:g} s")
                if self._closing:
                    raise QueueClosed(f"the queue closed while waiting for job {job_id}")
            finally:
                self._waiters.discard(job_id, event)

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        name: str | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Job]:
        """Jobs newest first, optionally of one ``status`` and handler ``name``.

        Pages: pass the last id of a page as ``before`` to get the next one. ``limit`` is
        1..1000.
        """
        wanted = _status(status)
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise InvalidArgument(f"limit must be an int within 1..{MAX_LIST_LIMIT}, not {limit!r}")
        if name is not None:
            if not isinstance(name, str):
                raise InvalidArgument(f"name must be a str, not {name!r}")
            check_text("name", name)
        cursor = None if before is None else _job_id(before)
        return await self._read(
            lambda conn: storage.list_jobs(
                conn, status=wanted, name=name, limit=limit, before=cursor
            )
        )

    async def stats(self) -> Stats:
        """Counts by status and by handler name, and the last minute's throughput."""
        now = self._clock()
        counts = await self._read(lambda conn: storage.read_counts(conn, now - STATS_WINDOW))
        completed, completed_avg = counts.recent.get(JobStatus.COMPLETED, (0, None))
        failed, failed_avg = counts.recent.get(JobStatus.FAILED, (0, None))
        finished = completed + failed
        total_duration = completed * (completed_avg or 0.0) + failed * (failed_avg or 0.0)
        oldest = counts.oldest_pending_created_at
        return Stats(
            by_status=counts.by_status(),
            by_name=counts.by_name(),
            throughput=finished / STATS_WINDOW,
            avg_duration=total_duration / finished if finished else None,
            success_rate=completed / finished if finished else None,
            oldest_pending_age=None if oldest is None else max(now - oldest, 0.0),
        )

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._closing:
            raise QueueClosed("the queue is closing or closed")
        return await self._readers.run(read)

    # --- shutdown ----------------------------------------------------------------------------
    async def _shutdown(
        self, dispatcher: MemoryObjectSendStream[DispatcherMessage], grace: float
    ) -> None:
        """Claim nothing more, give running jobs ``grace`` seconds, interrupt the rest, stop."""
        self._closing = True
        self._waiters.wake_all()
        idle = anyio.Event()
        dispatcher.send_nowait(Close(idle))
        with anyio.move_on_after(grace):
            await idle.wait()
        if not idle.is_set():
            dispatcher.send_nowait(InterruptAll())
            await idle.wait()
        reply: Reply[None] = Reply()
        await self._commands.send(Stop(reply))
        await reply.get()


def _job_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"a job id is an int, not {value!r}")
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise InvalidArgument(f"a job id is a 64-bit int, and {value} is not")
    return value


def _status(value: JobStatus | str | None) -> JobStatus | None:
    if value is None or isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgument(f"status must be one of {known}, not {value!r}") from None


async def _run_inline(function: Callable[[], T]) -> T:
    return function()


async def _shielded(
    run_sql: Callable[[Callable[[], Any]], Awaitable[Any]], function: Callable[[], object]
) -> None:
    with anyio.CancelScope(shield=True):
        await run_sql(function)


def _check_open_arguments(
    handlers: object,
    workers: object,
    shutdown_grace: object,
    max_pending: object,
    synchronous: object,
    clock: object,
) -> None:
    if not isinstance(handlers, Registry):
        raise InvalidArgument(f"handlers must be a conveyor.Registry, not {handlers!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidArgument(f"workers must be an int >= 1, not {workers!r}")
    check_seconds("shutdown_grace", shutdown_grace)  # type: ignore[arg-type]
    if max_pending is not None and (
        isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1
    ):
        raise InvalidArgument(f"max_pending must be an int >= 1 or None, not {max_pending!r}")
    if synchronous not in ("normal", "full"):
        raise InvalidArgument(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
    if clock is not None and not callable(clock):
        raise InvalidArgument(
            f"clock must be a function returning wall-clock seconds, not {clock!r}"
        )


@contextlib.asynccontextmanager
async def open_queue(
    path: str | os.PathLike[str] = "conveyor.db",
    *,
    handlers: Registry,
    workers: int = 4,
    clock: Callable[[], float] | None = None,
    shutdown_grace: float = 10.0,
    max_pending: int | None = None,
    synchronous: Synchronous = "normal",
    sql_thread: bool = True,
) -> AsyncIterator[Queue]:
    """Open the queue stored in the SQLite file ``path`` (created if missing) and run it.

    ``handlers`` is the :class:`Registry` of the jobs this process runs; ``workers`` is how
    many jobs run at once. ``clock`` returns wall-clock seconds (default :func:`time.time`);
    tests pass one driven by a mock clock. ``max_pending`` bounds pending jobs
    (:class:`QueueFull` beyond it). ``synchronous`` is SQLite's durability level: ``"normal"``
    (default) loses nothing committed when the process crashes, but a power loss or OS crash
    may lose the last commits; ``"full"`` syncs every commit to disk, so an acknowledged job
    survives power loss too, at the cost of one fsync per group commit. ``sql_thread=False``
    runs SQL on the event loop's thread instead of a dedicated one: it blocks the loop during
    each write and is meant for deterministic tests under a mock clock.

    On entry, jobs left ``running`` by a process that died go back to ``pending`` (the
    interrupted attempt counts; a job with no attempts left becomes ``failed``). Leaving the
    block shuts down gracefully: nothing new is claimed, running jobs get ``shutdown_grace``
    seconds to finish, then they are cancelled and return to ``pending`` without losing an
    attempt. If the block is cancelled from outside, the queue stops at once, like a crash:
    running jobs are recovered the next time the file is opened.

    Raises :class:`DatabaseInUse` if another queue holds the file, :class:`SchemaTooNew` or
    :class:`DatabaseError` if the file cannot be used.
    """
    _check_open_arguments(handlers, workers, shutdown_grace, max_pending, synchronous, clock)
    wall_clock = clock or time.time
    path = os.fspath(path)
    if not path or path == ":memory:" or path.startswith("file:"):
        raise InvalidArgument(
            f"path must name a database file, not {path!r}: jobs are kept in a file so that "
            "they outlive the process"
        )
    async with contextlib.AsyncExitStack() as stack:
        run_sql: Callable[[Callable[[], Any]], Awaitable[Any]] = _run_inline
        if sql_thread:
            thread = SqlThread()
            stack.callback(thread.close)
            run_sql = thread.run
        # Shielded, so that a writer opened while the caller is being cancelled is still
        # registered to be closed (and its file lock released).
        with anyio.CancelScope(shield=True):
            writer: Writer = await run_sql(lambda: Writer(path, synchronous=synchronous))
            stack.push_async_callback(_shielded, run_sql, writer.close)
        readers = _Readers(path, in_thread=sql_thread)
        stack.callback(readers.close)
        await run_sql(lambda: writer.recover_running(wall_clock()))
        async with _running_actors(
            writer,
            handlers,
            workers=workers,
            clock=wall_clock,
            max_pending=max_pending,
            run_sql=run_sql,
            readers=readers,
            shutdown_grace=shutdown_grace,
        ) as queue:
            yield queue


@contextlib.asynccontextmanager
async def _running_actors(
    writer: Writer,
    registry: Registry,
    *,
    workers: int,
    clock: Callable[[], float],
    max_pending: int | None,
    run_sql: Callable[[Callable[[], Any]], Awaitable[Any]],
    readers: _Readers,
    shutdown_grace: float,
) -> AsyncIterator[Queue]:
    # Only the store's inbox is bounded (back-pressure on callers). The store never waits to
    # send, so the channels it sends on are unbounded; what they carry is bounded by the
    # number of worker slots and claims in flight.
    store_tx, store_rx = anyio.create_memory_object_stream[StoreCommand](COMMAND_BUFFER)
    dispatch_tx, dispatch_rx = anyio.create_memory_object_stream[DispatcherMessage](math.inf)
    timer_tx, timer_rx = anyio.create_memory_object_stream[NextDue](math.inf)
    assign_tx, assign_rx = anyio.create_memory_object_stream[Assignment](math.inf)
    waiters = _Waiters()
    listeners: list[Listener] = [waiters.on_changes]
    store = Store(
        writer,
        run_sql=run_sql,
        clock=clock,
        commands=store_rx,
        dispatcher=dispatch_tx,
        timer=timer_tx,
        listeners=listeners,
        max_pending=max_pending,
    )
    queue = Queue(
        registry=registry,
        clock=clock,
        commands=store_tx,
        readers=readers,
        waiters=waiters,
        listeners=listeners,
    )
    try:
        with store_tx, dispatch_tx, timer_tx, assign_tx:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.run)
                tg.start_soon(
                    Dispatcher(
                        slots=workers, inbox=dispatch_rx, store=store_tx, workers=assign_tx
                    ).run
                )
                tg.start_soon(Timer(clock=clock, inbox=timer_rx, dispatcher=dispatch_tx).run)
                for _ in range(workers):
                    worker = Worker(
                        registry=registry,
                        assignments=assign_rx.clone(),
                        store=store_tx,
                        dispatcher=dispatch_tx,
                    )
                    tg.start_soon(worker.run)
                assign_rx.close()
                try:
                    yield queue
                except anyio.get_cancelled_exc_class():
                    # Cancelled from outside (or an actor failed): stop at once, like a crash.
                    queue._closing = True
                    raise
                except BaseException:
                    await queue._shutdown(dispatch_tx, shutdown_grace)
                    raise
                else:
                    await queue._shutdown(dispatch_tx, shutdown_grace)
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The task group wraps whatever left it; callers should see the error itself.
        if len(group.exceptions) != 1:
            raise
        error = group.exceptions[0]
        chained = (error.__cause__, error.__context__, error.__suppress_context__)
        try:
            raise error
        finally:
            error.__cause__, error.__context__, error.__suppress_context__ = chained
