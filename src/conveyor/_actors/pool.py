"""The worker pool: the slots that run jobs, and their one conversation with the store (DESIGN §3).

It owns a ready buffer of claimed jobs, the running attempts (with the cancel scopes a cancel or
shutdown goes through) and a buffer of ended attempts' outcomes. Worker tasks take the next job
from the ready buffer without a channel hop, and a finished attempt appends its outcome and
frees its slot without a message. The pool talks to the store in batches: one :class:`Report`
("these outcomes and progress; claim jobs for ``more`` free slots") and, back, one
:class:`News` ("these jobs are yours"), which the store hands to :meth:`Pool.hear` as soon
as the batch is committed. Up to :data:`REPORTS_IN_FLIGHT` reports are in flight,
so a slot that frees while the store works on a report is asked for in the next one.

It keeps no copy of pending jobs and asks only for slots that are free, so what it runs is
always the best ready jobs (DESIGN §4, invariant 4).

Whatever a handler raises, ``BaseException`` included, fails only its attempt: the only
exceptions that leave a worker are the cancellations conveyor itself delivered (a cancel, a
timeout, shutdown, the queue's teardown) and a real Ctrl-C. A :class:`Watchdog` thread warns when
an async handler blocks the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Final, Literal, NoReturn

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
import sniffio
import trio

from .._context import JobContext, enter_context, leave_context, run_with_context
from .._errors import NotJSONSerializable, UnknownHandler
from .._fastpath import Scope, primitives
from .._job import JSON, Event, Job, encode_json, end_attempt
from .._memory import MemoryGuard
from .._process import ProcessPool
from .._registry import Registry
from .._retry import Backoff, Fail, Retry
from .._sqlthread import call_soon_threadsafe
from .._storage.sqlite import Outcome, error_summary
from .._tracing import AttemptSpan, start_attempt
from .mailbox import Mailbox
from .messages import (
    Flush,
    InterruptAll,
    News,
    PoolMessage,
    ProgressReport,
    Report,
    StoreCommand,
    tell,
)

logger = logging.getLogger("conveyor")

REPORTS_IN_FLIGHT: Final = 2
"""Reports sent to the store and not yet answered: one being applied, one filling up."""

HOG_LIMIT: Final = 0.001
"""Seconds a worker runs handlers back to back, without yielding, before it lets the other
tasks run. A yield per job would cost more than a no-op handler does."""

STALL_THRESHOLD: Final = 1.0
"""Seconds the event loop may go without running a callback before the watchdog warns."""

STALL_CHECK_INTERVAL: Final = 0.2
"""Seconds the watchdog sleeps between two looks at the event loop."""

StopReason = Literal["cancel", "shutdown", "fenced"]
"""Why the pool stopped an attempt: a cancel, shutdown's grace ending, or the loss of this
process's lease (the job was taken over: the attempt's end is not reported at all)."""


class Attempt:
    """One running attempt: its job, its cancel scope, when it started (on the event loop's
    clock), why it was stopped, and its progress.

    ``reason`` is written by the pool just before it cancels ``scope`` and read by the worker
    after the scope exits. ``progress`` may be written from a handler's thread: a single
    attribute store, which the GIL makes atomic.
    """

    __slots__ = ("job", "progress", "progress_told", "reason", "scope", "span", "started")

    def __init__(self, job: Job, scope: Scope, started: float) -> None:
        self.job = job
        self.scope = scope
        self.started = started
        self.reason: StopReason | None = None
        self.progress: tuple[float, str | None] | None = None
        self.progress_told = False
        self.span: AttemptSpan | None = None
        """The attempt's trace span (``None`` without OpenTelemetry or a tracer provider)."""


