"""The store: the persistence actor, the only code that writes to the database (DESIGN §3).

It takes commands from one channel. After the first command it drains whatever else is already
waiting (up to :data:`BATCH_LIMIT`), applies the whole batch in one transaction through
:func:`prepare_batch` and :func:`commit_batch` (plain synchronous functions), and only then
replies to each command and announces what changed. A small batch runs on the event loop's
thread, where it costs less than the hop to the SQL thread would; a large one, a batch that
would wait for another connection's lock, and the WAL checkpoints run on the SQL thread, so the
loop never waits on the disk or a lock. That is group commit: under load many enqueues, claims
and outcomes share one commit, and an acknowledged command is durable. At
``synchronous="full"`` the commit does not sync: :meth:`Store.sync_commits` syncs on a thread
of its own while the store goes on, and answers each batch after the sync that covers it.

The store also holds the worker pool's standing claim: how many free slots the pool asked jobs
for and has not yet been given. Whenever a batch may have made jobs ready (an enqueue, a retry,
a due time, freed slots), the batch ends by claiming the best ready jobs for those slots, in the
same transaction, so a job enqueued into an idle queue starts one commit later.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.lowlevel
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._doorbell import CANCEL, CHANGED, READY, DoorbellLike
from .._errors import (
    DatabaseError,
    DatabaseUnavailable,
    IdempotencyConflict,
    JobNotFound,
    QueueClosed,
    QueueFull,
)
from .._events import Change, Changes
from .._job import JSON, Event, Job, JobStatus
from .._limits import Limits
from .._storage.sqlite import (
    CancelResult,
    Fault,
    LogNote,
    NewJob,
    Outcome,
    Writer,
    WriterBusy,
)
from .mailbox import Mailbox
from .messages import (
    Cancel,
    CancelQueued,
    DropSchedule,
    Enqueue,
    Heartbeat,
    Look,
    News,
    NextDue,
    Ping,
    Purge,
    Reply,
    Report,
    Requeue,
    RequeueFailed,
    SetPaused,
    SetSchedule,
    Stop,
    StoreCommand,
    Tick,
    tell,
)

logger = logging.getLogger("conveyor")

BATCH_LIMIT: Final = 512
"""Most commands applied in one transaction: bounds a batch's latency and memory."""

INLINE_ROWS: Final = 64
"""Batches that write at most this many rows run on the event loop's thread, when the queue
allows it: a hop to the SQL thread and back costs more than such a batch (about 150 µs against
about 150 µs for eight completions and eight claims), and the loop is held for well under a
millisecond. Larger batches, and any that would wait for another connection's lock, go to the
SQL thread."""

RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 2.0
"""Held reports are tried again after 50 ms, doubling up to 2 s, while writes fail."""

SYNC_SPACING: Final = 0.001
"""Seconds between one sync and the next when the store committed again while the first ran
(``synchronous="full"``, under load). A sync's end wakes the event loop's thread through the
GIL, which costs about 0.4 ms of CPU in all while the loop is busy; the pause lets one sync
cover more commits, for as much more wait for an answer. Otherwise (a caller that waits for
each answer, say) the next commit is synced at once."""

CHECKPOINT_PAGES: Final = 1000
"""WAL pages written between checkpoints (SQLite's own default), as :func:`pages_written`
estimates them. The checkpoint runs on the SQL thread, never on the loop."""

T = TypeVar("T")


class SqlRunner(Protocol):
    """Runs a synchronous database function somewhere (a thread, or inline); its value."""

    def __call__(self, function: Callable[[], T], /) -> Awaitable[T]: ...


Listener = Callable[[Sequence[Change]], None]


@attrs.frozen
class Claims:
    """The pool's standing claim: ``wanted`` free slots, and whether jobs ``may_be_ready`` for
    them (false once a claim came back short, until something makes a job ready)."""

    wanted: int = 0
    may_be_ready: bool = True


@attrs.define
class Effects:
    """What one batch did, for the store to announce on the event loop once it is committed."""

    claims: Claims
    replies: list[tuple[Reply[Any], object]] = attrs.Factory(list)
    failures: list[tuple[Reply[Any], BaseException]] = attrs.Factory(list)
    claimed: list[Job] = attrs.Factory(list)
    dependency_results: dict[int, dict[int, JSON]] = attrs.Factory(dict)
    reports: int = 0
    released: bool = False
    cancel_running: list[int] = attrs.Factory(list)
    paused: list[str] = attrs.Factory(list)
    changes: Changes = attrs.Factory(Changes)
    stopped: bool = False
    limited: bool = False
    """Limits or pauses apply to claims: any attempt's end may let a held-back job start."""
    rings: set[str] = attrs.Factory(set)
    """The news for the other processes on the file (the kinds of :mod:`.._doorbell`)."""
    doorbells: list[tuple[str, bool]] = attrs.Factory(list)
    """The other owners' doorbells, each with whether it runs handlers, read if news rings."""
    fenced: bool = False
    notes: list[LogNote] = attrs.Factory(list)
    """Log records of the batch, emitted once it is committed."""

    def wake(self) -> None:
        """Jobs may have become ready: the batch's end claims for the slots the pool wants."""
        if not self.claims.may_be_ready:
            self.claims = attrs.evolve(self.claims, may_be_ready=True)

    def want(self, more: int, *, release: bool) -> None:
        wanted = 0 if release else self.claims.wanted + more
        self.claims = Claims(wanted, self.claims.may_be_ready or more > 0)


