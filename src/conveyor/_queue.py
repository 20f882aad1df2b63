"""The :class:`Queue` facade: validation, then a command to the store or a read.

It holds no state of its own: :class:`conveyor._runtime.Runtime` owns the channels, the readers
and the waiters, and :func:`conveyor.open_queue` (in ``_runtime.py``) builds both.
"""

from __future__ import annotations

import collections
import datetime
import math
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import attrs

from ._actors.messages import (
    Cancel,
    CancelQueued,
    DropSchedule,
    Enqueue,
    Ping,
    Purge,
    Reply,
    Requeue,
    RequeueFailed,
    SetPaused,
    SetSchedule,
)
from ._actors.store import Listener
from ._errors import ConveyorError, InvalidArgument, JobNotFound, QueueClosed, WaitTimeout
from ._events import Change
from ._job import (
    JSON,
    MAX_INT,
    TERMINAL,
    Job,
    JobSpec,
    JobStatus,
    check_key,
    check_max_attempts,
    check_seconds,
    check_text,
    encode_json,
)
from ._schedule import CATCH_UPS, Cadence, CatchUp, Schedule
from ._storage import sqlite as storage
from ._storage.sqlite import HandlerDefaults, NewJob
from ._tracing import current_context as current_trace_context
from ._workflow import Workflow

if TYPE_CHECKING:
    from ._runtime import Runtime

T = TypeVar("T")

STATS_WINDOW: Final = 60.0
MAX_LIST_LIMIT: Final = 1000


@attrs.frozen
class WorkflowGraph:
    """A job's workflow as stored: ``jobs`` by id (each one's ``after`` gives the edges), and
    whether it was ``truncated`` at the limit asked for."""

    jobs: list[Job]
    truncated: bool


@attrs.frozen
class BatchProgress:
    """Where a batch of jobs stands: how many there are and how many are in each status
    (``pending`` counts the jobs waiting for others too)."""

    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int

    @property
    def finished(self) -> int:
        return self.completed + self.failed + self.cancelled

    @classmethod
    def of(cls, statuses: Iterable[JobStatus]) -> BatchProgress:
        counts = collections.Counter(statuses)
        return cls(
            total=sum(counts.values()),
            pending=counts[JobStatus.PENDING] + counts[JobStatus.WAITING],
            running=counts[JobStatus.RUNNING],
            completed=counts[JobStatus.COMPLETED],
            failed=counts[JobStatus.FAILED],
            cancelled=counts[JobStatus.CANCELLED],
        )


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
    memory_limited: bool = False
    """Memory in use is at or above ``memory_high_water``: at most one job runs at a time."""

    def __str__(self) -> str:
        """A few lines for people: counts by status and by handler, the oldest pending job,
        the last minute (``repr`` gives the fields)."""
        age = self.oldest_pending_age
        minute = [f"{self.throughput:.2f} jobs/s finished"]
        if self.avg_duration is not None:
            minute.append(f"mean duration {self.avg_duration:.3f} s")
        if self.success_rate is not None:
            minute.append(f"{self.success_rate:.0%} completed")
        lines = [
            f"jobs: {_counts(self.by_status)}",
            "oldest pending job: " + ("none" if age is None else f"{age:.1f} s old"),
            "last minute: " + ", ".join(minute),
        ]
        if self.memory_limited:
            lines.append("memory limited: at most one job runs at a time")
        if self.by_name:
            lines.append("by handler:")
        lines.extend(
            f"  {name}: {_counts(by_status)}" for name, by_status in sorted(self.by_name.items())
        )
        return "\n".join(lines)


def _counts(by_status: dict[JobStatus, int]) -> str:
    """``3 pending, 1 running, ...``: every status, in life-cycle order."""
    return ", ".join(f"{by_status.get(status, 0)} {status}" for status in JobStatus)


