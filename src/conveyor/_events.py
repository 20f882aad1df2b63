"""What the store announces after each commit: one :class:`Change` per job that changed.

Listeners (waiters, statistics, metrics) see a change only once it is durable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Final, overload

import attrs

from ._job import Event, Job, JobStatus, decide


# Not slotted, as Job: the store builds two a job, and a dict is filled faster than slots.
@attrs.frozen(slots=False)
class Change:
    """``event`` happened to job ``job_id`` (handler ``name``), which is now in ``status``.

    ``duration`` is the attempt's run time for the events that end an attempt; ``waited`` is
    how long a ``started`` job was ready before it started (start time minus ``run_at``).
    """

    event: Event
    job_id: int
    name: str
    status: JobStatus
    duration: float | None = None
    waited: float | None = None
    _final: Callable[[], Job] | None = attrs.field(default=None, alias="final", repr=False)

    @property
    def is_finish(self) -> bool:
        """The job reached a terminal status."""
        return self.status.is_terminal

    def job(self) -> Job | None:
        """The job as this change left it, when the change carries it (the end of an attempt
        this process ran); ``None`` otherwise. Built on demand: most changes are never asked."""
        return None if self._final is None else self._final()


@attrs.frozen
class Inserted:
    """The jobs an insert stored, standing for their changes (``enqueued``, or ``blocked`` for
    those that wait for others) until a listener reads them."""

    jobs: Sequence[Job]

    def __len__(self) -> int:
        return len(self.jobs)

    def changes(self) -> list[Change]:
        return [Change(_BORN_BY[job.status], job.id, job.name, job.status) for job in self.jobs]


_BORN_BY: Final = {decide(None, event): event for event in (Event.ENQUEUED, Event.BLOCKED)}
"""The event that gave a job its first status."""


class Changes(Sequence[Change]):
    """The changes of one batch, in the order they happened: what listeners are given.

    The changes of inserted jobs are made when the batch is first read, not as it is
    written: an ``enqueue_many`` of 10,000 jobs made 10,000 changes that most of the time no
    listener read, and the garbage collector's walks over them cost a fifth of its time.
    ``+=`` appends changes, :class:`Inserted` jobs or another batch's changes.
    """

    __slots__ = ("_length", "_made", "_parts")

    def __init__(self) -> None:
        self._parts: list[Sequence[Change] | Inserted] = []
        self._length = 0
        self._made: list[Change] | None = None

    def __iadd__(self, part: Sequence[Change] | Inserted) -> Changes:
        if isinstance(part, Changes):
            self._parts += part._parts
        elif part:
            self._parts.append(part)
        self._length += len(part)
        self._made = None
        return self

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Change: ...

    @overload
    def __getitem__(self, index: slice) -> list[Change]: ...

    def __getitem__(self, index: int | slice) -> Change | list[Change]:
        return self._all()[index]

    def __iter__(self) -> Iterator[Change]:
        return iter(self._all())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return self._all() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Changes({self._all()!r})"

    def _all(self) -> list[Change]:
        if self._made is None:
            made: list[Change] = []
            for part in self._parts:
                made += part.changes() if isinstance(part, Inserted) else part
            self._made = made
        return self._made
