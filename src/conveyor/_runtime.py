"""``open_queue()``: the channels, the actors (store, worker pool, timer), their start and their
shutdown; and the :class:`Runtime` through which the :class:`Queue` facade reaches them."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import anyio
import attrs

from ._actors.mailbox import Mailbox
from ._actors.messages import (
    Heartbeat,
    InterruptAll,
    Look,
    NextDue,
    PoolMessage,
    Reply,
    Stop,
    StoreCommand,
)
from ._actors.pool import Pool
from ._actors.store import Listener, Store
from ._actors.timer import Timer
from ._doorbell import CANCEL, CHANGED, READY, Doorbell, DoorbellLike
from ._errors import (
    DatabaseError,
    DatabaseUnavailable,
    InvalidArgument,
    QueueClosed,
    UnknownHandler,
)
from ._events import Change
from ._job import Event, JobStatus, check_seconds
from ._memory import MemoryGuard, check_high_water, memory_in_use
from ._queue import Queue
from ._registry import DEFAULT_MAX_ATTEMPTS, Registry
from ._retention import keep_for
from ._sqlthread import SqlThread
from ._storage import sqlite as storage
from ._storage.sqlite import HandlerDefaults, Synchronous, Writer

T = TypeVar("T")

logger = logging.getLogger("conveyor")

COMMAND_BUFFER: Final = 1024
"""Commands that may wait for the store before senders are made to wait (back-pressure)."""


class Waiters:
    """The events of callers waiting in :meth:`Queue.wait`, set when their job finishes."""

    def __init__(self) -> None:
        self._waiting: dict[int, list[Callable[[Change | None], None]]] = {}

    def add(self, job_id: int, wake: Callable[[Change | None], None]) -> None:
        """Call ``wake`` with the change that finishes job ``job_id`` (``None``: the queue
        is closing)."""
        self._waiting.setdefault(job_id, []).append(wake)

    def discard(self, job_id: int, wake: Callable[[Change | None], None]) -> None:
        wakes = self._waiting.get(job_id)
        if wakes is not None and wake in wakes:
            wakes.remove(wake)
            if not wakes:
                del self._waiting[job_id]

    def on_changes(self, changes: Sequence[Change]) -> None:
        if not self._waiting:
            return
        for change in changes:
            if change.is_finish:
                for wake in self._waiting.pop(change.job_id, ()):
                    wake(change)

    def wake_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for wakes in waiting.values():
            for wake in wakes:
                wake(None)

    def ids(self) -> set[int]:
        return set(self._waiting)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._waiting

    def __bool__(self) -> bool:
        return bool(self._waiting)


_EVENT_OF: Final = {
    JobStatus.WAITING: Event.BLOCKED,
    JobStatus.PENDING: Event.ENQUEUED,
    JobStatus.RUNNING: Event.STARTED,
    JobStatus.COMPLETED: Event.COMPLETED,
    JobStatus.FAILED: Event.FAILED,
    JobStatus.CANCELLED: Event.CANCELLED,
}
"""The event a change seen from another process is told as: only its status is known."""


class Following:
    """The jobs that callers of this process follow (waits, and ``progress``), and what
    other processes did to them.

    This process's own commits reach followers as they happen. When another process rings
    that jobs changed, :meth:`look` reads the followed jobs' statuses and tells followers of
    each one that differs from the last told, as a :class:`Change` that carries only the
    status (a wait then reads the job).
    """

    def __init__(self, waiters: Waiters) -> None:
        self.followers: list[Listener] = [waiters.on_changes]
        self._waiters = waiters
        self._counts: Counter[int] = Counter()
        self._told: dict[int, JobStatus] = {}

    def follow(self, job_ids: Iterable[int]) -> None:
        """Follow ``job_ids`` from now on: what was told of them before is forgotten (they
        may have been requeued since, and end as they ended before)."""
        job_ids = list(job_ids)
        self.forget(job_ids)
        self._counts.update(job_ids)

    def forget(self, job_ids: Iterable[int]) -> None:
        for job_id in job_ids:
            self._told.pop(job_id, None)

    def unfollow(self, job_ids: Iterable[int]) -> None:
        self._counts.subtract(job_ids)
        for job_id in [job_id for job_id, count in self._counts.items() if count <= 0]:
            del self._counts[job_id]

    def on_changes(self, changes: Sequence[Change]) -> None:
        """Note the statuses this process's own commits told of followed jobs."""
        if not self._counts and not self._waiters:
            return
        for change in changes:
            if change.job_id in self._counts or change.job_id in self._waiters:
                self._told[change.job_id] = change.status

    def followed(self) -> list[int]:
        return sorted(self._waiters.ids() | set(self._counts))

    def tell(self, statuses: dict[int, JobStatus]) -> None:
        """Tell followers of the jobs of ``statuses`` whose status differs from the last
        told."""
        changes = [
            Change(_EVENT_OF[status], job_id, "", status)
            for job_id, status in statuses.items()
            if self._told.get(job_id) is not status
        ]
        self._told = {job_id: self._told[job_id] for job_id in statuses if job_id in self._told}
        self._told.update(statuses)
        if changes:
            for follower in list(self.followers):
                follower(changes)