class Queue:
    """An open queue: enqueue jobs, steer them, and read their state.

    Made by :func:`open_queue`, valid inside its ``async with`` block. Every method may be called
    from any task of the event loop that opened it. Calls that change jobs go to the store, the
    single writer, and return once the change is committed; reads use their own connections and
    never wait for the writer.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

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
        after: Iterable[int] = (),
        concurrency_key: str | None = None,
    ) -> Job:
        """Store a job for handler ``name`` and return it once it is durable.

        ``priority`` 1..10 (1 runs first; FIFO within a priority). ``delay`` (seconds from now)
        or ``run_at`` (wall-clock seconds), not both, schedule it for later. ``max_attempts`` and
        ``timeout`` default to the handler's. With an ``idempotency_key`` already held by a job
        of the same handler and payload, that job is returned and nothing is written (the key
        stays held while its job exists); held by other work, :class:`IdempotencyConflict`.
        ``after`` takes ids of stored jobs: the job is ``waiting`` until all of them completed
        (its delay counts from then), and is cancelled if one fails or is cancelled.
        ``concurrency_key`` groups jobs for the handler's ``key_concurrency``.

        Raises :class:`InvalidArgument` (also a ``ValueError``) for a bad argument,
        :class:`UnknownHandler` for a name not in the registry, :class:`NotJSONSerializable` for a
        payload JSON cannot hold, :class:`JobNotFound` for an unknown ``after`` id,
        :class:`QueueFull` beyond ``max_pending``, and
        :class:`QueueClosed` once the queue is closing.

        When it raises before the store has the command (every error above), nothing is
        written. Once the store has it, the job is committed even if the caller is cancelled
        while it waits for the answer: to enqueue exactly once across such a cancel (or a
        crash), give an ``idempotency_key`` and enqueue again.
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
            after=after,
            concurrency_key=concurrency_key,
        )
        (job,) = await self._enqueue([spec])
        return job

    async def _enqueue_or_replay(self, spec: JobSpec) -> tuple[Job, bool]:
        """Enqueue ``spec`` as :meth:`enqueue` does; also whether the job was already stored,
        found by its idempotency key (a replay: nothing was written). For the HTTP API."""
        found: set[int] = set()
        (job,) = await self._enqueue([spec], found=found)
        return job, job.id in found

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

    async def enqueue_workflow(self, workflow: Workflow) -> list[Job]:
        """Store every step of ``workflow`` in one transaction; the jobs in the order the
        steps were added. All or nothing, as :meth:`enqueue_many`."""
        if not isinstance(workflow, Workflow):
            raise InvalidArgument(f"enqueue_workflow takes a conveyor.Workflow, not {workflow!r}")
        steps = workflow.steps
        return await self._enqueue([step.spec for step in steps], [s.after_steps for s in steps])

    async def _enqueue(
        self,
        specs: Sequence[JobSpec],
        steps: Sequence[tuple[int, ...]] = (),
        found: set[int] | None = None,
    ) -> list[Job]:
        names = {spec.name for spec in specs}
        await self._runtime.learn_handlers(names)
        defaults = {name: self._runtime.defaults(name) for name in names}
        now = self._runtime.clock()
        # The caller's span, once for the whole call (here, in the caller's task): every job
        # of it continues that trace. None, at the cost of a lookup, without OpenTelemetry.
        trace_context = current_trace_context()
        jobs = [
            self._new_job(
                spec, now, defaults[spec.name], steps[index] if steps else (), trace_context
            )
            for index, spec in enumerate(specs)
        ]
        reply: Reply[list[Job]] = Reply()
        command = Enqueue(jobs, reply) if found is None else Enqueue(jobs, reply, found)
        await self._runtime.send(command)
        return await reply.get()

    @staticmethod
    def _new_job(
        spec: JobSpec,
        now: float,
        defaults: HandlerDefaults,
        after_steps: tuple[int, ...] = (),
        trace_context: str | None = None,
    ) -> NewJob:
        """``spec`` as a job to insert; ``defaults``: its handler's ``(max_attempts,
        timeout)``."""
        max_attempts, timeout = defaults
        payload_json = encode_json(spec.payload, "the payload of a {!r} job", spec.name)
        if spec.delay is not None:
            run_at = now + spec.delay
        elif spec.run_at:
            run_at = spec.run_at
        else:
            run_at = now
        # Positional, in NewJob's field order (one is built per job; keywords cost more).
        return NewJob(
            spec.name,
            payload_json,
            # The caller's own value: decoding the text just encoded would only copy it.
            spec.payload,
            spec.priority,
            spec.max_attempts or max_attempts,
            spec.timeout if spec.timeout is not None else timeout,
            run_at,
            spec.idempotency_key,
            spec.after,
            after_steps,
            spec.delay,
            None,  # schedule_key
            spec.concurrency_key,
            trace_context,
        )

    async def cancel(self, job_id: int) -> bool:
        """Cancel a job; True if the cancel took effect, False for a finished or unknown job.

        A pending job becomes ``cancelled`` at once and never starts. A running job's handler is
        cancelled (an async handler sees it at its next checkpoint; a sync handler, which runs
        in a thread and cannot be interrupted, runs to its end and its result is discarded); the
        job ends ``cancelled`` either way.
        """
        reply: Reply[bool] = Reply()
        await self._runtime.send(Cancel(_job_id(job_id), reply))
        return await reply.get()

    async def requeue(self, job_id: int) -> bool:
        """Move a ``failed`` or ``cancelled`` job back to ``pending``, attempts reset (to
        ``waiting`` if jobs it runs after have not completed); the jobs its end cancelled
        (those that run after it) go back to ``waiting``.

        Returns False (and changes nothing) for a job in any other status, an unknown id, or a
        job one of whose dependencies failed or was cancelled (requeue that one instead).
        """
        reply: Reply[bool] = Reply()
        await self._runtime.send(Requeue(_job_id(job_id), reply))
        return await reply.get()

    async def requeue_failed(self, name: str | None = None) -> int:
        """Requeue every ``failed`` job (of handler ``name`` only, if given) in one
        transaction, as :meth:`requeue` does each; how many were requeued."""
        reply: Reply[int] = Reply()
        await self._runtime.send(RequeueFailed(_name(name), reply))
        return await reply.get()

    async def cancel_pending(self, name: str | None = None) -> int:
        """Cancel every ``pending`` and ``waiting`` job (of handler ``name`` only, if given)
        in one transaction; how many were cancelled (the jobs that run after them are
        cancelled too, and not counted unless they match)."""
        reply: Reply[int] = Reply()
        await self._runtime.send(CancelQueued(_name(name), reply))
        return await reply.get()

    async def pause(self, name: str) -> bool:
        """Stop starting jobs of handler ``name`` (running ones finish); stored, so it holds
        across restarts. No job of it starts once this returned. False if already paused."""
        return await self._set_paused(name, True)

    async def resume(self, name: str) -> bool:
        """Start jobs of handler ``name`` again; False if it was not paused."""
        return await self._set_paused(name, False)

    async def paused(self) -> set[str]:
        """The names of the paused handlers."""
        return await self._read(storage.paused_handlers)

    async def _set_paused(self, name: str, paused: bool) -> bool:
        checked = _name(name)
        assert checked is not None
        reply: Reply[bool] = Reply()
        await self._runtime.send(SetPaused(checked, paused, reply))
        return await reply.get()

    # --- schedules ---------------------------------------------------------------------------
    async def schedule(
        self,
        key: str,
        name: str,
        payload: JSON = None,
        *,
        every: float | datetime.timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        catch_up: CatchUp = "latest",
        priority: int = 5,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> Schedule:
        """Store a recurring job under ``key`` (replacing the schedule there, whose next tick
        is then computed anew); the schedule as stored.

        Exactly one of ``every`` (seconds > 0, or a ``timedelta``) and ``cron`` (five fields:
        minute hour day month weekday, read in ``timezone``, an IANA name) says when it
        ticks; each tick enqueues one job of handler ``name`` with ``payload``, exactly once
        across crashes and restarts. Ticks missed while no process had the file open:
        ``catch_up="latest"`` enqueues one job for the latest, ``"all"`` one per missed tick
        (the latest 1000 at most), ``"none"`` none. Raises :class:`InvalidArgument` naming
        the problem, and :class:`UnknownHandler`.
        """
        if key is None:
            raise InvalidArgument("a schedule needs a key")
        check_key("a schedule's key", key)
        if isinstance(every, datetime.timedelta):
            every = every.total_seconds()
        if every is not None and (isinstance(every, bool) or not isinstance(every, int | float)):
            raise InvalidArgument(f"every must be seconds or a timedelta, not {every!r}")
        if cron is not None and not isinstance(cron, str):
            raise InvalidArgument(f"cron must be a str, not {cron!r}")
        if not isinstance(timezone, str):
            raise InvalidArgument(f"timezone must be an IANA name such as 'UTC', not {timezone!r}")
        if catch_up not in CATCH_UPS:
            raise InvalidArgument(
                f"catch_up must be one of {', '.join(CATCH_UPS)}, not {catch_up!r}"
            )
        cadence = Cadence(None if every is None else float(every), cron, timezone)
        # The job's own checks: handler, payload, priority, attempts, timeout.
        spec = JobSpec(name, payload, priority=priority, max_attempts=max_attempts, timeout=timeout)
        check_max_attempts(max_attempts)
        await self._runtime.learn_handlers([name])
        job = self._new_job(spec, self._runtime.clock(), self._runtime.defaults(name))
        schedule = Schedule(
            key=key,
            name=name,
            payload=payload,
            every=cadence.every,
            cron=cadence.cron,
            timezone=timezone,
            catch_up=catch_up,
            priority=priority,
            max_attempts=job.max_attempts,
            timeout=job.timeout,
            next_run_at=cadence.first_after(self._runtime.clock()),
            last_run_at=None,
            last_job_id=None,
        )
        reply: Reply[Schedule] = Reply()
        await self._runtime.send(SetSchedule(schedule, reply))
        return await reply.get()

    async def unschedule(self, key: str) -> bool:
        """Delete the schedule stored under ``key``; False if there is none. The jobs it
        already enqueued stay."""
        if not isinstance(key, str):
            raise InvalidArgument(f"a schedule's key is a str, not {key!r}")
        reply: Reply[bool] = Reply()
        await self._runtime.send(DropSchedule(key, reply))
        return await reply.get()

    async def schedules(self) -> list[Schedule]:
        """Every stored schedule, by key."""
        return await self._read(storage.list_schedules)

    async def purge(self, older_than: float, *, status: JobStatus | str | None = None) -> int:
        """Delete finished jobs (completed, failed, cancelled; of ``status`` only, if given)
        that finished more than ``older_than`` seconds ago; return how many. Their idempotency
        keys become free."""
        check_seconds("older_than", older_than)
        wanted = _status(status)
        if wanted is not None and not wanted.is_terminal:
            raise InvalidArgument(
                f"only finished jobs are purged: status must be completed, failed or cancelled, "
                f"not {wanted.value!r}"
            )
        statuses = TERMINAL if wanted is None else frozenset({wanted})
        reply: Reply[int] = Reply()
        await self._runtime.send(Purge(older_than, statuses, reply))
        return await reply.get()

    async def ping(self) -> None:
        """Return once the store has committed a write: the queue is open and writable."""
        reply: Reply[None] = Reply()
        await self._runtime.send(Ping(reply))
        await reply.get()

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` with the :class:`Change` values of every commit, once durable.

        It runs on the event loop's thread right after the commit, so it must be quick and must
        not block (count, set an event, ``send_nowait`` on a channel). Metrics and dashboards
        use it. The changes come as a read-only sequence (not a ``list``: those of enqueued jobs
        are made when it is first read); ``list(changes)`` copies it.
        """
        self._runtime.listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        """Stop calling a listener given to :meth:`subscribe`."""
        self._runtime.listeners.remove(listener)

    # --- reads -------------------------------------------------------------------------------
    async def get(self, job_id: int) -> Job | None:
        """The job with this id as stored now, or ``None`` if there is none."""
        job_id = _job_id(job_id)
        return await self._read(lambda conn: storage.get_job(conn, job_id))

    async def get_many(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The stored jobs of ``job_ids``, by id, as of one moment (unknown ids left out)."""
        ids = [_job_id(job_id) for job_id in job_ids]
        return await self._read(lambda conn: storage.get_jobs(conn, ids))

    async def workflow(self, job_id: int, *, limit: int = 200) -> WorkflowGraph:
        """The jobs connected to job ``job_id`` through ``after``, both ways and transitively
        (its whole workflow), by id, at most ``limit`` (1..1000) of them, read as of one
        moment; :class:`JobNotFound` for an unknown id."""
        job_id = _job_id(job_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidArgument(f"limit must be an int within 1..1000, not {limit!r}")
        graph = await self._read(lambda conn: storage.workflow_of(conn, job_id, limit))
        if graph is None:
            raise JobNotFound(f"no job has id {job_id}")
        return WorkflowGraph(*graph)

    async def wait(self, job_id: int, timeout: float | None = None) -> Job:
        """Wait until the job is finished (completed, failed or cancelled) and return it.

        Returns at once for a job already finished. Event-driven: nothing polls; the change
        that finishes the job carries it, so the job is read once, when the wait begins.
        Raises :class:`WaitTimeout` (a ``TimeoutError``) after ``timeout`` seconds,
        :class:`JobNotFound` for an unknown id, and :class:`QueueClosed` if the queue closes
        first. Cancelling the caller only ends the wait.
        """
        job_id = _job_id(job_id)
        check_seconds("timeout", timeout)
        finished = anyio.Event()
        ending: list[Change | None] = []

        def wake(change: Change | None) -> None:
            ending.append(change)
            finished.set()

        waiters = self._runtime.waiters
        # Registered before the read, so that a finish between the two is not missed; what
        # was told of the job before (it may have been requeued since) is forgotten.
        waiters.add(job_id, wake)
        self._runtime.following.forget([job_id])
        try:
            job = await self.get(job_id)
            if job is None:
                raise JobNotFound(f"no job has id {job_id}")
            if job.status.is_terminal:
                return job
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await finished.wait()
        finally:
            waiters.discard(job_id, wake)
        if not ending:
            raise WaitTimeout(f"job {job_id} did not finish within {timeout:g} s")
        change = ending[0]
        if change is None:
            raise QueueClosed(f"the queue closed while waiting for job {job_id}")
        final = change.job()
        if final is not None:
            return final
        # A change that does not carry the job: read it, once it is durable.
        job = await self.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} was purged as it finished")
        return job

    async def wait_all(self, job_ids: Iterable[int], timeout: float | None = None) -> list[Job]:
        """Wait until every job of ``job_ids`` is finished; the jobs, in the order given.

        Event-driven like :meth:`wait`. Raises :class:`WaitTimeout` naming how many were still
        unfinished after ``timeout`` seconds, and :class:`JobNotFound` for an unknown id.
        """
        ids = [_job_id(job_id) for job_id in job_ids]
        check_seconds("timeout", timeout)
        finished: dict[int, Job] = {}

        async def wait_one(job_id: int) -> None:
            finished[job_id] = await self.wait(job_id)

        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as tg:
                    for job_id in dict.fromkeys(ids):
                        tg.start_soon(wait_one, job_id)
        except TimeoutError:
            unfinished = len(set(ids) - finished.keys())
            raise WaitTimeout(
                f"{unfinished} of the {len(set(ids))} jobs did not finish within {timeout:g} s"
            ) from None
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
            if all(isinstance(exc, ConveyorError) for exc in group.exceptions):
                raise first from None
            raise
        return [finished[job_id] for job_id in ids]

    async def progress(self, job_ids: Iterable[int]) -> AsyncIterator[BatchProgress]:
        """Where the jobs of ``job_ids`` stand: a :class:`BatchProgress` at once, then one
        after each commit that changed any of them, ending once all are finished.

        Event-driven like :meth:`wait`. Raises :class:`JobNotFound` for an unknown id, and
        :class:`QueueClosed` if the queue closes first.
        """
        ids = list(dict.fromkeys(_job_id(job_id) for job_id in job_ids))
        wanted = set(ids)
        send, receive = anyio.create_memory_object_stream[list[Change]](math.inf)

        def note(changes: Sequence[Change]) -> None:
            mine = [change for change in changes if change.job_id in wanted]
            if mine:
                send.send_nowait(mine)

        # Subscribed before the read, so that no change after it is missed (nor one another
        # process makes).
        self.subscribe(note)
        following = self._runtime.following
        following.followers.append(note)
        following.follow(wanted)
        self._runtime.closers.add(send.close)
        try:
            statuses = await self._read(lambda conn: storage.statuses_of(conn, ids))
            missing = wanted - statuses.keys()
            if missing:
                raise JobNotFound(f"no job has id {min(missing)}")
            yield BatchProgress.of(statuses.values())
            while not all(status.is_terminal for status in statuses.values()):
                try:
                    batch = await receive.receive()
                except anyio.EndOfStream:
                    raise QueueClosed("the queue closed while following the batch") from None
                while True:
                    for change in batch:
                        statuses[change.job_id] = change.status
                    try:
                        batch = receive.receive_nowait()
                    except anyio.WouldBlock:
                        break
                yield BatchProgress.of(statuses.values())
        finally:
            self.unsubscribe(note)
            following.followers.remove(note)
            following.unfollow(wanted)
            self._runtime.closers.discard(send.close)
            send.close()
            receive.close()

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
        now = self._runtime.clock()
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
            memory_limited=self._runtime.memory.limited,
        )

    async def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        return await self._runtime.read(read)


def _job_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"a job id is an int, not {value!r}")
    if not -MAX_INT - 1 <= value <= MAX_INT:
        raise InvalidArgument(f"a job id is a 64-bit int, and {value} is not")
    return value


def _name(value: object) -> str | None:
    """``value`` as a handler name, or ``None`` when it is ``None``."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"a handler name is a non-empty str, not {value!r}")
    check_text("a handler name", value)
    return value


def _status(value: JobStatus | str | None) -> JobStatus | None:
    if value is None or isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in JobStatus)
        raise InvalidArgument(f"status must be one of {known}, not {value!r}") from None