def prepare_batch(
    writer: Writer,
    commands: Sequence[StoreCommand],
    now: float,
    max_pending: float,
    claims: Claims,
    *,
    wait_for_lock: bool = True,
    limits: Mapping[str, Limits] | None = None,
) -> Effects:
    """Apply ``commands`` in a transaction and claim for the pool's free slots (within the
    handlers' ``limits``), leaving the transaction open for :func:`commit_batch`.

    The batch is applied optimistically, without a savepoint per command. Only when a command
    fails (queue full, a value SQLite refuses, commands after :class:`Stop`) is the batch
    rolled back and replayed command by command, each in a savepoint, so that the bad one
    fails its own reply only and the others still commit. When the database itself fails
    (I/O, disk full, locked), the batch is rolled back and the error raised. With
    ``wait_for_lock=False``, a write lock held by another connection raises
    :class:`WriterBusy` before anything is done.
    """
    writer.begin(wait=wait_for_lock)
    writer.notes.clear()
    limited = bool(writer.paused) or any(lim.limits_claims for lim in (limits or {}).values())
    try:
        # Taken over by another process: outcomes of the old lease are refused, and what
        # this batch claims is claimed by the new one.
        fenced = _fence_if_lost(writer, now)
        try:
            effects = _apply_all(
                writer, commands, now, max_pending, Effects(claims, limited=limited)
            )
        except writer.faults:
            raise
        except Exception:
            writer.rollback()
            writer.begin()
            writer.notes.clear()
            fenced = _fence_if_lost(writer, now) or fenced
            effects = _replay_one_by_one(
                writer, commands, now, max_pending, Effects(claims, limited=limited)
            )
        effects.fenced = effects.fenced or fenced
        if writer.next_tick is not None and writer.next_tick <= now:
            fired = writer.fire_schedules(now)
            effects.changes += fired
            effects.wake()
            if fired:
                effects.rings.add(READY)
        _claim_for_pool(writer, now, effects, limits)
        if effects.changes:
            effects.rings.add(CHANGED)
        if effects.rings:
            effects.doorbells = writer.announce(effects.rings)
        effects.notes = list(writer.notes)
    except BaseException:
        writer.rollback()
        raise
    return effects


def commit_batch(writer: Writer) -> None:
    """Commit the transaction :func:`prepare_batch` left open; if that fails, roll it back
    (the counters with it) and raise."""
    try:
        writer.commit()
    except BaseException:
        writer.rollback()
        raise


def _apply_all(
    writer: Writer,
    commands: Sequence[StoreCommand],
    now: float,
    max_pending: float,
    effects: Effects,
) -> Effects:
    for command in commands:
        if effects.stopped:
            _refuse_after_stop(command, effects)
        else:
            _apply(writer, command, now, max_pending, effects)
    return effects


def _replay_one_by_one(
    writer: Writer,
    commands: Sequence[StoreCommand],
    now: float,
    max_pending: float,
    effects: Effects,
) -> Effects:
    for command in commands:
        if effects.stopped:
            _refuse_after_stop(command, effects)
            continue
        own = Effects(effects.claims, limited=effects.limited)
        with writer.savepoint() as undone:
            _apply(writer, command, now, max_pending, own)
        if undone.error is None:
            _merge(effects, own)
        else:
            _answer_failed_command(writer, command, now, max_pending, undone.error, effects)
    return effects


def _merge(effects: Effects, own: Effects) -> None:
    effects.claims = own.claims
    effects.paused += own.paused
    effects.replies += own.replies
    effects.failures += own.failures
    effects.reports += own.reports
    effects.released = effects.released or own.released
    effects.cancel_running += own.cancel_running
    effects.changes += own.changes
    effects.stopped = own.stopped
    effects.rings |= own.rings
    effects.fenced = effects.fenced or own.fenced