class Pool:
    """The worker-pool actor: ``slots`` workers running the handlers of ``registry``."""

    def __init__(
        self,
        *,
        registry: Registry,
        slots: int,
        inbox: Mailbox[PoolMessage],
        store: Mailbox[StoreCommand],
        paused: Callable[[], frozenset[str]] = frozenset,
        memory: MemoryGuard | None = None,
    ) -> None:
        """``paused`` tells the handlers paused as the store last committed: a claimed job
        of one of them does not start (it goes back to pending)."""
        self._registry = registry
        self._paused = paused
        self._memory = memory or MemoryGuard(None)
        self._slots = slots
        self._inbox = inbox
        self._store = store
        self._ready: collections.deque[Job] = collections.deque()
        self._results: dict[int, dict[int, JSON]] = {}
        """Claimed jobs' dependency results, until their attempt starts."""
        self._running: dict[int, Attempt] = {}
        self._outcomes: list[Outcome] = []
        self._progress: list[Attempt] = []
        self._owed = 0
        """Slots the store was asked to claim jobs for and has not answered with a job yet."""
        self._in_flight = 0
        self._flush_asked = False
        self._fast = primitives()
        self._idle_workers = self._fast.lot()
        self._worker_called = False
        """A worker was woken for the ready jobs and has not looked at them yet."""
        self._closing: anyio.Event | None = None
        self._released = False
        # A thread for every slot: anyio's default limiter (40 threads) would leave sync
        # handlers of the other slots claimed, counted running, and waiting for a thread.
        self._threads = anyio.CapacityLimiter(slots)
        # Process handlers' workers: started on first use, killed with the attempt a cancel,
        # a timeout or shutdown stops (through its scope), the idle ones ended with the pool.
        self._processes = ProcessPool()
        self._loop_thread = threading.get_ident()
        self._call_soon: Callable[[Callable[[], object]], object] = call_soon_threadsafe()
        self._now = _loop_clock()
        self._on_asyncio = sniffio.current_async_library() == "asyncio"
        self._watchdog = Watchdog(self._call_soon, self._describe_stall)

    async def run(self) -> None:
        """Run the workers and the conversation with the store until cancelled; the watchdog
        thread runs as long as this does."""
        self._watchdog.start()
        try:
            await self._run_workers()
        except BaseExceptionGroup as group:
            # What stops a worker (a real Ctrl-C in a handler) leaves as itself, not wrapped
            # in the workers' group: a caller's ``except KeyboardInterrupt`` must see it.
            if len(group.exceptions) != 1:
                raise
            _raise_alone(group.exceptions[0])
        finally:
            self._watchdog.stop()
            await self._processes.aclose()

    async def _run_workers(self) -> None:
        """Until cancelled (the queue's teardown)."""
        try:
            async with anyio.create_task_group() as workers:
                for _ in range(self._slots):
                    workers.start_soon(self._work)
                await self._report()
                while True:
                    self._handle(await self._inbox.receive())
                    while self._inbox:
                        self._handle(self._inbox.receive_nowait())
                    await self._report()
                    if self._closing is not None and self._is_idle():
                        self._closing.set()
        finally:
            self._inbox.close()

    # --- messages ----------------------------------------------------------------------------
    def hear(self, news: News) -> None:
        """Take the store's answer to a batch, from the store's task, as soon as the batch is
        committed: claimed jobs start in the next scheduling pass, not one pass later through
        this actor's own task. It only updates the pool's state (it never waits); what it leaves
        to report is reported by the pool's task, which it wakes for that."""
        if news.fenced:
            # Before the claims of this very batch, which belong to the new lease.
            self._drop_fenced()
        # Clamped: a report made outside the pool (a test's stale outcome) is answered too.
        self._in_flight = max(self._in_flight - news.answered, 0)
        self._owed = 0 if news.released else self._owed - len(news.claimed)
        if self._closing is not None:
            # Claimed just before the pool began to close: give the jobs back untouched.
            self._outcomes += [Outcome(job, Event.INTERRUPTED) for job in news.claimed]
        elif news.claimed:
            self._results.update(news.dependency_results)
            self._ready.extend(news.claimed)
            self._call_worker()
        for job_id in news.cancel:
            self._cancel(job_id, "cancel")
        if news.paused:
            self._give_back(lambda job: job.name in news.paused)
        # Free slots counted without the memory guard: it may read the machine's memory, and
        # a needless flush reports nothing.
        busy = len(self._running) + len(self._ready) + self._owed
        if self._outcomes or self._progress or self._closing is not None or busy < self._slots:
            self._ask_flush()

    def close(self, idle: anyio.Event) -> None:
        """Start no more jobs from now on: the claimed jobs not started, and those of any later
        :class:`News`, go back to pending untouched; set ``idle`` once no attempt runs and every
        outcome is stored. Called by shutdown directly, so that no news the store commits
        meanwhile can start a job; ``anyio.BrokenResourceError`` if the pool has stopped."""
        self._inbox.send_nowait(Flush())  # the pool's task reports the jobs given back
        self._flush_asked = True
        self._closing = idle
        self._outcomes += [Outcome(job, Event.INTERRUPTED) for job in self._ready]
        self._ready.clear()
        self._results.clear()

    def _handle(self, message: PoolMessage) -> None:
        if isinstance(message, Flush):
            self._flush_asked = False
        elif isinstance(message, InterruptAll):
            for job_id in list(self._running):
                self._cancel(job_id, "shutdown")

    def _drop_fenced(self) -> None:
        """This process's lease was lost and its jobs taken over: stop every attempt, and
        report none of their ends (they belong to the old lease, and the new one of this very
        process could otherwise take them for its own); drop the claimed jobs not started."""
        for job_id in list(self._running):
            self._cancel(job_id, "fenced")
        for job in self._ready:
            self._results.pop(job.id, None)
        self._ready.clear()

    def _give_back(self, which: Callable[[Job], bool]) -> None:
        """Return the claimed jobs ``which`` picks, not started yet, to pending untouched."""
        given = [job for job in self._ready if which(job)]
        for job in given:
            self._ready.remove(job)
            self._results.pop(job.id, None)
            self._outcomes.append(Outcome(job, Event.INTERRUPTED))
        if given:
            self._ask_flush()

    def _cancel(self, job_id: int, reason: StopReason) -> None:
        attempt = self._running.get(job_id)
        if attempt is not None:
            if attempt.reason is None:
                attempt.reason = reason
                attempt.scope.cancel()
            return
        for job in self._ready:
            if job.id == job_id:
                # Claimed but not started: it never starts.
                self._ready.remove(job)
                self._results.pop(job.id, None)
                self._outcomes.append(Outcome(job, Event.CANCELLED))
                return
        # Otherwise its attempt already ended, and the store settles that end as cancelled.

    async def _report(self) -> None:
        """Send the store what waits for it and ask for the free slots, unless enough reports
        are in flight already (the answer to one of them brings the pool back here)."""
        if self._in_flight >= REPORTS_IN_FLIGHT:
            return
        release = self._closing is not None and not self._released
        more = self._free_slots()
        progress = self._take_progress()
        if not (self._outcomes or progress or more > 0 or release):
            return
        outcomes, self._outcomes = self._outcomes, []
        self._owed += max(more, 0)
        self._in_flight += 1
        self._released = self._released or release
        report = Report(outcomes, progress, max(more, 0), release)
        try:
            try:
                # Without a scheduler turn when the store's inbox has room: the common case.
                self._store.send_nowait(report)
            except anyio.WouldBlock:
                await self._store.send(report)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The store has ended: the queue is being torn down, this task too, and the
            # cancellation on its way must be what ends it, not the closed channel.
            await anyio.lowlevel.checkpoint()
            raise

    def _free_slots(self) -> int:
        """Slots with no job running, claimed or asked for (none once the pool closes); a
        single slot while memory is short."""
        if self._closing is not None:
            return 0
        slots = 1 if self._memory.is_high(self._now()) else self._slots
        return slots - len(self._running) - len(self._ready) - self._owed

    def _take_progress(self) -> list[ProgressReport]:
        reports = []
        for attempt in self._progress:
            attempt.progress_told = False
            if attempt.progress is not None and attempt.job.id in self._running:
                job = attempt.job
                reports.append((*attempt.progress, job.id, job.attempts))
        self._progress.clear()
        return reports

    def _is_idle(self) -> bool:
        return not (self._running or self._outcomes or self._in_flight)

    def _ask_flush(self) -> None:
        if not self._flush_asked:
            self._flush_asked = True
            tell(self._inbox, Flush())

    # --- workers -----------------------------------------------------------------------------
    async def _work(self) -> None:
        """Run jobs from the ready buffer, one at a time, for as long as the pool runs.

        Attempts share one cancel scope until one of them is cancelled or times out (a scope
        cannot be used again once cancelled): a scope per attempt costs more than a no-op
        handler does.
        """
        checkpoint = self._fast.checkpoint
        clock = time.perf_counter
        while True:
            scope = self._fast.cancel_scope()
            attempt: Attempt | None = None
            with scope:
                yielded_at = clock()
                while True:
                    if not self._ready:
                        yielded_at = math.inf  # the wait for a job lets the other tasks run
                    attempt = await self._next_attempt(scope)
                    if yielded_at == math.inf:
                        yielded_at = clock()
                    finished = await self._attempt(attempt)
                    ended, attempt = attempt, None
                    if self._end(ended, finished):
                        break
                    if self._ready and clock() - yielded_at > HOG_LIMIT:
                        # Handlers that never yield must not keep the other tasks from
                        # running for long. (With nothing ready, waiting for a job yields.)
                        await checkpoint()
                        yielded_at = clock()
            if attempt is not None:
                # Cancelled (a cancel, its timeout, or shutdown) before the handler returned.
                self._end(attempt, None)

    async def _next_attempt(self, scope: Scope) -> Attempt:
        while True:
            while not self._ready:
                try:
                    await self._idle_workers.park()
                finally:
                    # Woken by the call (only a call wakes a parked worker), or leaving: a
                    # call that cannot be answered must not stop the next one.
                    self._worker_called = False
            job = self._ready.popleft()
            if self._ready:
                self._call_worker()
            if job.name not in self._paused():
                break
            # Paused since it was claimed (the pool has not heard yet): it does not start.
            self._results.pop(job.id, None)
            self._outcomes.append(Outcome(job, Event.INTERRUPTED))
            self._ask_flush()
        attempt = Attempt(job, scope, self._now())
        self._running[job.id] = attempt
        if job.timeout is not None:
            # Nothing waits between here and the handler's start (every slot has its thread):
            # the timeout counts the handler's own time.
            scope.deadline = attempt.started + job.timeout
        logger.debug("job %d (%s) attempt %d starts", job.id, job.name, job.attempts)
        return attempt

    def _end(self, attempt: Attempt, finished: Outcome | None) -> bool:
        """Settle how ``attempt`` ended (``finished``: what the handler did, if it returned);
        whether its scope was cancelled (and so cannot be used again)."""
        job, scope = attempt.job, attempt.scope
        cancelled = scope.cancel_called
        del self._running[job.id]
        if attempt.reason == "fenced":
            logger.info("job %d attempt %d stopped: its lease was lost", job.id, job.attempts)
            if attempt.span is not None:
                attempt.span.end(Event.RECOVERED.value)  # as the process taking it over did
            self._ask_flush()  # its slot is free
            return cancelled
        # An async handler that blocks the loop past its deadline returns before the timeout
        # can fire (trio's scope notices, asyncio's does not): the clock decides.
        late = job.timeout is not None and self._now() >= scope.deadline
        # A sync handler cannot be interrupted, so a cancel or timeout can arrive while it runs
        # and find it finished: the cancel and the timeout still win. Shutdown does not discard
        # finished work.
        if attempt.reason == "cancel":
            outcome = Outcome(job, Event.CANCELLED, duration=self._now() - attempt.started)
        elif attempt.reason is None and (cancelled or late):
            duration = self._now() - attempt.started
            error = _timed_out(
                job, None if finished is None else finished.duration, self._in_process(job)
            )
            outcome = _failure(job, error, self._backoff_of(job), duration)
        elif finished is not None:
            outcome = finished
        else:
            outcome = Outcome(job, Event.INTERRUPTED, duration=self._now() - attempt.started)
        if job.timeout is not None and not cancelled:
            scope.deadline = math.inf
        if attempt.progress is not None:
            outcome = attrs.evolve(outcome, progress=attempt.progress)
        if outcome.event is Event.RETRIED and job.name in self._registry:
            limits = self._registry[job.name].limits
            if limits.retry_priority_step:
                outcome = attrs.evolve(outcome, retry_priority=limits.retry_priority(job.priority))
        if attempt.span is not None:
            _end_span(attempt.span, outcome)
        self._outcomes.append(outcome)
        self._ask_flush()
        return cancelled

    def _call_worker(self) -> None:
        """Wake one idle worker for the ready jobs, unless one is on its way already.

        A worker takes ready jobs one after the other, and calls the next idle worker as it
        takes one with more left behind it: while handlers wait, each job gets a worker of its
        own; while they do not, the first worker runs the whole batch, and only one other wakes
        for nothing (waking every idle worker woke seven for nothing in a batch of eight).
        """
        if not self._worker_called and len(self._idle_workers):
            self._worker_called = True
            self._idle_workers.unpark()

    def _in_process(self, job: Job) -> bool:
        return job.name in self._registry and self._registry[job.name].process

    def _backoff_of(self, job: Job) -> Backoff:
        return self._registry[job.name].backoff if job.name in self._registry else Backoff()

    async def _attempt(self, attempt: Attempt) -> Outcome:
        """Run the handler once; the outcome of its return or of whatever it raised.

        A cancellation that conveyor delivered (this attempt's scope or an enclosing one was
        cancelled: a cancel, the timeout, shutdown, the queue's teardown) propagates, and so
        does a real Ctrl-C; any other exception, ``BaseException`` included (``SystemExit``,
        ``KeyboardInterrupt`` raised by the handler, a cancellation from someone else's
        scope), is a failed attempt.
        """
        job = attempt.job
        span = attempt.span = start_attempt(job.name, job.id, job.attempts, job.trace_context)
        try:
            handler = self._registry[job.name]
        except UnknownHandler as exc:
            return _failure(job, f"{exc}\n(in the process that claimed it)", Backoff(), 0.0)
        context = JobContext(
            job.id,
            job.name,
            job.attempts,
            job.payload,
            functools.partial(self._note, attempt),
            self._results.pop(job.id, None) if job.after else None,
        )
        cancelling = _cancel_requests() if self._on_asyncio else None
        if span is not None:
            span.activate()  # for the handler, and the thread a sync one runs in
        try:
            if handler.is_async:
                token = enter_context(context)
                try:
                    result = await handler.function(job.payload)
                finally:
                    leave_context(token)
            elif handler.process:
                ended = await self._processes.run(handler.function, handler.memory_limit, context)
                return ended.outcome(job, handler.backoff, self._now() - attempt.started)
            else:
                call = functools.partial(handler.function, job.payload)
                result = await anyio.to_thread.run_sync(
                    _run_in_thread, context, call, limiter=self._threads
                )
        except BaseException as exc:
            if _is_own_cancellation(exc, attempt.scope) or _is_ctrl_c(exc):
                raise
            _forget_cancel_requests(cancelling)
            raised = exc.exception if isinstance(exc, RaisedInThread) else exc
            if span is not None:
                span.record(raised)
            return _raised(job, raised, handler.backoff, self._now() - attempt.started)
        finally:
            if span is not None:
                span.deactivate()
        duration = self._now() - attempt.started
        try:
            result_json = encode_json(result, "the result of job {} ({!r})", job.id, job.name)
        except NotJSONSerializable as exc:
            # Not retried: the handler did its work, and running it again would repeat its
            # side effects only to return the same value.
            return Outcome(job, Event.FAILED, error=str(exc), duration=duration)
        return Outcome(job, Event.COMPLETED, result_json, duration=duration)

    def _note(self, attempt: Attempt, fraction: float, message: str | None) -> None:
        """A handler reported progress: keep the latest; the next report carries it.

        Never blocks: from a handler's thread, the pool hears of it through the event loop's
        thread-safe "call soon".
        """
        attempt.progress = (fraction, message)
        if threading.get_ident() == self._loop_thread:
            self._mark_progress(attempt)
        else:
            self._call_soon(functools.partial(self._mark_progress, attempt))

    def _mark_progress(self, attempt: Attempt) -> None:
        if not attempt.progress_told:
            attempt.progress_told = True
            self._progress.append(attempt)
            self._ask_flush()

    def _describe_stall(self) -> str:
        """The async jobs running while the loop is blocked, and where the loop's thread is.

        Called from the watchdog's thread while the loop's thread is stuck (so the running
        attempts do not change under it); reads only.
        """
        running = [
            f"job {attempt.job.id} ({attempt.job.name!r})"
            for attempt in tuple(self._running.values())
            if attempt.job.name in self._registry and self._registry[attempt.job.name].is_async
        ]
        jobs = f"async jobs running: {', '.join(running)}" if running else "no async job runs"
        frame = sys._current_frames().get(self._loop_thread)
        return jobs if frame is None else f"{jobs}; the loop's thread is at {_where(frame)}"


