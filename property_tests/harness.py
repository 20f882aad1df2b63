"""The real queue, driven step by step from synchronous code (Hypothesis has no async API).

``trio.run`` runs in a background thread under a MockClock that never moves by itself; every
step is sent to it with ``trio.from_thread.run`` and ends with the queue settled: every task
blocked (SQL runs inline, handlers are async, so nothing is in flight elsewhere). Time passes
only when a step jumps the clock, to the next deadline any task sleeps on, one at a time, so
every timer fires at its exact virtual time.

The queue lives in a SQLite file or, given a ``postgresql://`` URL, in a schema on PostgreSQL
(:class:`RealQueue`); on PostgreSQL its SQL still runs inline, as round trips to the server
that take no virtual time. There the queue's ``LISTEN`` connection is left out
(:func:`deaf_doorbells`): it hears only the queue's own notifications (the second owner is rung
by hand, as on SQLite), yet their arrival, and its connecting in a thread, would wake the event
loop at moments the steps do not set, so that the same example could interleave differently
when Hypothesis runs it again. News by ``NOTIFY`` is tested in ``tests/test_postgres.py``.

For the same reason the worker pool's watchdog thread is left out (:func:`quiet_watchdog`): it
asks the event loop to answer every 0.2 s of real time, and an answer that lands during a step
adds a task to the scheduler's batch, which reorders the steps' tasks (a step on PostgreSQL,
with its round trips, often takes that long). The watchdog is tested in ``tests/``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import attrs
import trio
import trio.testing

import conveyor
from conveyor._actors.messages import Look, Report
from conveyor._actors.pool import Watchdog
from conveyor._storage.postgres import PgDoorbell, PgWriter, is_postgres, parse_target
from conveyor._storage.sqlite import Outcome, Writer

from model import (
    HEARTBEAT,
    LEASE,
    NO_LIMITS,
    SECOND_RESULT,
    Behaviour,
    HandlerLimits,
    Start,
    fail_message,
    raise_message,
    result_of,
)

T = TypeVar("T")

EPOCH: Final = 1_800_000_000.0
"""The mock wall clock's reading at virtual time 0."""

HANDLER_NAMES: Final = ("alpha", "beta")


STEP_BUDGET: Final = 200_000
"""Task steps one rule may take to settle: far more than any real step needs."""


class StepBudget(trio.abc.Instrument):
    """Counts task steps while armed, and calls ``exceeded`` once past the limit."""

    def __init__(self) -> None:
        self._left: int | None = None
        self._exceeded: Callable[[], None] | None = None

    def arm(self, limit: int, exceeded: Callable[[], None]) -> None:
        self._left, self._exceeded = limit, exceeded

    def disarm(self) -> None:
        self._left = self._exceeded = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._left is None:
            return
        self._left -= 1
        if self._left < 0 and self._exceeded is not None:
            exceeded, self._exceeded = self._exceeded, None
            exceeded()


@attrs.define
class Cancelled:
    """``cancel(job_id)`` returned True; the job had started ``attempts`` attempts then, the
    last of them still running (``while_running``) or not."""

    job_id: int
    attempts: int = 0
    while_running: bool = False


@attrs.frozen
class Requeued:
    """``requeue(job_id)`` was sent, and returned True."""

    job_id: int


@attrs.frozen
class Ended:
    """The handler of attempt ``attempt`` of job ``job_id`` returned, raised or was cancelled."""

    job_id: int
    attempt: int


@attrs.frozen
class Paused:
    """``pause(name)`` (``paused``) or ``resume(name)`` (not ``paused``) returned."""

    name: str
    paused: bool


@attrs.frozen
class Claimed:
    """The second owner claimed attempt ``attempt`` of job ``job_id`` (it runs no handler)."""

    job_id: int
    attempt: int


Event = Start | Ended | Cancelled | Requeued | Paused | Claimed


@contextlib.contextmanager
def deaf_doorbells() -> Iterator[None]:
    """While in the block, PostgreSQL doorbells hear nothing: they open no connection and
    never wake (see the module docstring)."""
    listen = PgDoorbell.listen

    async def deaf(self: PgDoorbell, on_ring: Callable[[set[str]], None]) -> None:
        await trio.sleep_forever()

    PgDoorbell.listen = deaf  # type: ignore[method-assign]
    try:
        yield
    finally:
        PgDoorbell.listen = listen  # type: ignore[method-assign]


@contextlib.contextmanager
def quiet_watchdog() -> Iterator[None]:
    """While in the block, worker pools start no watchdog thread (see the module docstring)."""
    start = Watchdog.start

    def quiet(self: Watchdog) -> None:
        pass

    Watchdog.start = quiet  # type: ignore[method-assign]
    try:
        yield
    finally:
        Watchdog.start = start  # type: ignore[method-assign]