def _answer_failed_command(
    writer: Writer,
    command: StoreCommand,
    now: float,
    max_pending: float,
    error: Exception,
    effects: Effects,
) -> None:
    logger.error("conveyor could not apply %r: %r", command, error)
    if isinstance(command, Report):
        # The attempts ended but their outcomes cannot be stored as they are: record plain
        # failures, so that no job stays running, and keep the report's slots and release.
        stored_as = f"conveyor could not store this attempt's outcome ({error!r})"
        plain = Report(
            [
                Outcome(outcome.job, Event.FAILED, error=stored_as, duration=outcome.duration)
                for outcome in command.outcomes
            ],
            [],
            command.more,
            command.release,
        )
        own = Effects(effects.claims, limited=effects.limited)
        with writer.savepoint() as fallback:
            _apply(writer, plain, now, max_pending, own)
        if fallback.error is not None:
            raise fallback.error
        _merge(effects, own)
    elif isinstance(command, Tick | Stop | Heartbeat | Look):
        raise error
    elif (reply := getattr(command, "reply", None)) is not None:
        effects.failures.append(
            (reply, DatabaseError(f"the database refused this command: {error}"))
        )


def _refuse_after_stop(command: StoreCommand, effects: Effects) -> None:
    if (reply := getattr(command, "reply", None)) is not None:
        effects.failures.append((reply, QueueClosed("the queue is closed")))


def _apply(
    writer: Writer,
    command: StoreCommand,
    now: float,
    max_pending: float,
    effects: Effects,
) -> None:
    if isinstance(command, Report):
        changes = writer.end_attempts(command.outcomes, now)
        if any(change.status is JobStatus.PENDING for change in changes):
            # A retry without delay, a job given back by shutdown, or a job released: ready
            # again at once.
            effects.wake()
            effects.rings.add(READY)
        elif command.outcomes and effects.limited:
            # Under limits, any end may make room for a job held back.
            effects.wake()
        effects.changes += changes
        if command.progress:
            writer.record_progress(command.progress)
        effects.want(command.more, release=command.release)
        effects.reports += 1
        effects.released = effects.released or command.release
    elif isinstance(command, Enqueue):
        try:
            results, inserted, born = _enqueue(writer, command.jobs, now, max_pending)
        except (QueueFull, JobNotFound, IdempotencyConflict) as exc:
            if isinstance(exc, QueueFull):
                writer.notes.append(
                    LogNote(logging.WARNING, "%s", (exc,), {"conveyor_event": "queue_full"})
                )
            effects.failures.append((command.reply, exc))
            return
        inserted_ids = {job.id for job in inserted}
        command.found.clear()  # a batch replayed command by command applies it again
        command.found.update(job.id for job in results if job.id not in inserted_ids)
        effects.replies.append((command.reply, results))
        effects.changes += born
        if inserted:
            # Other processes claim the ready ones, and learn when the others come due.
            effects.rings.add(READY)
        if any(job.status is JobStatus.PENDING and job.run_at <= now for job in inserted):
            effects.wake()
    elif isinstance(command, Tick):
        effects.wake()
    elif isinstance(command, Heartbeat):
        _beat(writer, now, effects)
    elif isinstance(command, Look):
        if command.ready:
            effects.wake()
        if command.cancels:
            effects.cancel_running += writer.cancels_requested()
    elif isinstance(command, Cancel):
        outcome, changes = writer.cancel(command.job_id, now)
        effects.changes += changes
        if outcome == CancelResult.RUNNING:
            effects.cancel_running.append(command.job_id)
        elif outcome == CancelResult.RUNNING_ELSEWHERE:
            effects.rings.add(CANCEL)
        effects.replies.append((command.reply, outcome != CancelResult.NOT_CANCELLABLE))
    elif isinstance(command, Requeue):
        changes = writer.requeue(command.job_id, now)
        effects.changes += changes
        if changes:
            effects.wake()
            effects.rings.add(READY)
        effects.replies.append((command.reply, bool(changes)))
    elif isinstance(command, RequeueFailed):
        requeued = 0
        for job_id in writer.queued_ids([JobStatus.FAILED], command.name):
            changes = writer.requeue(job_id, now)
            requeued += bool(changes)
            effects.changes += changes
        if requeued:
            effects.wake()
            effects.rings.add(READY)
        effects.replies.append((command.reply, requeued))
    elif isinstance(command, CancelQueued):
        matching = writer.queued_ids([JobStatus.PENDING, JobStatus.WAITING], command.name)
        ended: set[int] = set()
        for job_id in matching:
            if job_id not in ended:  # not cancelled already, as a dependent of another
                _, changes = writer.cancel(job_id, now)
                ended.update(change.job_id for change in changes)
                effects.changes += changes
        effects.replies.append((command.reply, len(ended.intersection(matching))))
    elif isinstance(command, SetPaused):
        changed = writer.set_paused(command.name, command.paused)
        if changed and command.paused:
            effects.paused.append(command.name)
        elif changed:
            effects.wake()
            effects.rings.add(READY)
        effects.replies.append((command.reply, changed))
    elif isinstance(command, SetSchedule):
        stored = writer.upsert_schedule(command.schedule)
        effects.rings.add(READY)  # the others learn its next tick
        effects.replies.append((command.reply, stored))
    elif isinstance(command, DropSchedule):
        effects.replies.append((command.reply, writer.delete_schedule(command.key)))
    elif isinstance(command, Purge):
        before = now - command.older_than
        if command.limit is None:
            purged = writer.purge(before, command.statuses)
        else:
            purged = writer.purge(before, command.statuses, limit=command.limit)
        effects.replies.append((command.reply, purged))
    elif isinstance(command, Ping):
        writer.touch()
        effects.replies.append((command.reply, None))
    elif isinstance(command, Stop):
        writer.retire()
        effects.stopped = True
        effects.replies.append((command.reply, None))