class Readers:
    """The read connection, used by one dedicated read thread (or inline, in tests); WAL gives
    each read a consistent snapshot without waiting for the writer (on PostgreSQL, a
    ``REPEATABLE READ`` snapshot)."""

    def __init__(
        self,
        opener: Callable[[], Any],
        *,
        in_thread: bool,
        lost: tuple[type[BaseException], ...] = (),
    ) -> None:
        """``opener`` makes the connection; a read failing with one of ``lost`` (a dropped
        server connection) connects anew and is tried once more."""
        self._opener = opener
        self._lost = lost
        self._thread = SqlThread("conveyor-read") if in_thread else None
        self._conn: Any = None

    async def run(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            return self._call(read)
        return await self._thread.run(lambda: self._call(read))

    def _call(self, read: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._opener()
        try:
            return read(self._conn)
        except self._lost as exc:
            # A server's connection was dropped (restart, network): reads are safe to repeat.
            logger.info("conveyor's read connection was lost (%s); connecting again", exc)
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
        self._conn = self._opener()
        try:
            return read(self._conn)
        except self._lost as exc:
            raise DatabaseUnavailable(f"cannot read the queue: {exc}".strip()) from None

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()
        if self._conn is not None:
            self._conn.close()


class Runtime:
    """What the facade needs of the running queue: the store's inbox, the readers, the waiters
    and the listeners; and whether the queue is closing."""

    def __init__(
        self,
        *,
        registry: Registry,
        clock: Callable[[], float],
        commands: Mailbox[StoreCommand],
        readers: Readers,
        known_handlers: Iterable[str] = (),
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.waiters = Waiters()
        self.following = Following(self.waiters)
        self.listeners: list[Listener] = [self.waiters.on_changes, self.following.on_changes]
        self._known = frozenset(known_handlers)
        self._declared: dict[str, HandlerDefaults] = {}
        self.memory = MemoryGuard(None)
        """Whether memory is short, as the worker pool last read it."""
        self.wait_synced: Callable[[], Awaitable[None]] = _synced_already
        """Returns once what the store committed so far is on disk (the store's)."""
        self.closers: set[Callable[[], object]] = set()
        """Called once the queue starts closing: what follows jobs stops following them."""
        self.closing = False
        self._commands = commands
        self._readers = readers

    async def send(self, command: StoreCommand) -> None:
        """Hand ``command`` to the store; :class:`QueueClosed` once the queue is closing."""
        if self.closing:
            raise QueueClosed("the queue is closing or closed and takes no more commands")
        try:
            # A caller already cancelled, or past its deadline, sends nothing (a deadline
            # that passed during its own work is noticed only at a checkpoint). Otherwise no
            # scheduling round before the send (``send`` begins with one): the caller's wait
            # for the store's answer comes next, and that is its checkpoint.
            if anyio.current_effective_deadline() <= anyio.current_time():
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                self._commands.send_nowait(command)
            except anyio.WouldBlock:
                await self._commands.send(command)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise QueueClosed("the queue is closed and takes no more commands") from None

    async def renew_lease(self) -> None:
        """Have the store renew this process's lease, also while the queue shuts down (its
        running jobs are still its own until they stop); :class:`QueueClosed` once the store
        has stopped."""
        try:
            await self._commands.send(Heartbeat())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise QueueClosed("the queue is closed and takes no more commands") from None

    async def read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read``'s value on a read connection, once what it saw of this process's commits
        is on disk (with ``synchronous="full"``, a commit is seen before it is synced)."""
        if self.closing:
            raise QueueClosed("the queue is closing or closed")
        value = await self._readers.run(read)
        await self.wait_synced()
        return value

    async def learn_handlers(self, names: Iterable[str]) -> None:
        """Make sure each of ``names`` is a handler this queue knows (its own, one that a
        process declared in the file, or one of ``known_handlers``): the file's declarations
        are read again when one is not known yet (a worker may have declared it since).
        :class:`UnknownHandler` naming the known ones otherwise. (A name known only from
        ``known_handlers`` takes the defaults a worker declares for it from the next
        heartbeat's reading, not from a read per enqueue.)"""
        if all(self._knows(name) for name in names):
            return
        await self.refresh_declared()
        unknown = {name for name in names if not self._knows(name)}
        if unknown:
            known = ", ".join(sorted({*self.registry, *self._declared, *self._known})) or "none"
            raise UnknownHandler(
                f"no handler named {min(unknown)!r} is registered (registered: {known}; "
                "besides this queue's own, those that worker processes declared in the file "
                "and its known_handlers count)"
            )

    def _knows(self, name: str) -> bool:
        return name in self.registry or name in self._declared or name in self._known

    async def refresh_declared(self) -> None:
        """Read again the handlers (and their defaults) that processes declared in the file."""
        self._declared = await self.read(storage.declared_handlers)

    def defaults(self, name: str) -> HandlerDefaults:
        """The ``(max_attempts, timeout)`` a job of handler ``name`` gets when its enqueue
        does not say: its handler's here, else as a worker process last declared them, else
        the library's. :class:`UnknownHandler` if the name is not known (see
        :meth:`learn_handlers`)."""
        if name in self.registry or not self._knows(name):
            handler = self.registry[name]
            return handler.max_attempts, handler.timeout
        return self._declared.get(name, (DEFAULT_MAX_ATTEMPTS, None))

    async def look_at_followed(self) -> None:
        """Another process changed jobs: tell followers of those they follow."""
        ids = self.following.followed()
        if ids and not self.closing:
            statuses = await self._readers.run(lambda c: storage.statuses_of(c, ids))
            await self.wait_synced()
            self.following.tell(statuses)

    async def shutdown(
        self, pool: Pool, inbox: Mailbox[PoolMessage], store: Store, grace: float
    ) -> None:
        """Start nothing more, give running jobs ``grace`` seconds, interrupt the rest, stop.

        If writes keep failing, the outcomes of the last attempts are given up after
        :data:`FAULT_PATIENCE` seconds: those jobs stay ``running`` in the file and are
        recovered when it is next opened.
        """
        self.closing = True
        self.waiters.wake_all()
        for close in list(self.closers):
            close()
        idle = anyio.Event()
        try:
            pool.close(idle)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return  # an actor has failed and the queue is stopping: its error is what counts
        with anyio.move_on_after(grace):
            await idle.wait()
        if not idle.is_set():
            try:
                inbox.send_nowait(InterruptAll())
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return
            await _until_idle_or_stuck(idle, store)
        reply: Reply[None] = Reply()
        try:
            await self._commands.send(Stop(reply))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return
        await reply.get()


FAULT_PATIENCE: Final = 10.0
"""Seconds shutdown waits for outcomes to be written while every write fails."""


async def _until_idle_or_stuck(idle: anyio.Event, store: Store) -> None:
    """Wait until ``idle`` is set, or until writes have failed for :data:`FAULT_PATIENCE`."""
    while not idle.is_set():
        episode = store.fault
        if episode is None:
            async with anyio.create_task_group() as tg:

                async def wake_on(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(wake_on, idle)
                tg.start_soon(wake_on, store.faulted)
            continue
        with anyio.move_on_at(episode.started + FAULT_PATIENCE):
            await idle.wait()
        if not idle.is_set() and store.fault is episode:
            return


async def _beat(runtime: Runtime, heartbeat: float) -> None:
    """Have the store renew the lease every ``heartbeat`` seconds until it stops (through the
    shutdown's grace too: others must not take over jobs still finishing here); and, until the
    queue starts closing, look at the followed jobs, in case a ring about them was lost, and
    at the handlers declared in the file."""
    while True:
        await anyio.sleep(heartbeat)
        try:
            await runtime.renew_lease()
        except QueueClosed:
            return
        if runtime.closing:
            continue
        try:
            await _read_others(runtime, ring=False)
        except QueueClosed:
            continue  # closing: the lease is renewed until the store stops


async def _read_others(runtime: Runtime, *, ring: bool) -> None:
    """Read what other processes changed: the followed jobs (after a ring, or a heartbeat),
    and the declared handlers (a heartbeat). A read that fails is logged and tried again
    next time: the store reports what a database fault means."""
    try:
        await runtime.look_at_followed()
        if not ring:
            await runtime.refresh_declared()
    except QueueClosed:
        raise
    except Exception as exc:
        logger.info("conveyor could not read what other processes changed: %r", exc)


async def _answer_rings(runtime: Runtime, doorbell: DoorbellLike) -> None:
    """Act on what other processes ring: claim or cancel through the store, and tell
    followers of changed jobs. Rings that arrive meanwhile are merged into one answer."""
    rung: set[str] = set()
    arrived = anyio.Event()

    def on_ring(kinds: set[str]) -> None:
        nonlocal arrived
        rung.update(kinds)
        arrived.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(doorbell.listen, on_ring)
        while True:
            await arrived.wait()
            arrived = anyio.Event()
            kinds = set(rung)
            rung.clear()
            try:
                if READY in kinds or CANCEL in kinds:
                    await runtime.send(Look(READY in kinds, CANCEL in kinds))
                if CHANGED in kinds:
                    await _read_others(runtime, ring=True)
            except QueueClosed:
                tg.cancel_scope.cancel()
                return


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
    heartbeat: object,
) -> None:
    if handlers is not None and not isinstance(handlers, Registry):
        raise InvalidArgument(f"handlers must be a conveyor.Registry or None, not {handlers!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgument(f"workers must be an int >= 0, not {workers!r}")
    check_seconds("heartbeat", heartbeat, positive=True)  # type: ignore[arg-type]
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
    handlers: Registry | None = None,
    workers: int = 4,
    known_handlers: Iterable[str] = (),
    heartbeat: float = 2.0,
    clock: Callable[[], float] | None = None,
    shutdown_grace: float = 10.0,
    max_pending: int | None = None,
    synchronous: Synchronous = "normal",
    sql_thread: bool = True,
    memory_high_water: float | None = 0.85,
    memory_reader: Callable[[], float] | None = None,
    retention: float | None = None,
) -> AsyncIterator[Queue]:
    """Open the queue stored in the SQLite file ``path`` (created if missing) and run it.

    ``memory_high_water``: while this fraction of the machine's memory or more is in use, the
    queue starts no job beyond one running at a time (``None``: no such limit);
    ``memory_reader`` returns the fraction in use (default: psutil's reading).

    ``handlers`` is the :class:`Registry` of the jobs this process runs; ``workers`` is how
    many jobs run at once. Without handlers (or with ``workers=0``) the queue is a
    *producer*: it enqueues, cancels, requeues, reads and waits, and runs nothing; it checks
    handler names against those that worker processes declared in the file, and
    ``known_handlers``.

    Any number of processes may open one file; each with handlers claims only the jobs of
    its own handlers. Each registers as an *owner* and renews its lease every ``heartbeat``
    seconds: the running jobs of a process that died (found at once by the lock it held) or
    stopped renewing for two heartbeats are taken over by another process and return to
    ``pending`` (the attempt counts); an outcome from an owner whose jobs were taken over is
    refused. ``clock`` returns wall-clock seconds (default :func:`time.time`);
    tests pass one driven by a mock clock. ``max_pending`` bounds pending jobs
    (:class:`QueueFull` beyond it). ``synchronous`` is SQLite's durability level: ``"normal"``
    (default) loses nothing committed when the process crashes, but a power loss or OS crash
    may lose the last commits; ``"full"`` syncs every commit to disk, so an acknowledged job
    survives power loss too, at the cost of one fsync per group commit. ``sql_thread=False``
    runs SQL on the event loop's thread instead of dedicated ones: it blocks the loop during
    each write and is meant for deterministic tests under a mock clock.

    On entry, jobs left ``running`` by a process that died go back to ``pending`` (the
    interrupted attempt counts; a job with no attempts left becomes ``failed``). Leaving the
    block shuts down gracefully: nothing new is started, running jobs get ``shutdown_grace``
    seconds to finish, then they are cancelled and return to ``pending`` without losing an
    attempt. If the block is cancelled from outside, the queue stops at once, like a crash:
    running jobs are recovered the next time the file is opened.

    ``retention``: seconds finished jobs (completed, failed, cancelled) are kept. While the
    queue is open it purges, in the background, those that finished longer ago than that:
    when it opens, then every tenth of ``retention`` (at most every minute, at least a
    second apart), in batches of at most 1,000 jobs per write transaction so that the purge
    never holds the writer for long. As with :meth:`Queue.purge`, the idempotency keys of
    purged jobs are released (a later enqueue with such a key creates a new job), and
    :meth:`Queue.get` of a purged job returns ``None``. Any process may pass it
    (one is enough; several do no harm). ``None`` (default) keeps finished jobs until
    :meth:`Queue.purge` deletes them. A value that is not a finite number of seconds > 0
    raises :class:`InvalidArgument`.

    Raises :class:`DatabaseInUse` if the file is on a network file system or an older
    conveyor holds it, :class:`SchemaTooNew` or
    :class:`DatabaseError` if the file cannot be used.
    """
    _check_open_arguments(
        handlers, workers, shutdown_grace, max_pending, synchronous, clock, heartbeat
    )
    check_seconds("retention", retention, positive=True)
    known = _known_handlers(known_handlers)
    registry = handlers if handlers is not None else Registry()
    runs = registry if workers > 0 else Registry()
    memory = MemoryGuard(check_high_water(memory_high_water), memory_reader or memory_in_use)
    wall_clock = clock or time.time
    path = os.fspath(path)
    database = _database(path, synchronous)
    async with contextlib.AsyncExitStack() as stack:
        run_sql: Callable[[Callable[[], Any]], Awaitable[Any]] = _run_inline
        if sql_thread:
            thread = SqlThread("conveyor-sql")
            stack.callback(thread.close)
            run_sql = thread.run
        # Shielded, so that a writer opened while the caller is being cancelled is still
        # registered to be closed (and its file lock released).
        with anyio.CancelScope(shield=True):
            writer: Writer = await run_sql(database.writer)
            stack.push_async_callback(_shielded, run_sql, writer.close)
        run_sync = run_sql
        if sql_thread and writer.syncs_after_commit:
            sync_thread = SqlThread("conveyor-sync")
            stack.callback(sync_thread.close)
            run_sync = sync_thread.run
        readers = Readers(database.reader, in_thread=sql_thread, lost=database.lost)
        stack.callback(readers.close)
        doorbell = database.doorbell(writer)
        stack.callback(doorbell.close)
        owned = {name: (runs[name].max_attempts, runs[name].timeout) for name in runs}
        await run_sql(lambda: _register(writer, owned, doorbell, wall_clock(), 2 * heartbeat))
        async with _running_actors(
            writer,
            registry,
            known_handlers=known,
            doorbell=doorbell,
            heartbeat=heartbeat,
            workers=workers,
            clock=wall_clock,
            max_pending=max_pending,
            run_sql=run_sql,
            run_sync=run_sync,
            inline_small=sql_thread and database.inline_small,
            readers=readers,
            shutdown_grace=shutdown_grace,
            memory=memory,
            retention=retention,
        ) as queue:
            yield queue


@attrs.frozen
class _Database:
    """How to open the database a queue lives in: its writer, a reader, and the doorbell
    that hears the other processes; and whether small batches may run on the loop."""

    writer: Callable[[], Writer]
    reader: Callable[[], Any]
    doorbell: Callable[[Writer], DoorbellLike]
    inline_small: bool
    lost: tuple[type[BaseException], ...] = ()
    """Errors of a dropped connection, after which a read connects anew."""


def _database(path: str, synchronous: Synchronous) -> _Database:
    """The SQLite file ``path``, or the PostgreSQL database ``path`` names by URL."""
    if path.startswith(("postgresql://", "postgres://")):
        try:
            from ._storage import postgres
        except ImportError:
            raise InvalidArgument(
                f"{path.split('@')[-1]!r} is a PostgreSQL database, and conveyor needs psycopg "
                "to reach it: pip install 'conveyor[postgres]'"
            ) from None
        target = postgres.parse_target(path)
        return _Database(
            writer=lambda: postgres.PgWriter(target),
            reader=lambda: postgres.open_reader(target),
            # The server's round trips would hold the loop: every batch goes to the thread.
            doorbell=lambda writer: postgres.PgDoorbell(target, lambda: writer.owner),
            inline_small=False,
            lost=postgres.CONNECTION_LOST,
        )
    if not path or path == ":memory:" or path.startswith("file:"):
        raise InvalidArgument(
            f"path must name a database file or a postgresql:// URL, not {path!r}: jobs are "
            "kept in a database so that they outlive the process"
        )
    return _Database(
        writer=lambda: Writer(path, synchronous=synchronous),
        reader=lambda: storage.open_reader(path),
        doorbell=lambda writer: Doorbell(),
        inline_small=True,
    )


async def _synced_already() -> None:
    """Nothing to wait for: the queue's commits are on disk when they return."""


def _known_handlers(names: object) -> frozenset[str]:
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise InvalidArgument(f"known_handlers must be handler names, not {names!r}")
    known = frozenset(names)
    for name in known:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"known_handlers must hold handler names, not {name!r}")
    return known


def _register(
    writer: Writer,
    handlers: dict[str, HandlerDefaults],
    doorbell: DoorbellLike,
    now: float,
    lease: float,
) -> None:
    """Register this process as an owner, and take over the jobs of owners that are gone."""
    try:
        with writer.transaction():
            writer.register(now, handlers, doorbell.name, lease)
            writer.recover_running(now)
    except writer.errors as exc:
        fault = writer.classify(exc)
        raise DatabaseError(f"{writer.path}: {exc}" if fault is None else fault.what) from None


@contextlib.asynccontextmanager
async def _running_actors(
    writer: Writer,
    registry: Registry,
    *,
    known_handlers: frozenset[str],
    doorbell: DoorbellLike,
    heartbeat: float,
    workers: int,
    clock: Callable[[], float],
    max_pending: int | None,
    run_sql: Callable[[Callable[[], Any]], Awaitable[Any]],
    run_sync: Callable[[Callable[[], Any]], Awaitable[Any]],
    inline_small: bool,
    readers: Readers,
    shutdown_grace: float,
    memory: MemoryGuard,
    retention: float | None = None,
) -> AsyncIterator[Queue]:
    # Only the store's inbox is bounded (back-pressure on callers). The store never waits to
    # send, so the inboxes it sends to are unbounded; what they carry is bounded by the
    # number of worker slots and reports in flight.
    commands = Mailbox[StoreCommand](COMMAND_BUFFER)
    pool_inbox = Mailbox[PoolMessage]()
    timer_tx, timer_rx = anyio.create_memory_object_stream[NextDue](math.inf)
    runtime = Runtime(
        registry=registry,
        clock=clock,
        commands=commands,
        readers=readers,
        known_handlers=known_handlers,
    )
    runtime.memory = memory
    pool = Pool(
        registry=registry,
        slots=workers,
        inbox=pool_inbox,
        store=commands,
        paused=lambda: writer.paused,
        memory=memory,
    )
    store = Store(
        writer,
        run_sql=run_sql,
        run_sync=run_sync,
        clock=clock,
        commands=commands,
        hear=pool.hear,
        timer=timer_tx,
        listeners=runtime.listeners,
        max_pending=max_pending,
        inline_small=inline_small,
        limits=registry.limits(),
        doorbell=doorbell,
    )
    runtime.wait_synced = store.wait_synced
    queue = Queue(runtime)
    # What workers declared, for the names and defaults of the jobs this queue enqueues.
    await runtime.refresh_declared()
    try:
        with timer_tx:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.run)
                if writer.syncs_after_commit:
                    tg.start_soon(store.sync_commits)
                tg.start_soon(pool.run)
                tg.start_soon(Timer(clock=clock, inbox=timer_rx, store=commands).run)
                tg.start_soon(_beat, runtime, heartbeat)
                tg.start_soon(_answer_rings, runtime, doorbell)
                if retention is not None:
                    tg.start_soon(keep_for, runtime, retention)
                try:
                    yield queue
                except anyio.get_cancelled_exc_class():
                    # Cancelled from outside (or an actor failed): stop at once, like a crash.
                    runtime.closing = True
                    raise
                except BaseException:
                    await runtime.shutdown(pool, pool_inbox, store, shutdown_grace)
                    raise
                else:
                    await runtime.shutdown(pool, pool_inbox, store, shutdown_grace)
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
