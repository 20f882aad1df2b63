"""The store: the persistence actor, the only code that writes to the database (DESIGN §3).

It takes commands from one channel. After the first command it drains whatever else is already
waiting (up to :data:`BATCH_LIMIT`), applies the whole batch in one transaction through
:func:`apply_batch` (a plain synchronous function, run on the SQL thread), commits, and only then
replies to each command and announces what changed. That is group commit: under load many
enqueues, claims and outcomes share one commit, and an acknowledged command is durable.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import DatabaseError, QueueClosed, QueueFull
from .._events import Change
from .._job import Job
from .._storage.sqlite import CancelResult, NewJob, Writer
from .messages import (
    Cancel,
    CancelRunning,
    Claim,
    Claimed,
    DispatcherMessage,
    Enqueue,
    NextDue,
    Outcome,
    Ping,
    Progress,
    Purge,
    Reply,
    Requeue,
    Stop,
    StoreCommand,
    WorkReady,
    tell,
)

logger = logging.getLogger("conveyor")

BATCH_LIMIT: Final = 512
"""Most commands applied in one transaction: bounds a batch's latency and memory."""

T = TypeVar("T")
SqlRunner = Callable[[Callable[[], T]], Awaitable[T]]
"""Runs a synchronous database function somewhere (a thread, or inline) and returns its value."""

Listener = Callable[[Sequence[Change]], None]


@attrs.define
class Effects:
    """What one committed batch did, for the store to announce on the event loop."""

    replies: list[tuple[Reply[Any], object]] = attrs.Factory(list)
    failures: list[tuple[Reply[Any], BaseException]] = attrs.Factory(list)
    claimed: list[Claimed] = attrs.Factory(list)
    cancel_running: list[int] = attrs.Factory(list)
    changes: list[Change] = attrs.Factory(list)
    work_ready: bool = False
    next_due: NextDue | None = None
    stopped: bool = False

    def merge(self, other: Effects) -> None:
        """Add what ``other`` (one command's effects) did to these."""
        self.replies += other.replies
        self.failures += other.failures
        self.claimed += other.claimed
        self.cancel_running += other.cancel_running
        self.changes += other.changes
        self.work_ready = self.work_ready or other.work_ready
        self.stopped = self.stopped or other.stopped


def apply_batch(
    writer: Writer, commands: Sequence[StoreCommand], now: float, max_pending: float
) -> Effects:
    """Apply ``commands`` in one transaction and commit; on a database error roll back and raise.

    Each command runs in a savepoint: one that fails (queue full, a value SQLite refuses,
    commands after :class:`Stop`) fails its own reply only; the others still commit. When the
    database itself fails (I/O, disk full, locked), the whole batch is rolled back and raised.
    """
    effects = Effects()
    due_before = writer.next_due
    writer.begin()
    try:
        for command in commands:
            if effects.stopped:
                if (reply := getattr(command, "reply", None)) is not None:
                    effects.failures.append((reply, QueueClosed("the queue is closed")))
                continue
            _apply_alone(writer, command, now, max_pending, effects)
        # After a claim the timer hears even an unchanged due time: the claim may have come
        # from its wake-up, which it forgets once fired.
        if writer.next_due != due_before or effects.claimed:
            effects.next_due = NextDue(writer.next_due)
        writer.commit()
    except BaseException:
        writer.rollback()
        raise
    return effects