def _beat(writer: Writer, now: float, effects: Effects) -> None:
    """Renew this process's lease (registering anew if it was lost), take over the jobs of
    owners that are gone, and claim for free slots and look for cancels: news a lost ring did
    not bring is found here."""
    if not writer.beat(now):
        _fence(writer, now)
        effects.fenced = True
    rescued = writer.rescue(now)
    if rescued:
        effects.changes += rescued
        effects.rings.add(READY)
    effects.wake()
    effects.cancel_running += writer.cancels_requested()


def _fence_if_lost(writer: Writer, now: float) -> bool:
    """Fence this process if the transaction just begun found it taken over."""
    if writer.lease_lost:
        _fence(writer, now)
        return True
    return False


def _fence(writer: Writer, now: float) -> None:
    """This process's lease was taken over (its row is gone): its running jobs belong to
    others now. It registers anew, and the pool stops its attempts and reports none of them."""
    old = writer.owner
    writer.reregister(now)
    logger.warning(
        "conveyor lost its lease on %s (owner %s, no heartbeat written for too long): other "
        "processes took over its running jobs, which are stopped here and whose outcomes are "
        "refused; it goes on as owner %s",
        writer.path,
        old,
        writer.owner,
    )


def pages_written(rows: int) -> int:
    """About how many WAL pages a commit writing ``rows`` rows adds: a few pages however small
    it is (the table's, its indexes' and the header's), and more with its rows."""
    return 4 + rows // 10


def rows_written(commands: Sequence[StoreCommand], claims: Claims) -> int:
    """About how many rows applying ``commands`` writes: a measure of how long it takes."""
    rows = claims.wanted
    for command in commands:
        if isinstance(command, Enqueue):
            rows += len(command.jobs)
        elif isinstance(command, Report):
            rows += len(command.outcomes) + len(command.progress) + command.more
        elif isinstance(command, Purge):
            # Unknown, and possibly the whole table, unless bounded.
            rows += INLINE_ROWS + 1 if command.limit is None else command.limit
        else:
            rows += 1
    return rows


def _claim_for_pool(
    writer: Writer, now: float, effects: Effects, limits: Mapping[str, Limits] | None
) -> None:
    """Claim the best ready jobs for the slots the pool wants, if jobs may be ready."""
    claims = effects.claims
    if claims.wanted <= 0 or not claims.may_be_ready:
        return
    jobs = writer.claim(claims.wanted, now, limits)
    effects.claims = Claims(claims.wanted - len(jobs), may_be_ready=len(jobs) == claims.wanted)
    effects.claimed = jobs
    effects.dependency_results = writer.dependency_results(jobs)
    effects.changes += [
        Change(
            Event.STARTED,
            job.id,
            job.name,
            JobStatus.RUNNING,
            None,
            max(now - job.run_at, 0.0),  # waited (positional: 2.4 against 1.5 µs a change)
        )
        for job in jobs
    ]


def _check_same_work(key: str, new: NewJob, holder: str, name: str, payload: JSON) -> None:
    """Refuse ``new`` if the job holding ``key`` (``holder``: a stored job, or one earlier in
    the same batch) is of another handler ``name`` or ``payload`` (compared as JSON values:
    key order aside)."""
    asked = json.loads(new.payload_json)
    if name == new.name and payload == asked:
        return
    raise IdempotencyConflict(
        f"idempotency key {key!r} is held by {holder}, of handler {name!r} with payload "
        f"{_shown(payload)}, not {new.name!r} with {_shown(asked)}: a key names one piece of "
        "work; use another key for other work"
    )


def _shown(payload: JSON) -> str:
    text = json.dumps(payload)
    return text if len(text) <= 80 else text[:79] + "…"