class Watchdog:
    """A thread that warns when the event loop stops running, as when an async handler blocks
    it (``time.sleep``, CPU-bound work, blocking I/O): every job then stalls, and no timeout
    can fire.

    Every ``interval`` seconds the thread asks the loop, through its thread-safe "call soon",
    to answer; an ask left unanswered for ``threshold`` seconds is a stall. It logs one
    WARNING per stall (how long so far, and what ``describe`` says runs), and one INFO when
    the loop answers again. It sleeps between looks; an idle loop is woken once per look.
    """

    def __init__(
        self,
        call_soon: Callable[[Callable[[], object]], object],
        describe: Callable[[], str],
        *,
        threshold: float | None = None,
        interval: float | None = None,
    ) -> None:
        self._call_soon = call_soon
        self._describe = describe
        self._threshold = STALL_THRESHOLD if threshold is None else threshold
        self._interval = STALL_CHECK_INTERVAL if interval is None else interval
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="conveyor-watchdog", daemon=True)
        self._asked_at: float | None = None
        """When the unanswered ask was made; ``None`` once answered, at ``_answered_at``."""
        self._answered_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread; returns once it has ended (it wakes at once)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _answer(self) -> None:
        # Runs on the event loop. Single stores (atomic under the GIL), in this order: the
        # thread that sees no ask pending sees when it was answered.
        self._answered_at = time.monotonic()
        self._asked_at = None

    def _watch(self) -> None:
        stalled_since: float | None = None
        while not self._stopping.wait(self._interval):
            asked_at = self._asked_at
            if asked_at is not None:
                blocked = time.monotonic() - asked_at
                if stalled_since is None and blocked >= self._threshold:
                    stalled_since = asked_at
                    logger.warning(
                        "the event loop has been blocked for %.1f s so far: every job waits, "
                        "and no timeout can fire (%s). An async handler must not block: "
                        "await, or make it a sync handler (it runs in a thread)",
                        blocked,
                        self._describe(),
                    )
                continue
            if stalled_since is not None:
                _log_stall_end(self._answered_at - stalled_since)
                stalled_since = None
            if not self._ask():
                return
        if stalled_since is not None:
            # Stopped by the loop, which therefore runs again (perhaps not yet answered).
            answered_at = time.monotonic() if self._asked_at is not None else self._answered_at
            _log_stall_end(answered_at - stalled_since)

    def _ask(self) -> bool:
        """Ask the loop to answer; whether it can still be asked."""
        self._asked_at = time.monotonic()
        try:
            self._call_soon(self._answer)
        except (RuntimeError, trio.RunFinishedError):
            return False  # the loop has ended (the pool was torn down without stopping us)
        return True