def _apply_alone(
    writer: Writer, command: StoreCommand, now: float, max_pending: float, effects: Effects
) -> None:
    """Apply one command in a savepoint; if it fails, undo it alone and answer for it."""
    own = Effects()
    with writer.savepoint() as undone:
        _apply(writer, command, now, max_pending, own)
    if undone.error is None:
        effects.merge(own)
        return
    error = undone.error
    logger.error("conveyor could not apply %r: %r", command, error)
    if isinstance(command, Outcome):
        # The attempt ended but its outcome cannot be stored as it is: record a plain failure,
        # so that the job does not stay running.
        stored_as = f"conveyor could not store this attempt's outcome ({error!r})"
        with writer.savepoint() as fallback:
            _apply(
                writer,
                attrs.evolve(
                    command, kind="failed", result_json=None, error=stored_as, progress=None
                ),
                now,
                max_pending,
                own,
            )
        if fallback.error is not None:
            raise fallback.error
        effects.merge(own)
    elif isinstance(command, Claim | Stop):
        raise error
    elif (reply := getattr(command, "reply", None)) is not None:
        effects.failures.append(
            (reply, DatabaseError(f"the database refused this command: {error}"))
        )


def _apply(
    writer: Writer, command: StoreCommand, now: float, max_pending: float, effects: Effects
) -> None:
    if isinstance(command, Outcome):
        change = writer.record_outcome(
            command.job_id,
            command.attempt,
            now,
            kind=command.kind,
            result_json=command.result_json,
            error=command.error,
            retry_delay=command.retry_delay,
            progress=command.progress,
        )
        if change is None:
            logger.info(
                "ignored a stale outcome (%s) of job %d attempt %d: the job is no longer "
                "running that attempt",
                command.kind,
                command.job_id,
                command.attempt,
            )
            return
        effects.changes.append(change)
        if change.kind == "interrupted" or (
            change.kind == "retried"
            and command.retry_delay is not None
            and command.retry_delay <= 0
        ):
            effects.work_ready = True
    elif isinstance(command, Claim):
        jobs = writer.claim(command.limit, now)
        effects.claimed.append(Claimed(jobs, command.limit))
        effects.changes.extend(
            Change("started", job.id, job.name, waited=max(now - job.run_at, 0.0)) for job in jobs
        )
    elif isinstance(command, Progress):
        latest = command.slot.take()
        if latest is not None:
            writer.record_progress(command.job_id, command.attempt, *latest)
    elif isinstance(command, Enqueue):
        try:
            results, inserted = _enqueue(writer, command.jobs, now, max_pending)
        except QueueFull as exc:
            effects.failures.append((command.reply, exc))
            return
        effects.replies.append((command.reply, results))
        effects.changes.extend(Change("enqueued", job.id, job.name) for job in inserted)
        effects.work_ready = effects.work_ready or any(job.run_at <= now for job in inserted)
    elif isinstance(command, Cancel):
        outcome = writer.cancel(command.job_id, now)
        if outcome == CancelResult.CANCELLED:
            effects.changes.append(
                Change("cancelled", command.job_id, writer.name_of(command.job_id))
            )
        elif outcome == CancelResult.RUNNING:
            effects.cancel_running.append(command.job_id)
        effects.replies.append((command.reply, outcome != CancelResult.NOT_CANCELLABLE))
    elif isinstance(command, Requeue):
        requeued = writer.requeue(command.job_id, now)
        if requeued:
            effects.changes.append(
                Change("requeued", command.job_id, writer.name_of(command.job_id))
            )
            effects.work_ready = True
        effects.replies.append((command.reply, requeued))
    elif isinstance(command, Purge):
        effects.replies.append((command.reply, writer.purge(now - command.older_than)))
    elif isinstance(command, Ping):
        writer.touch()
        effects.replies.append((command.reply, None))
    elif isinstance(command, Stop):
        effects.stopped = True
        effects.replies.append((command.reply, None))