def _enqueue(
    writer: Writer, jobs: Sequence[NewJob], now: float, max_pending: float
) -> tuple[list[Job], list[Job], Changes]:
    """Insert ``jobs``; a job whose idempotency key is taken is answered by the job holding it.

    Returns the job answering each of ``jobs`` in order, the jobs actually inserted, and the
    changes. A job's ``after_steps`` (indices into ``jobs``) become the ids of those jobs,
    whether inserted now or found by their key.
    """
    if all(new.idempotency_key is None for new in jobs):
        return _insert_fresh(writer, jobs, now, max_pending)
    results: list[Job | int] = []  # a Job already stored, or an index into ``fresh``
    fresh: list[NewJob] = []
    fresh_by_key: dict[str, int] = {}
    for new in jobs:
        key = new.idempotency_key
        if key is not None:
            if key in fresh_by_key:
                first = fresh[fresh_by_key[key]]
                first_payload = json.loads(first.payload_json)
                _check_same_work(
                    key, new, "an earlier job of this batch", first.name, first_payload
                )
                results.append(fresh_by_key[key])
                continue
            existing = writer.find_by_key(key)
            if existing is not None:
                _check_same_work(key, new, f"job {existing.id}", existing.name, existing.payload)
                results.append(existing)
                continue
            fresh_by_key[key] = len(fresh)
        results.append(len(fresh))
        fresh.append(new)
    _check_room(writer, len(fresh), max_pending)
    first_id = writer.next_id()
    if any(new.after_steps for new in fresh):
        fresh = [_resolve_steps(new, results) for new in fresh]
    inserted, changes = writer.insert(fresh, now, first_id)
    answers = [inserted[item] if isinstance(item, int) else item for item in results]
    return answers, inserted, changes


def _insert_fresh(
    writer: Writer, jobs: Sequence[NewJob], now: float, max_pending: float
) -> tuple[list[Job], list[Job], Changes]:
    """:func:`_enqueue` of jobs without idempotency keys: each is inserted and answers
    itself (steps point into ``jobs`` already)."""
    _check_room(writer, len(jobs), max_pending)
    inserted, changes = writer.insert(jobs, now)
    return inserted, inserted, changes


def _check_room(writer: Writer, fresh: int, max_pending: float) -> None:
    """:class:`QueueFull` if ``fresh`` more pending jobs would pass ``max_pending``."""
    # Counted only under a bound: after another process wrote, the count reads the table.
    if fresh and max_pending != math.inf and writer.pending_count + fresh > max_pending:
        raise QueueFull(
            f"the queue is full: it holds {writer.pending_count} pending jobs and max_pending is "
            f"{max_pending:g}, so {fresh} more were refused and nothing was written"
        )


def _resolve_steps(new: NewJob, results: Sequence[Job | int]) -> NewJob:
    """``new`` with its steps that were found by key turned into stored ids, and the rest
    into indices among the jobs inserted."""
    stored = [r.id for r in (results[step] for step in new.after_steps) if isinstance(r, Job)]
    fresh = [r for r in (results[step] for step in new.after_steps) if isinstance(r, int)]
    return attrs.evolve(
        new, after=tuple(dict.fromkeys((*new.after, *stored))), after_steps=tuple(fresh)
    )


@attrs.define
class Episode:
    """Writes failing since ``started`` (the event loop's clock), first because of ``what``."""

    what: str
    started: float = attrs.Factory(anyio.current_time)
    failures: int = 0

    def retry_delay(self) -> float:
        """How long held work waits for new commands before it is tried again alone."""
        doublings = min(max(self.failures - 1, 0), 16)  # past 2 s anyway; never overflows
        return min(RETRY_FIRST * 2.0**doublings, RETRY_MAX)


