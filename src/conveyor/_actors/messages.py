"""What the actors say to each other over their memory channels (DESIGN §3).

The store takes :data:`StoreCommand` values; the worker pool takes :data:`PoolMessage` values;
the timer takes :class:`NextDue`. Between the pool and the store there is one message per batch
each way: a :class:`Report` from the pool, a :class:`News` from the store (handed straight to
the pool's :meth:`~.pool.Pool.hear` when its batch is committed, which saves the pool a turn
of the scheduler before its workers can start the claimed jobs). Commands that a caller awaits
carry a :class:`Reply`.
"""

from __future__ import annotations

import contextlib
from typing import Generic, Protocol, TypeVar

import anyio
import attrs

from .._job import JSON, Job, JobStatus
from .._schedule import Schedule
from .._storage.sqlite import NewJob, Outcome

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class Inbox(Protocol[T_contra]):
    """Where an actor is told things: a :class:`~.mailbox.Mailbox` or an anyio channel."""

    def send_nowait(self, message: T_contra, /) -> None: ...


def tell(inbox: Inbox[T], message: T) -> None:
    """Send to an unbounded inbox without waiting; a receiver already gone is ignored.

    Receivers end only when the queue is torn down, when what they would be told is moot.
    """
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        inbox.send_nowait(message)


class Reply(Generic[T]):
    """A one-shot answer from the store to the task awaiting a command."""

    __slots__ = ("_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._event.set()

    async def get(self) -> T:
        """Wait for the answer; raise the error the store answered with, if any."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


# --- to the store ---------------------------------------------------------------------------
@attrs.frozen
class Enqueue:
    jobs: list[NewJob]
    reply: Reply[list[Job]]
    found: set[int] = attrs.field(factory=set, eq=False)
    """Filled by the store before it replies: the ids of the answered jobs that were already
    stored, found by their idempotency key (a replay), rather than inserted."""


ProgressReport = tuple[float, str | None, int, int]
"""``(fraction, message, job id, attempt)``: a running attempt's latest progress."""


@attrs.frozen
class Report:
    """The pool's one message per batch: attempts that ended, progress of running ones, and
    ``more`` free slots to claim jobs for (the store owes them until it has claimed them).

    ``release``: the pool is closing; the store forgets the slots it owes.
    """

    outcomes: list[Outcome]
    progress: list[ProgressReport]
    more: int
    release: bool = False


@attrs.frozen
class Tick:
    """From the timer: a scheduled job may have come due."""


@attrs.frozen
class Heartbeat:
    """From the heartbeat task: renew this process's lease, and take over the running jobs
    of owners that are gone."""


@attrs.frozen
class Look:
    """Another process rang: it may have made jobs ready (``ready``), or asked to cancel
    jobs this process runs (``cancels``)."""

    ready: bool
    cancels: bool


@attrs.frozen
class Cancel:
    job_id: int
    reply: Reply[bool]


@attrs.frozen
class Requeue:
    job_id: int
    reply: Reply[bool]


@attrs.frozen
class Purge:
    """Delete finished jobs of ``statuses`` older than ``older_than`` seconds (at most
    ``limit`` of them, the oldest first, if given); answers how many."""

    older_than: float
    statuses: frozenset[JobStatus]
    reply: Reply[int]
    limit: int | None = None


@attrs.frozen
class RequeueFailed:
    """Requeue every failed job (of handler ``name`` only, if given); answers how many."""

    name: str | None
    reply: Reply[int]


@attrs.frozen
class CancelQueued:
    """Cancel every pending and waiting job (of handler ``name`` only, if given)."""

    name: str | None
    reply: Reply[int]


@attrs.frozen
class SetPaused:
    """Pause (or resume) handler ``name``: its pending jobs are not claimed while paused.
    Answers whether that changed anything."""

    name: str
    paused: bool
    reply: Reply[bool]


@attrs.frozen
class SetSchedule:
    """Store ``schedule`` under its key, replacing the one there."""

    schedule: Schedule
    reply: Reply[Schedule]


@attrs.frozen
class DropSchedule:
    key: str
    reply: Reply[bool]


@attrs.frozen
class Ping:
    """Proves the store is alive and the database takes a write."""

    reply: Reply[None]


@attrs.frozen
class Stop:
    """The last command: answer it, refuse whatever comes after, and end the store."""

    reply: Reply[None]


StoreCommand = (
    Enqueue
    | Report
    | Tick
    | Heartbeat
    | Look
    | Cancel
    | Requeue
    | RequeueFailed
    | CancelQueued
    | SetPaused
    | SetSchedule
    | DropSchedule
    | Purge
    | Ping
    | Stop
)


# --- to the worker pool ---------------------------------------------------------------------
@attrs.frozen
class News:
    """The store's one message per batch to the pool, handed to it as soon as the batch is
    committed (:meth:`~.pool.Pool.hear`).

    ``claimed``: jobs claimed for slots the pool asked for, best first. ``answered``: how many
    of the pool's reports this batch applied (``released`` if one of them was the release).
    ``cancel``: running jobs whose cancel was committed. ``dependency_results``: for each
    claimed job that runs after others, each dependency's id and result.
    """

    claimed: list[Job]
    answered: int
    released: bool
    cancel: list[int]
    dependency_results: dict[int, dict[int, JSON]] = attrs.Factory(dict)
    paused: list[str] = attrs.Factory(list)
    """Handlers just paused: claimed jobs of theirs that have not started go back."""
    fenced: bool = False
    """This process lost its lease and its jobs were taken over: every attempt it runs is
    stopped (their outcomes would be refused), and claimed jobs are dropped."""


@attrs.frozen
class Flush:
    """From the pool's own workers: outcomes or progress wait to be reported."""


@attrs.frozen
class InterruptAll:
    """Shutdown's grace is over: cancel every running handler and return its job to pending."""


PoolMessage = Flush | InterruptAll


# --- to the timer ---------------------------------------------------------------------------
@attrs.frozen
class NextDue:
    at: float | None  # wall-clock seconds; None: nothing scheduled
