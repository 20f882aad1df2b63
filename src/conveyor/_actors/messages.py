"""What the actors say to each other over their memory channels.

The store takes :data:`StoreCommand` values; the dispatcher takes :data:`DispatcherMessage`
values; the timer takes :class:`NextDue`. Commands that a caller awaits carry a :class:`Reply`.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Generic, Literal, TypeVar

import anyio
import attrs
from anyio.streams.memory import MemoryObjectSendStream

from .._job import Job
from .._storage.sqlite import NewJob

T = TypeVar("T")


def tell(stream: MemoryObjectSendStream[T], message: T) -> None:
    """Send on an unbounded channel without waiting; a receiver already gone is ignored.

    Receivers end only when the queue is torn down, when what they would be told is moot.
    """
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        stream.send_nowait(message)


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


@attrs.frozen
class Claim:
    limit: int


OutcomeKind = Literal["completed", "failed", "cancelled", "interrupted"]


@attrs.frozen
class Outcome:
    job_id: int
    attempt: int
    kind: OutcomeKind
    result_json: str | None = None
    error: str | None = None
    retry_delay: float | None = None  # failed: retry after this delay; None: no retry
    progress: tuple[float, str | None] | None = None  # the latest report not yet written


class ProgressSlot:
    """The latest progress a handler reported that the store has not written yet.

    A mailbox of one, shared by the handler (which may run in a thread) and the store (on the
    SQL thread), hence the lock. ``put`` says whether a :class:`Progress` command must be sent:
    one waits in the store's channel until ``take``, so a burst of reports costs one write and
    the latest wins.
    """

    __slots__ = ("_latest", "_lock", "_queued")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: tuple[float, str | None] | None = None
        self._queued = False

    def put(self, fraction: float, message: str | None) -> bool:
        """Keep this report; True if no :class:`Progress` command is on its way yet."""
        with self._lock:
            self._latest = (fraction, message)
            first, self._queued = not self._queued, True
            return first

    def unqueue(self) -> None:
        """The :class:`Progress` command could not be sent: the next report tries again."""
        with self._lock:
            self._queued = False

    def take(self) -> tuple[float, str | None] | None:
        """The unwritten report, if any, marking it written."""
        with self._lock:
            latest, self._latest, self._queued = self._latest, None, False
            return latest


@attrs.frozen
class Progress:
    job_id: int
    attempt: int
    slot: ProgressSlot


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
    older_than: float
    reply: Reply[int]


@attrs.frozen
class Ping:
    """Proves the store is alive and the database takes a write."""

    reply: Reply[None]


@attrs.frozen
class Stop:
    """The last command: answer it, refuse whatever comes after, and end the store."""

    reply: Reply[None]


StoreCommand = Enqueue | Claim | Outcome | Progress | Cancel | Requeue | Purge | Ping | Stop


# --- to the dispatcher ----------------------------------------------------------------------
@attrs.frozen
class WorkReady:
    """Jobs may be ready to claim (enqueued, requeued, retried now, or come due)."""


@attrs.frozen
class Claimed:
    jobs: list[Job]
    requested: int


@attrs.frozen
class CancelRunning:
    job_id: int


@attrs.frozen
class SlotFree:
    """The worker running this job is done with it (its outcome is on the way to the store)."""

    job_id: int


@attrs.frozen
class Close:
    """Claim nothing more; set ``idle`` once no job is running."""

    idle: anyio.Event


@attrs.frozen
class InterruptAll:
    """Shutdown's grace is over: cancel every running handler and return its job to pending."""


DispatcherMessage = WorkReady | Claimed | CancelRunning | SlotFree | Close | InterruptAll


# --- to the timer ---------------------------------------------------------------------------
@attrs.frozen
class NextDue:
    at: float | None  # wall-clock seconds; None: nothing scheduled


# --- dispatcher to worker -------------------------------------------------------------------
StopReason = Literal["cancel", "shutdown"]


@attrs.define
class Assignment:
    """A claimed job handed to a worker, with the scope the dispatcher cancels it through.

    ``reason`` is written by the dispatcher just before it cancels ``scope`` and read by the
    worker after the scope exits: the one fact they share, in that order.
    """

    job: Job
    scope: anyio.CancelScope
    reason: StopReason | None = None