def _enqueue(
    writer: Writer, jobs: Sequence[NewJob], now: float, max_pending: float
) -> tuple[list[Job], list[Job]]:
    """Insert ``jobs``; a job whose idempotency key is taken is answered by the job holding it.

    Returns the job answering each of ``jobs`` in order, and the jobs actually inserted.
    """
    results: list[Job | int] = []  # a Job already stored, or an index into ``fresh``
    fresh: list[NewJob] = []
    fresh_by_key: dict[str, int] = {}
    for new in jobs:
        key = new.idempotency_key
        if key is not None:
            if key in fresh_by_key:
                results.append(fresh_by_key[key])
                continue
            existing = writer.find_by_key(key)
            if existing is not None:
                results.append(existing)
                continue
            fresh_by_key[key] = len(fresh)
        results.append(len(fresh))
        fresh.append(new)
    if fresh and writer.pending_count + len(fresh) > max_pending:
        raise QueueFull(
            f"the queue is full: it holds {writer.pending_count} pending jobs and max_pending is "
            f"{max_pending:g}, so {len(fresh)} more were refused and nothing was written"
        )
    inserted = writer.insert(fresh, now)
    return [inserted[item] if isinstance(item, int) else item for item in results], inserted


class Store:
    """The persistence actor."""

    def __init__(
        self,
        writer: Writer,
        *,
        run_sql: SqlRunner[Effects],
        clock: Callable[[], float],
        commands: MemoryObjectReceiveStream[StoreCommand],
        dispatcher: MemoryObjectSendStream[DispatcherMessage],
        timer: MemoryObjectSendStream[NextDue],
        listeners: Sequence[Listener],
        max_pending: int | None,
    ) -> None:
        self._writer = writer
        self._run_sql = run_sql
        self._clock = clock
        self._commands = commands
        self._dispatcher = dispatcher
        self._timer = timer
        self._listeners = listeners
        self._max_pending = math.inf if max_pending is None else max_pending

    async def run(self) -> None:
        """Apply batches until a :class:`Stop` is committed; refuse what comes after it."""
        try:
            async for first in self._commands:
                if not await self._apply(first):
                    break
        finally:
            # Every command already accepted into the channel gets an answer before it closes.
            self._refuse_remaining()
            self._commands.close()

    def _drain(self, first: StoreCommand) -> list[StoreCommand]:
        batch = [first]
        while len(batch) < BATCH_LIMIT:
            try:
                batch.append(self._commands.receive_nowait())
            except anyio.WouldBlock:
                break
        return batch

    async def _apply(self, first: StoreCommand) -> bool:
        """Apply and announce the batch that begins with ``first``; False once stopped."""
        # A batch in flight is never abandoned: cancellation waits until it is committed and
        # every caller has its answer.
        with anyio.CancelScope(shield=True):
            # One scheduler turn lets tasks that are already runnable (workers that just
            # finished, producers) add their commands to this batch.
            await anyio.lowlevel.checkpoint()
            batch = self._drain(first)
            now = self._clock()
            try:
                effects = await self._run_sql(
                    lambda: apply_batch(self._writer, batch, now, self._max_pending)
                )
            except BaseException as exc:
                error = DatabaseError(f"writing to {self._writer.path} failed: {exc!r}")
                for command in batch:
                    if (reply := getattr(command, "reply", None)) is not None:
                        reply.fail(error)
                raise error from exc
            self._announce(effects)
        return not effects.stopped

    def _announce(self, effects: Effects) -> None:
        for reply, value in effects.replies:
            reply.set(value)
        for reply, error in effects.failures:
            reply.fail(error)
        for claimed in effects.claimed:
            tell(self._dispatcher, claimed)
        for job_id in effects.cancel_running:
            tell(self._dispatcher, CancelRunning(job_id))
        if effects.work_ready:
            tell(self._dispatcher, WorkReady())
        if effects.next_due is not None:
            tell(self._timer, effects.next_due)
        if effects.changes:
            for listener in list(self._listeners):
                try:
                    listener(effects.changes)
                except Exception:
                    # A subscriber's bug must not stop the queue; it is logged and skipped.
                    logger.exception("a conveyor listener raised; it stays subscribed")

    def _refuse_remaining(self) -> None:
        while True:
            try:
                command = self._commands.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream):
                return
            if (reply := getattr(command, "reply", None)) is not None:
                reply.fail(QueueClosed("the queue is closed"))