class Store:
    """The persistence actor."""

    def __init__(
        self,
        writer: Writer,
        *,
        run_sql: SqlRunner,
        run_sync: SqlRunner,
        clock: Callable[[], float],
        commands: Mailbox[StoreCommand],
        hear: Callable[[News], None],
        timer: MemoryObjectSendStream[NextDue],
        listeners: Sequence[Listener],
        max_pending: int | None,
        inline_small: bool,
        limits: Mapping[str, Limits] | None = None,
        doorbell: DoorbellLike | None = None,
    ) -> None:
        """``run_sql`` runs database work on the SQL thread (or inline, in tests), and
        ``run_sync`` the syncs of :meth:`sync_commits` on another (beside a batch that waits
        for a lock, say);
        ``inline_small`` lets batches of at most :data:`INLINE_ROWS` rows run on the loop;
        ``hear`` takes each committed batch's :class:`News` for the worker pool (it must not
        wait or raise); ``doorbell`` rings the other processes on the file after a commit
        with news for them."""
        self._writer = writer
        self._doorbell = doorbell
        self._run_sql = run_sql
        self._run_sync = run_sync
        self._inline_small = inline_small
        self._unsynced: list[Effects] = []
        """Committed batches not yet synced to disk, whose callers and listeners wait for
        :meth:`sync_commits` (with a writer that syncs after it commits)."""
        self._sync_wanted = anyio.Event()
        self._committing = self._committed = self._last_commit = self._synced = 0
        """Commits begun, commits done (or failed), the last that succeeded, and how many are
        synced (counted by :meth:`_commit` and :meth:`sync_commits`)."""
        self._sync_ended = anyio.Event()
        self._syncer_gone: Exception | None = None
        """Why :meth:`sync_commits` ended: later batches' callers get it."""
        self._limits = limits or {}
        self._unchecked_pages = 0
        self._checkpoint_failing = False
        self._clock = clock
        self._commands = commands
        self._hear = hear
        self._timer = timer
        self._listeners = listeners
        self._max_pending = math.inf if max_pending is None else max_pending
        self._claims = Claims()
        self._told_due: float | None = None
        self._held: list[StoreCommand] = []
        self._episode: Episode | None = None
        self.faulted = anyio.Event()
        """Set when writes begin to fail (a fresh one once they succeed again)."""

    async def run(self) -> None:
        """Apply batches until a :class:`Stop` is committed; refuse what comes after it.

        A batch that fails for a reason that may pass (disk full, locked, I/O) fails the
        commands that wait for an answer, keeps the pool's reports and the timer's ticks to
        apply again (every later batch carries them, and without new commands they are
        retried with a growing delay), and the store goes on. A fault that cannot pass (the
        file deleted, replaced or corrupt) raises :class:`DatabaseError` and ends the queue.
        """
        try:
            self._tell_timer(self._clock())
            while True:
                if (await self._apply(await self._next_batch())).stopped:
                    return
        finally:
            # Every command already accepted into the channel gets an answer before it closes.
            self._refuse_remaining()
            self._commands.close()

    @property
    def fault(self) -> Episode | None:
        """The fault episode in progress: writes have failed since then; ``None`` when the
        last write succeeded."""
        return self._episode

    async def _next_batch(self) -> list[StoreCommand]:
        """The next commands to apply, the held ones first."""
        if self._episode is None:
            return self._drain([await self._commands.receive()])
        # Writes fail: try again after a while even if no command comes, with what is held
        # or else a probe, so that the episode ends as soon as the database takes writes.
        retry = self._held or [Ping(Reply())]
        with anyio.move_on_after(self._episode.retry_delay()) as waited:
            retry.append(await self._commands.receive())
        self._held = []
        if waited.cancel_called:
            # A full WAL that cannot grow needs a checkpoint to be written again from its start.
            await self._run_sql(self._checkpoint)
        return self._drain(retry)

    def _drain(self, batch: list[StoreCommand]) -> list[StoreCommand]:
        while self._commands and len(batch) < BATCH_LIMIT:
            batch.append(self._commands.receive_nowait())
        return batch

    async def _apply(self, batch: list[StoreCommand]) -> Effects:
        """Apply and announce ``batch``, or answer its fault."""
        now = self._clock()
        try:
            effects = await self._write(batch, now)
        except Exception as exc:
            fault = self._writer.classify(exc)
            if fault is None or not fault.passes:
                raise self._fail_for_good(batch, exc, fault) from exc
            effects = self._hold(batch, fault)
            # Answered after the batches committed before it (Stop's answer ends the queue).
            self._answer_when_durable(effects)
            return effects
        if self._episode is not None:
            logger.info(
                "conveyor writes to %s again, after %d failed batches in %.1f s",
                self._writer.path,
                self._episode.failures,
                anyio.current_time() - self._episode.started,
            )
            self._episode = None
            self.faulted = anyio.Event()
        self._claims = effects.claims
        if any(isinstance(command, Tick) for command in batch):
            # The timer fired and forgot its due time: whatever is due next is news to it
            # (even the same time, if the wall clock was stepped back meanwhile).
            self._told_due = None
        self._announce(effects, now)
        return effects

    def _hold(self, batch: list[StoreCommand], fault: Fault) -> Effects:
        """Answer a batch that failed with a fault that may pass: fail the commands waiting
        for an answer; keep the reports and ticks, which are the store's own to retry."""
        if self._episode is None:
            self._episode = Episode(fault.what)
            self.faulted.set()
            logger.error(
                "conveyor cannot write to the database: %s. Calls fail with "
                "DatabaseUnavailable until it can; outcomes of running jobs are kept and "
                "written then",
                fault.what,
            )
        self._episode.failures += 1
        error = DatabaseUnavailable(
            f"{fault.what}. This call may have been written: look before doing it again, or "
            "give it an idempotency key and retry"
            if fault.in_doubt
            else f"{fault.what}. Nothing of this call was written; retry."
        )
        effects = Effects(self._claims)
        for command in batch:
            if isinstance(command, Report | Tick):
                self._held.append(command)
            elif isinstance(command, Stop):
                # Shutting down: what cannot be written now is recovered at the next open.
                effects.stopped = True
                effects.replies.append((command.reply, None))
            elif (reply := getattr(command, "reply", None)) is not None:
                effects.failures.append((reply, error))
        if effects.stopped and self._held:
            unsaved = sum(len(c.outcomes) for c in self._held if isinstance(c, Report))
            logger.warning(
                "conveyor stops without writing the outcomes of %d attempts (%s); those jobs "
                "stay running in the file and are recovered when it is next opened",
                unsaved,
                fault.what,
            )
        return effects

    def _fail_for_good(
        self, batch: list[StoreCommand], error: Exception, fault: Fault | None
    ) -> DatabaseError:
        """The error that ends the queue; the batch's callers get it too."""
        what = f"writing to {self._writer.path} failed: {error!r}" if fault is None else fault.what
        stopped = DatabaseError(f"{what}. The queue has stopped.")
        logger.critical("conveyor stops: %s", what)
        for command in batch:
            if (reply := getattr(command, "reply", None)) is not None:
                reply.fail(stopped)
        return stopped

    async def _write(self, batch: list[StoreCommand], now: float) -> Effects:
        """Apply ``batch`` on the loop if it is small and the lock is free, else on the SQL
        thread; checkpoint the WAL on the SQL thread every :data:`CHECKPOINT_PAGES` pages, and
        after writes failed (a full disk may have let the WAL grow).

        A batch in flight is never abandoned: its awaits are shielded, so cancellation waits
        until it is committed (and the caller of :meth:`_apply` answers every command). A
        batch applied inline does not wait at all, and needs no shield."""
        claims = self._claims
        rows = rows_written(batch, claims)
        self._unchecked_pages += pages_written(rows)
        checkpoint = self._unchecked_pages >= CHECKPOINT_PAGES or self._episode is not None
        writer, max_pending, limits = self._writer, self._max_pending, self._limits
        if self._inline_small and rows <= INLINE_ROWS:
            try:
                effects = prepare_batch(
                    writer,
                    batch,
                    now,
                    max_pending,
                    claims,
                    wait_for_lock=False,
                    limits=limits,
                )
            except WriterBusy:
                pass  # another connection writes: wait for it off the loop
            else:
                self._commit()
                if checkpoint:
                    with anyio.CancelScope(shield=True):
                        await self._run_sql(self._checkpoint)
                return effects

        def apply_and_checkpoint() -> Effects:
            effects = prepare_batch(writer, batch, now, max_pending, claims, limits=limits)
            self._commit()
            if checkpoint:
                self._checkpoint()
            return effects

        with anyio.CancelScope(shield=True):
            effects = await self._run_sql(apply_and_checkpoint)
        return effects  # noqa: RET504 (returned inside the scope, mypy sees a path without)

    def _commit(self) -> None:
        """Commit the batch :func:`prepare_batch` left open, counted for :meth:`wait_synced`
        from before it is seen until it is done (on whichever thread runs it)."""
        self._committing += 1
        try:
            commit_batch(self._writer)
            self._last_commit = self._committing
        finally:
            # Failed too: nothing then to wait for but the next sync, which need not sync it.
            self._committed = self._committing

    def _checkpoint(self) -> None:
        """Checkpoint the WAL. A failure (the disk full, say) is logged once until one
        succeeds, and the next is tried after half the usual pages: the batch before it is
        committed and must still be announced."""
        try:
            self._writer.checkpoint()
        except Exception as exc:  # the database's errors, and MemoryError: logged, not fatal
            self._unchecked_pages = CHECKPOINT_PAGES // 2
            if not self._checkpoint_failing:
                self._checkpoint_failing = True
                logger.warning("conveyor could not checkpoint %s: %r", self._writer.path, exc)
            return
        self._unchecked_pages = 0
        if self._checkpoint_failing:
            self._checkpoint_failing = False
            logger.info("conveyor checkpoints %s again", self._writer.path)

    def _announce(self, effects: Effects, now: float) -> None:
        """Tell the other actors what a committed batch did, at once; answer its callers and
        listeners once it is on disk: at once, or after :meth:`sync_commits` synced it."""
        self._tell_actors(effects, now)
        self._answer_when_durable(effects)

    def _answer_when_durable(self, effects: Effects) -> None:
        if not self._writer.syncs_after_commit:
            self._answer(effects)
        elif self._syncer_gone is not None:
            self._refuse_answers(effects, self._syncer_gone)
        else:
            self._unsynced.append(effects)
            self._sync_wanted.set()

    async def wait_synced(self) -> None:
        """Return once every batch committed so far is on disk: at once, unless the writer
        syncs after it commits and a sync is due. Raises what ended the syncing, if it ended
        first (:meth:`sync_commits`)."""
        if not self._writer.syncs_after_commit:
            return
        committed = self._committing
        while self._synced < committed:
            if self._syncer_gone is not None:
                raise self._syncer_gone
            await self._sync_ended.wait()

    async def sync_commits(self) -> None:
        """With a writer that syncs after it commits (SQLite at ``synchronous="full"``): sync
        the store's commits to disk, and only then answer their callers and listeners, in
        commit order.

        The store goes on meanwhile: one sync covers every batch committed before it began
        (group commit), and the worker pool starts the jobs a batch claimed without waiting
        for it (a power loss before the sync runs them again). A failed sync raises
        :class:`DatabaseError` and ends the queue, as PostgreSQL stops on a failed fsync:
        what it covered may not be on disk, and a retry could not tell. The callers still
        waiting (and :meth:`wait_synced`'s) then get that error; if this is cancelled,
        :class:`QueueClosed`.
        """
        synced: list[Effects] = []
        busy = False
        try:
            while True:
                await self._sync_wanted.wait()
                if busy:
                    await anyio.sleep(SYNC_SPACING)
                self._sync_wanted = anyio.Event()
                synced, self._unsynced = self._unsynced, []
                covered = self._committed
                if self._last_commit > self._synced:
                    try:
                        await self._run_sync(self._writer.sync)
                    except Exception as exc:
                        raise self._sync_failed(exc) from exc
                self._synced = covered
                busy = bool(self._unsynced)
                for effects in synced:
                    self._answer(effects)
                synced = []
                self._sync_ended.set()
                self._sync_ended = anyio.Event()
        except BaseException as exc:
            self._syncer_gone = (
                exc
                if isinstance(exc, DatabaseError)
                else QueueClosed(
                    "the queue stopped before this call's commit was synced to disk; it may "
                    "have been written: look before doing it again"
                )
            )
            for effects in [*synced, *self._unsynced]:
                self._refuse_answers(effects, self._syncer_gone)
            self._unsynced = []
            self._sync_ended.set()
            raise

    def _sync_failed(self, error: Exception) -> DatabaseError:
        what = f"syncing {self._writer.path} to disk failed: {error!r}"
        logger.critical("conveyor stops: %s", what)
        return DatabaseError(
            f"{what}. The queue has stopped; what it committed since its last sync may be "
            "lost if the machine stops before the operating system writes it."
        )

    def _tell_actors(self, effects: Effects, now: float) -> None:
        """Hand the worker pool its news and the timer its next deadline."""
        if (
            effects.claimed
            or effects.reports
            or effects.cancel_running
            or effects.paused
            or effects.fenced
        ):
            self._hear(
                News(
                    effects.claimed,
                    effects.reports,
                    effects.released,
                    effects.cancel_running,
                    effects.dependency_results,
                    effects.paused,
                    effects.fenced,
                )
            )
        self._tell_timer(now)

    def _answer(self, effects: Effects) -> None:
        """Emit a durable batch's log records, answer its callers, tell its listeners and ring
        the other processes (which would otherwise read it before it is on disk)."""
        if self._doorbell is not None and effects.doorbells:
            self._ring(effects)
        for note in effects.notes:
            note.emit()
        for reply, value in effects.replies:
            reply.set(value)
        for reply, error in effects.failures:
            reply.fail(error)
        if effects.changes:
            for listener in list(self._listeners):
                try:
                    listener(effects.changes)
                except Exception:
                    # A subscriber's bug must not stop the queue; it is logged and skipped.
                    logger.exception("a conveyor listener raised; it stays subscribed")

    @staticmethod
    def _refuse_answers(effects: Effects, error: Exception) -> None:
        """Answer the callers of a batch that was committed but cannot be known to be on
        disk: ``error``, or their own refusal."""
        for reply, _ in effects.replies:
            reply.fail(error)
        for reply, refusal in effects.failures:
            reply.fail(refusal)

    def _ring(self, effects: Effects) -> None:
        """Ring the other owners with the batch's news: jobs made ready only those that run
        handlers."""
        assert self._doorbell is not None
        others = "".join(sorted(effects.rings - {READY}))
        everything = "".join(sorted(effects.rings))
        workers = [doorbell for doorbell, runs in effects.doorbells if runs]
        producers = [doorbell for doorbell, runs in effects.doorbells if not runs]
        self._doorbell.ring(workers, everything)
        self._doorbell.ring(producers, others)

    def _tell_timer(self, now: float) -> None:
        """Tell the timer the next deadline still ahead (a job coming due, a schedule's tick,
        a rate window opening), if that is news to it.

        A deadline already past is not told: the next claim promotes a due job anyway, and
        the timer firing at once again would only spin while every slot is busy; but the
        deadlines after it are (a schedule must tick while a due job waits for a slot).
        """
        due = self._writer.next_wakeup_after(now)
        if due != self._told_due:
            self._told_due = due
            tell(self._timer, NextDue(due))

    def _refuse_remaining(self) -> None:
        while True:
            try:
                command = self._commands.receive_nowait()
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                return
            if (reply := getattr(command, "reply", None)) is not None:
                reply.fail(QueueClosed("the queue is closed"))