def _log_stall_end(stalled_for: float) -> None:
    logger.info("the event loop runs again, after a stall of %.1f s", stalled_for)


class RaisedInThread(Exception):
    """Carries a ``BaseException`` that a sync handler raised in its thread back to the event
    loop as an ``Exception``.

    asyncio throws a thread's exception into the waiting task, and a thrown ``GeneratorExit``
    closes every coroutine on its way instead of reaching the pool.
    """

    def __init__(self, exception: BaseException) -> None:
        super().__init__(exception)
        self.exception = exception


def _run_in_thread(context: JobContext, call: Callable[[], JSON]) -> JSON:
    """Run a sync handler's ``call`` in its thread with ``context`` as the current job."""
    try:
        return run_with_context(context, call)
    except Exception:
        raise
    except BaseException as exc:
        raise RaisedInThread(exc) from None


def _raise_alone(error: BaseException) -> NoReturn:
    """Raise ``error`` from inside an ``except`` block, keeping its own cause and context."""
    chained = (error.__cause__, error.__context__, error.__suppress_context__)
    try:
        raise error
    finally:
        error.__cause__, error.__context__, error.__suppress_context__ = chained


def _loop_clock() -> Callable[[], float]:
    """The running event loop's clock: monotonic (a mock clock's in tests), and cheap enough
    to read on every attempt."""
    if sniffio.current_async_library() == "trio":
        # The clock's own method: trio.current_time reaches it through two more calls.
        return trio.lowlevel.current_clock().current_time
    return asyncio.get_running_loop().time


