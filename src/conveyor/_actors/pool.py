"""The worker pool: the slots that run jobs, and their one conversation with the store (DESIGN §3).

It owns a ready buffer of claimed jobs, the running attempts (with the cancel scopes a cancel or
shutdown goes through) and a buffer of ended attempts' outcomes. Worker tasks take the next job
from the ready buffer without a channel hop, and a finished attempt appends its outcome and
frees its slot without a message. The pool talks to the store in batches: one :class:`Report`
("these outcomes and progress; claim jobs for ``more`` free slots") and, back, one
:class:`News` ("these jobs are yours"). Up to :data:`REPORTS_IN_FLIGHT` reports are in flight,
so a slot that frees while the store works on a report is asked for in the next one.

It keeps no copy of pending jobs and asks only for slots that are free, so what it runs is
always the best ready jobs (DESIGN §4, invariant 4).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from typing import Final, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._context import JobContext, enter_context, leave_context, run_with_context
from .._errors import NotJSONSerializable, UnknownHandler
from .._fastpath import Scope, Signal, primitives
from .._job import Event, Job, encode_json
from .._registry import Registry
from .._retry import Backoff, Fail, Retry
from .._sqlthread import call_soon_threadsafe
from .._storage.sqlite import Outcome
from .messages import (
    Close,
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

StopReason = Literal["cancel", "shutdown"]


class Attempt:
    """One running attempt: its job, its cancel scope, why it was stopped, and its progress.

    ``reason`` is written by the pool just before it cancels ``scope`` and read by the worker
    after the scope exits. ``progress`` may be written from a handler's thread: a single
    attribute store, which the GIL makes atomic.
    """

    __slots__ = ("job", "progress", "progress_told", "reason", "scope")

    def __init__(self, job: Job, scope: Scope) -> None:
        self.job = job
        self.scope = scope
        self.reason: StopReason | None = None
        self.progress: tuple[float, str | None] | None = None
        self.progress_told = False


class Pool:
    """The worker-pool actor: ``slots`` workers running the handlers of ``registry``."""

    def __init__(
        self,
        *,
        registry: Registry,
        slots: int,
        inbox: MemoryObjectReceiveStream[PoolMessage],
        to_self: MemoryObjectSendStream[PoolMessage],
        store: MemoryObjectSendStream[StoreCommand],
    ) -> None:
        self._registry = registry
        self._slots = slots
        self._inbox = inbox
        self._to_self = to_self
        self._store = store
        self._ready: collections.deque[Job] = collections.deque()
        self._running: dict[int, Attempt] = {}
        self._outcomes: list[Outcome] = []
        self._progress: list[Attempt] = []
        self._owed = 0
        """Slots the store was asked to claim jobs for and has not answered with a job yet."""
        self._in_flight = 0
        self._flush_asked = False
        self._fast = primitives()
        self._job_arrived: Signal = self._fast.event()
        self._closing: anyio.Event | None = None
        self._released = False
        self._threads = anyio.CapacityLimiter(slots)
        self._loop_thread = threading.get_ident()
        self._call_soon: Callable[[Callable[[], object]], object] = call_soon_threadsafe()

    async def run(self) -> None:
        async with self._inbox, self._to_self, anyio.create_task_group() as workers:
            for _ in range(self._slots):
                workers.start_soon(self._work)
            await self._report()
            async for message in self._inbox:
                self._handle(message)
                while True:
                    try:
                        self._handle(self._inbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                await self._report()
                if self._closing is not None and self._is_idle():
                    self._closing.set()
            workers.cancel_scope.cancel()

    # --- messages ----------------------------------------------------------------------------
    def _handle(self, message: PoolMessage) -> None:
        if isinstance(message, News):
            # Clamped: a report made outside the pool (a test's stale outcome) is answered too.
            self._in_flight = max(self._in_flight - message.answered, 0)
            self._owed = 0 if message.released else self._owed - len(message.claimed)
            if self._closing is not None:
                # Claimed just before the pool began to close: give the jobs back untouched.
                self._outcomes += [Outcome(job, Event.INTERRUPTED) for job in message.claimed]
            elif message.claimed:
                self._ready.extend(message.claimed)
                self._job_arrived.set()
                self._job_arrived = self._fast.event()
            for job_id in message.cancel:
                self._cancel(job_id, "cancel")
        elif isinstance(message, Flush):
            self._flush_asked = False
        elif isinstance(message, Close):
            self._closing = message.idle
            self._outcomes += [Outcome(job, Event.INTERRUPTED) for job in self._ready]
            self._ready.clear()
        elif isinstance(message, InterruptAll):
            for job_id in list(self._running):
                self._cancel(job_id, "shutdown")

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
                self._outcomes.append(Outcome(job, Event.CANCELLED))
                return
        # Otherwise its attempt already ended, and the store settles that end as cancelled.

    async def _report(self) -> None:
        """Send the store what waits for it and ask for the free slots, unless enough reports
        are in flight already (the answer to one of them brings the pool back here)."""
        if self._in_flight >= REPORTS_IN_FLIGHT:
            return
        release = self._closing is not None and not self._released
        more = 0
        if self._closing is None:
            more = self._slots - len(self._running) - len(self._ready) - self._owed
        progress = self._take_progress()
        if not (self._outcomes or progress or more > 0 or release):
            return
        outcomes, self._outcomes = self._outcomes, []
        self._owed += max(more, 0)
        self._in_flight += 1
        self._released = self._released or release
        report = Report(outcomes, progress, max(more, 0), release)
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
            tell(self._to_self, Flush())

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
                    attempt = await self._next_attempt(scope)
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
        while not self._ready:
            await self._job_arrived.wait()
        job = self._ready.popleft()
        attempt = Attempt(job, scope)
        self._running[job.id] = attempt
        if job.timeout is not None:
            scope.deadline = anyio.current_time() + job.timeout
        logger.debug("job %d (%s) attempt %d starts", job.id, job.name, job.attempts)
        return attempt

    def _end(self, attempt: Attempt, finished: Outcome | None) -> bool:
        """Settle how ``attempt`` ended (``finished``: what the handler did, if it returned);
        whether its scope was cancelled (and so cannot be used again)."""
        job, scope = attempt.job, attempt.scope
        cancelled = scope.cancel_called
        del self._running[job.id]
        # A sync handler cannot be interrupted, so a cancel or timeout can arrive while it runs
        # and find it finished: the cancel and the timeout still win. Shutdown does not discard
        # finished work.
        if attempt.reason == "cancel":
            outcome = Outcome(job, Event.CANCELLED)
        elif attempt.reason is None and cancelled:
            timeout = f"timed out after {job.timeout:g} s (attempt cancelled)"
            outcome = _failure(job, timeout, self._backoff_of(job))
        elif finished is not None:
            outcome = finished
        else:
            outcome = Outcome(job, Event.INTERRUPTED)
        if job.timeout is not None and not cancelled:
            scope.deadline = math.inf
        if attempt.progress is not None:
            outcome = attrs.evolve(outcome, progress=attempt.progress)
        self._outcomes.append(outcome)
        self._ask_flush()
        return cancelled

    def _backoff_of(self, job: Job) -> Backoff:
        return self._registry[job.name].backoff if job.name in self._registry else Backoff()

    async def _attempt(self, attempt: Attempt) -> Outcome:
        """Run the handler once; the outcome of a return or a raise (cancellation propagates)."""
        job = attempt.job
        try:
            handler = self._registry[job.name]
        except UnknownHandler as exc:
            return _failure(job, f"{exc}\n(in the process that claimed it)", Backoff())
        context = JobContext(
            job.id, job.name, job.attempts, job.payload, functools.partial(self._note, attempt)
        )
        try:
            if handler.is_async:
                token = enter_context(context)
                try:
                    result = await handler.function(job.payload)
                finally:
                    leave_context(token)
            else:
                call = functools.partial(handler.function, job.payload)
                result = await anyio.to_thread.run_sync(
                    run_with_context, context, call, limiter=self._threads
                )
        except Fail as exc:
            return Outcome(job, Event.FAILED, error=_describe(exc))
        except Retry as exc:
            delay = exc.delay if exc.delay is not None else handler.backoff.delay(job.attempts)
            return Outcome(job, Event.RETRIED, error=_describe(exc), retry_delay=delay)
        except Exception as exc:
            return _failure(job, _describe(exc), handler.backoff)
        try:
            result_json = encode_json(result, f"the result of job {job.id} ({job.name!r})")
        except NotJSONSerializable as exc:
            # Not retried: the handler did its work, and running it again would repeat its
            # side effects only to return the same value.
            return Outcome(job, Event.FAILED, error=str(exc))
        return Outcome(job, Event.COMPLETED, result_json)

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


def _failure(job: Job, error: str, backoff: Backoff) -> Outcome:
    """A failed attempt, retried after the backoff if attempts are left."""
    return Outcome(job, Event.RETRIED, error=error, retry_delay=backoff.delay(job.attempts))


def _describe(exc: BaseException) -> str:
    """The exception and its traceback as text SQLite can store (lone surrogates escaped)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text.encode("utf-8", "backslashreplace").decode()
