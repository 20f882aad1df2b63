"""Workers: each runs one claimed job's handler at a time and reports its outcome (DESIGN §3).

A worker never touches the database: it sends the outcome to the store, then tells the
dispatcher its slot is free. The handler runs inside the cancel scope the dispatcher owns (a
cancel or the end of shutdown's grace) and, within it, the job's timeout.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._context import JobContext, enter_context, leave_context, run_with_context
from .._errors import NotJSONSerializable, UnknownHandler
from .._job import Job, encode_json
from .._registry import Handler, Registry
from .._retry import Backoff, Fail, Retry
from .messages import (
    Assignment,
    DispatcherMessage,
    Outcome,
    Progress,
    ProgressSlot,
    SlotFree,
    StoreCommand,
    tell,
)

logger = logging.getLogger("conveyor")


class Worker:
    def __init__(
        self,
        *,
        registry: Registry,
        assignments: MemoryObjectReceiveStream[Assignment],
        store: MemoryObjectSendStream[StoreCommand],
        dispatcher: MemoryObjectSendStream[DispatcherMessage],
    ) -> None:
        self._registry = registry
        self._assignments = assignments
        self._store = store
        self._dispatcher = dispatcher
        self._loop_thread = threading.get_ident()
        self._token = anyio.lowlevel.current_token()

    async def run(self) -> None:
        async with self._assignments:
            async for assignment in self._assignments:
                outcome = await self._run(assignment)
                await self._store.send(outcome)
                # Told at once, so that the dispatcher's claim for the free slot can join the
                # store's batch that carries this outcome.
                tell(self._dispatcher, SlotFree(assignment.job.id))

    async def _run(self, assignment: Assignment) -> Outcome:
        job = assignment.job
        try:
            handler = self._registry[job.name]
        except UnknownHandler as exc:
            return _failure(job, f"{exc}\n(in the process that claimed it)", Backoff())
        slot = ProgressSlot()
        context = JobContext(
            job.id, job.name, job.attempts, job.payload, functools.partial(self._report, job, slot)
        )
        finished: Outcome | None = None
        logger.debug("job %d (%s) attempt %d starts", job.id, job.name, job.attempts)
        scope = assignment.scope
        if job.timeout is not None:
            scope.deadline = anyio.current_time() + job.timeout
        with scope:
            finished = await _attempt(job, handler, context)
        # A sync handler cannot be interrupted, so a cancel or timeout can arrive while it runs
        # and find it finished: the cancel and the timeout still win. Shutdown does not discard
        # finished work.
        if assignment.reason == "cancel":
            outcome = Outcome(job.id, job.attempts, "cancelled")
        elif assignment.reason is None and scope.cancel_called:
            timeout = f"timed out after {job.timeout:g} s (attempt cancelled)"
            outcome = _failure(job, timeout, handler.backoff)
        elif finished is not None:
            outcome = finished
        else:
            outcome = Outcome(job.id, job.attempts, "interrupted")
        return Outcome(
            outcome.job_id,
            outcome.attempt,
            outcome.kind,
            result_json=outcome.result_json,
            error=outcome.error,
            retry_delay=outcome.retry_delay,
            progress=slot.take(),
        )

    def _report(self, job: Job, slot: ProgressSlot, fraction: float, message: str | None) -> None:
        if not slot.put(fraction, message):
            return
        if threading.get_ident() == self._loop_thread:
            self._queue_progress(job, slot)
        else:
            anyio.from_thread.run_sync(self._queue_progress, job, slot, token=self._token)

    def _queue_progress(self, job: Job, slot: ProgressSlot) -> None:
        try:
            self._store.send_nowait(Progress(job.id, job.attempts, slot))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The store is saturated or closing: the next report tries again, and the outcome
            # carries the latest report in any case.
            slot.unqueue()


async def _attempt(job: Job, handler: Handler, context: JobContext) -> Outcome:
    """Run the handler once; the outcome of a return or a raise (cancellation propagates)."""
    try:
        if handler.is_async:
            token = enter_context(context)
            try:
                result = await handler.function(job.payload)
            finally:
                leave_context(token)
        else:
            call = functools.partial(handler.function, job.payload)
            result = await anyio.to_thread.run_sync(run_with_context, context, call)
    except Fail as exc:
        return Outcome(job.id, job.attempts, "failed", error=_describe(exc))
    except Retry as exc:
        delay = exc.delay if exc.delay is not None else handler.backoff.delay(job.attempts)
        return Outcome(job.id, job.attempts, "failed", error=_describe(exc), retry_delay=delay)
    except Exception as exc:
        return _failure(job, _describe(exc), handler.backoff)
    try:
        result_json = encode_json(result, f"the result of job {job.id} ({job.name!r})")
    except NotJSONSerializable as exc:
        # Not retried: the handler did its work, and running it again would repeat its
        # side effects only to return the same value.
        return Outcome(job.id, job.attempts, "failed", error=str(exc))
    return Outcome(job.id, job.attempts, "completed", result_json=result_json)


def _failure(job: Job, error: str, backoff: Backoff) -> Outcome:
    """A failed attempt, retried after the backoff if attempts are left."""
    return Outcome(
        job.id, job.attempts, "failed", error=error, retry_delay=backoff.delay(job.attempts)
    )


def _describe(exc: BaseException) -> str:
    """The exception and its traceback as text SQLite can store (lone surrogates escaped)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text.encode("utf-8", "backslashreplace").decode()