def _cancel_requests() -> int | None:
    """How many cancellations of the current asyncio task are pending (on asyncio only)."""
    task = asyncio.current_task()
    return None if task is None else task.cancelling()


def _forget_cancel_requests(before: int | None) -> None:
    """Withdraw the cancellations of the current asyncio task made since ``before`` was read:
    a handler that cancelled its own task (or had it cancelled) leaves the request pending,
    and the worker's next ``await`` would end it and stop the pool."""
    if before is None:
        return
    task = asyncio.current_task()
    while task is not None and task.cancelling() > before:
        task.uncancel()


def _is_own_cancellation(exc: BaseException, scope: Scope) -> bool:
    """Whether ``exc`` is the cancellation of ``scope`` (or of a scope around it), which must
    reach the scope that was cancelled, not one that a handler brought from elsewhere (a task
    someone else cancelled, a scope of its own)."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        if exc.split(cancelled)[1] is not None:
            return False  # not only cancellations: the handler's own error is in it
    elif not isinstance(exc, cancelled):
        return False
    return scope.cancel_called or anyio.current_effective_deadline() == -math.inf


def _is_ctrl_c(exc: BaseException) -> bool:
    """Whether ``exc`` is, or holds, a ``KeyboardInterrupt`` raised by the SIGINT handler: a
    real Ctrl-C that landed while a handler's code ran on the loop's thread, not one the
    handler raised itself.

    Such an interrupt comes out of the Python function installed for SIGINT (trio's, asyncio's
    runner's), whose frame is the innermost of its traceback.
    """
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_ctrl_c(inner) for inner in exc.exceptions)
    if not isinstance(exc, KeyboardInterrupt) or exc.__traceback__ is None:
        return False
    innermost = exc.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    return innermost.tb_frame.f_code is _code_of(signal.getsignal(signal.SIGINT))


def _code_of(function: object) -> object:
    """The code object that runs when ``function`` (a function, a bound method, or a partial
    of one) is called; ``None`` for a builtin."""
    while isinstance(function, functools.partial):
        function = function.func
    function = getattr(function, "__func__", function)
    return getattr(function, "__code__", None)


def _end_span(span: AttemptSpan, outcome: Outcome) -> None:
    """End an attempt's span with its outcome as the store will settle it (a retry with no
    attempts left fails the job)."""
    job = outcome.job
    event = end_attempt(
        outcome.event,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=False,
    )
    span.end(event.value, None if outcome.error is None else error_summary(outcome.error))


def _raised(job: Job, exc: BaseException, backoff: Backoff, duration: float) -> Outcome:
    """The outcome of an attempt whose handler raised ``exc``."""
    if isinstance(exc, Fail):
        return Outcome(job, Event.FAILED, error=_describe(exc), duration=duration)
    if isinstance(exc, Retry):
        delay = exc.delay if exc.delay is not None else backoff.delay(job.attempts)
        return Outcome(
            job, Event.RETRIED, error=_describe(exc), retry_delay=delay, duration=duration
        )
    return _failure(job, _describe(exc), backoff, duration)


def _failure(job: Job, error: str, backoff: Backoff, duration: float) -> Outcome:
    """A failed attempt, retried after the backoff if attempts are left."""
    delay = backoff.delay(job.attempts)
    return Outcome(job, Event.RETRIED, error=error, retry_delay=delay, duration=duration)


def _timed_out(job: Job, ran_for: float | None, in_process: bool) -> str:
    """The error of an attempt that ran past its timeout; ``ran_for``: how long its handler
    ran, if it ended by itself (a sync handler, or an async one that blocked the loop);
    ``in_process``: whether it ran in a worker process (which the timeout killed)."""
    if ran_for is None and in_process:
        return f"timed out after {job.timeout:g} s (its worker process was killed)"
    if ran_for is None:
        return f"timed out after {job.timeout:g} s (attempt cancelled)"
    return f"timed out after {job.timeout:g} s (the handler ran for {ran_for:.3g} s)"


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _describe(exc: BaseException) -> str:
    """The exception and its traceback as text SQLite can store (lone surrogates escaped)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text.encode("utf-8", "backslashreplace").decode()