class RealQueue:
    """One SQLite file (or PostgreSQL schema, named by its URL), and the queue process that is
    open on it (or crashed)."""

    def __init__(
        self,
        path: Path | str,
        scripts: dict[int, tuple[Behaviour, ...]],
        *,
        synchronous: Literal["normal", "full"] = "normal",
    ) -> None:
        self.path = path
        self.synchronous: Literal["normal", "full"] = synchronous
        self.on_postgres = is_postgres(str(path))
        """Owners are judged by their lease alone there (no lock files)."""
        self.scripts = scripts
        self.events: list[Event] = []
        self.dependency_results: dict[tuple[int, int], object] = {}
        """What ``current_job().dependency_results`` held in each (job id, attempt)."""
        self.generation = 0
        self.clock = trio.testing.MockClock()
        self.queue: conveyor.Queue | None = None
        self.failure: BaseException | None = None
        self._scope: trio.CancelScope | None = None
        self._closed: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._running = threading.Event()
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self._budget = StepBudget()
        self.second: Writer | None = None
        """The second owner: another process's writer on the file (or schema), driven by
        hand."""
        self._second_claims: dict[tuple[int, int], conveyor.Job] = {}
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self.registry = conveyor.Registry()
        self._patches = contextlib.ExitStack()

    # --- life of the event loop --------------------------------------------------------------
    def start(self, workers: int, limits: dict[str, HandlerLimits] | None = None) -> None:
        """Start the event loop and open the queue, its handlers registered with ``limits``."""
        self.registry = self._registry(limits or {})
        self._patches.enter_context(quiet_watchdog())
        if self.on_postgres:
            self._patches.enter_context(deaf_doorbells())
        self._thread.start()
        self._running.wait()
        self.run(self._open, workers)

    def close(self) -> None:
        """Crash the queue (if open) and end the event loop."""
        if self.second is not None:
            self.second.close()
            self.second = None
        try:
            if self._token is not None and self._thread.is_alive():
                self.run(self._crash)
                trio.from_thread.run(self._end, trio_token=self._token)
            self._thread.join()
        finally:
            self._patches.close()

    def run(self, step: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``step(*args)`` on the event loop, wait until the queue settles, return its value.

        A queue that never settles (actors that keep messaging each other) fails the step after
        :data:`STEP_BUDGET` task steps, instead of hanging until the test's timeout.
        """
        assert self._token is not None

        async def settled() -> T:
            self._budget.arm(STEP_BUDGET, self._livelock)
            try:
                value = await step(*args)
                await trio.testing.wait_all_tasks_blocked()
            finally:
                self._budget.disarm()
            return value

        value = trio.from_thread.run(settled, trio_token=self._token)
        if self.failure is not None:
            raise AssertionError("the queue failed") from self.failure
        return value

    def _thread_main(self) -> None:
        trio.run(self._main, clock=self.clock, instruments=[self._budget])

    def _livelock(self) -> None:
        self.failure = AssertionError(
            f"the queue did not settle within {STEP_BUDGET} task steps: a livelock"
        )
        if self._scope is not None:
            self._scope.cancel()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _end(self) -> None:
        assert self._stop is not None
        self._stop.set()

    # --- the queue process -------------------------------------------------------------------
    async def _open(self, workers: int) -> None:
        assert self._nursery is not None
        await self._nursery.start(self._host, workers)

    async def _host(self, workers: int, task_status: trio.TaskStatus[None]) -> None:
        closed = self._closed = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with conveyor.open_queue(
                    self.path,
                    handlers=self.registry,
                    workers=workers,
                    clock=lambda: EPOCH + trio.current_time(),
                    sql_thread=False,
                    heartbeat=HEARTBEAT,
                    synchronous=self.synchronous,
                ) as self.queue:
                    task_status.started()
                    await trio.sleep_forever()
        except Exception as exc:
            self.failure = exc
        finally:
            self.queue = None
            closed.set()

    async def _crash(self) -> None:
        if self._scope is not None and self._closed is not None:
            self._scope.cancel()
            await self._closed.wait()
            self._scope = None

    def crash_and_reopen(self, workers: int, *, closed_for: float = 0.0) -> None:
        """Tear the queue down abruptly (no graceful shutdown), let ``closed_for`` seconds
        pass with no process on the file, then open it again."""
        self.run(self._crash)
        self.generation += 1
        if closed_for:
            self.jump_to(self.now() + closed_for)
        self.run(self._open, workers)

    # --- steps -------------------------------------------------------------------------------
    def call(self, operation: Callable[[conveyor.Queue], Awaitable[T]]) -> T:
        async def step() -> T:
            assert self.queue is not None
            return await operation(self.queue)

        return self.run(step)

    def cancel(self, job_id: int) -> bool:
        event = Cancelled(job_id)

        async def cancel(queue: conveyor.Queue) -> bool:
            cancelled = await queue.cancel(job_id)
            if cancelled:
                # Logged as it returns: a handler start logged later came after it.
                self.events.append(event)
            return cancelled

        cancelled = self.call(cancel)
        if cancelled:
            self._record_cancel(event)
        return cancelled

    def _record_cancel(self, event: Cancelled) -> None:
        """Complete the log of a successful cancel with what the job became once settled."""
        job = self.call(lambda queue: queue.get(event.job_id))
        assert job is not None
        event.attempts = job.attempts
        event.while_running = job.error == "cancelled while running"

    def requeued(self, job_ids: Iterable[int]) -> None:
        """Log jobs a bulk requeue moved (the call answers with their number only)."""
        self.events += [Requeued(job_id) for job_id in job_ids]

    def cancelled(self, job_ids: Iterable[int]) -> None:
        """Log jobs a bulk cancel ended before they ran (it answers with their number only)."""
        self.events += [Cancelled(job_id) for job_id in job_ids]

    def set_paused(self, name: str, paused: bool) -> bool:
        """``pause(name)``, logged as it returns, or ``resume(name)``, logged as it is sent.

        A pause's commit hands the pool its news at once, so nothing of ``name`` starts after
        it. A resume's commit may start a job of ``name`` before its caller runs again, and
        nothing of ``name`` starts before that commit."""

        async def step(queue: conveyor.Queue) -> bool:
            if paused:
                changed = await queue.pause(name)
                self.events.append(Paused(name, paused))
            else:
                self.events.append(Paused(name, paused))
                changed = await queue.resume(name)
            return changed

        return self.call(step)

    def requeue(self, job_id: int) -> bool:
        """``requeue(job_id)``, logged as it is sent and unlogged if it is refused: the
        commit of a requeue may start the job again before its caller runs, and a job it
        requeues (a finished one) does not start before that commit."""
        event = Requeued(job_id)

        async def requeue(queue: conveyor.Queue) -> bool:
            self.events.append(event)
            requeued = await queue.requeue(job_id)
            if not requeued:
                # By identity: an earlier requeue of the same job is an equal value.
                del self.events[next(i for i, e in enumerate(self.events) if e is event)]
            return requeued

        return self.call(requeue)

    def enqueue_then_cancel(self, spec: conveyor.JobSpec, checkpoints: int) -> tuple[int, bool]:
        """Enqueue a ready job and cancel it after ``checkpoints`` scheduling points, without
        letting the queue settle in between: the cancel meets the claim the enqueue set off."""

        async def step() -> tuple[int, bool]:
            assert self.queue is not None
            (job,) = await self.queue.enqueue_many([spec])
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            cancelled = await self.queue.cancel(job.id)
            if cancelled:
                self.events.append(Cancelled(job.id))
            return job.id, cancelled

        job_id, cancelled = self.run(step)
        if cancelled:
            event = next(e for e in self.events if isinstance(e, Cancelled) and e.job_id == job_id)
            self._record_cancel(event)
        return job_id, cancelled

    def cancel_then_crash(self, job_id: int, checkpoints: int, workers: int) -> bool:
        """Cancel a running job and crash ``checkpoints`` scheduling points later, before the
        handler's end may be committed; then open the file again."""
        event = Cancelled(job_id)

        async def step() -> bool:
            assert self.queue is not None
            cancelled = await self.queue.cancel(job_id)
            if cancelled:
                self.events.append(event)
            for _ in range(checkpoints):
                await trio.lowlevel.checkpoint()
            await self._crash()
            return cancelled

        cancelled = self.run(step)
        self.generation += 1
        self.run(self._open, workers)
        if cancelled:
            self._record_cancel(event)
        return cancelled

    def deliver_stale_outcome(self, job_id: int, attempt: int, event: conveyor.Event) -> None:
        """An outcome from an attempt that a crash interrupted reaches the store at last."""
        claimed = conveyor.Job(
            id=job_id,
            name=HANDLER_NAMES[0],
            payload=None,
            status=conveyor.JobStatus.RUNNING,
            priority=5,
            attempts=attempt,
            max_attempts=attempt,
            run_at=EPOCH,
            created_at=EPOCH,
            started_at=EPOCH,
        )
        outcome = Outcome(claimed, event, result_json='"stale"', error="a stale outcome")

        async def step() -> None:
            assert self.queue is not None
            await self.queue._runtime.send(Report([outcome], [], 0))

        self.run(step)

    def now(self) -> float:
        return self.clock.current_time()

    # --- the second owner --------------------------------------------------------------------
    def second_open(self) -> None:
        """Another process opens the file (or schema) and registers as an owner of the same
        handlers."""
        writer: Writer = (
            PgWriter(parse_target(str(self.path))) if self.on_postgres else Writer(str(self.path))
        )
        self.second = writer
        handlers = dict.fromkeys(HANDLER_NAMES, (3, None))
        self._second(lambda: writer.register(self._wall(), handlers, lease=LEASE))

    def second_claim(self) -> int | None:
        """The second owner claims one job (the best ready one); its id."""
        writer = self._second_writer()
        jobs = self._second(lambda: writer.claim(1, self._wall()))
        if not jobs:
            return None
        (job,) = jobs
        self._second_claims[job.id, job.attempts] = job
        self.events.append(Claimed(job.id, job.attempts))
        return job.id

    def second_beat(self) -> bool:
        """The second owner renews its lease; if it was taken over, it registers anew (as the
        store does) and this says False."""
        writer = self._second_writer()
        renewed = self._second(lambda: writer.beat(self._wall()))
        if not renewed:
            self._second(lambda: writer.reregister(self._wall()))
            self._second_claims.clear()  # as the pool drops the attempts of the lost lease
        return renewed

    def second_die(self) -> None:
        """The second owner's process dies: its row stays; on SQLite its lock is released (the
        queue finds it dead at once), on PostgreSQL its connection closes and only its lease
        can tell."""
        self._second_writer().close()
        self.second = None

    def second_complete(self, job_id: int, attempt: int) -> None:
        """The second owner's attempt ends: its handler returned."""
        writer = self._second_writer()
        job = self._second_claims[job_id, attempt]
        outcome = Outcome(job, conveyor.Event.COMPLETED, result_json=json.dumps(SECOND_RESULT))
        self._second(lambda: writer.end_attempts([outcome], self._wall()))

    def _second_writer(self) -> Writer:
        assert self.second is not None
        return self.second

    def _second(self, work: Callable[[], T]) -> T:
        """``work()`` in one of the second owner's transactions; then ring the queue, as the
        second owner's doorbell would."""
        with self._second_writer().transaction():
            value = work()
        if self.queue is not None:
            self.call(lambda queue: queue._runtime.send(Look(True, True)))
        return value

    def _wall(self) -> float:
        return EPOCH + self.now()

    def next_deadline(self) -> float:
        """The virtual time at which the next task wakes by itself (inf if none)."""

        async def step() -> float:
            return trio.lowlevel.current_statistics().seconds_to_next_deadline

        return self.now() + self.run(step)

    def jump_to(self, time: float) -> None:
        async def step() -> None:
            self.clock.jump(time - self.clock.current_time())

        self.run(step)

    def schedules(self) -> list[conveyor.Schedule]:
        return self.call(lambda queue: queue.schedules())

    def jobs(self) -> dict[int, conveyor.Job]:
        async def read(queue: conveyor.Queue) -> dict[int, conveyor.Job]:
            found: dict[int, conveyor.Job] = {}
            before: int | None = None
            while page := await queue.list(limit=1000, before=before):
                found.update((job.id, job) for job in page)
                before = page[-1].id
            return found

        return self.call(read)

    # --- handlers ----------------------------------------------------------------------------
    def _registry(self, limits: dict[str, HandlerLimits]) -> conveyor.Registry:
        registry = conveyor.Registry()
        for name in HANDLER_NAMES:
            limit = limits.get(name, NO_LIMITS)
            registry.handler(
                name,
                backoff=conveyor.Backoff(initial=1, multiplier=2, maximum=8, jitter=0),
                concurrency=limit.concurrency,
                key_concurrency=limit.key_concurrency,
                rate_limit=limit.rate,
                retry_priority_step=limit.retry_priority_step,
            )(self._handle)
        return registry

    async def _handle(self, payload: dict[str, int]) -> object:
        context = conveyor.current_job()
        self.events.append(Start(self.generation, trio.current_time(), context.id, context.attempt))
        try:
            return await self._act(payload, context)
        finally:
            self.events.append(Ended(context.id, context.attempt))

    async def _act(self, payload: dict[str, int], context: conveyor.JobContext) -> object:
        """What the script says attempt ``context.attempt`` of the job does."""
        tag, attempt = payload["tag"], context.attempt
        self.dependency_results[context.id, attempt] = context.dependency_results
        behaviour = self.scripts[tag][attempt - 1]
        if behaviour.progress is not None:
            context.set_progress(behaviour.progress)
        if behaviour.kind == "raise":
            raise ValueError(raise_message(tag, attempt))
        if behaviour.kind == "fail":
            raise conveyor.Fail(fail_message(tag, attempt))
        if behaviour.kind == "retry":
            raise conveyor.Retry(delay=behaviour.retry_delay)
        if behaviour.kind == "sleep":
            await trio.sleep(behaviour.duration)
        return result_of(tag, attempt)
