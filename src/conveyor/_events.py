"""What the store announces after each commit: one :class:`Change` per job that changed.

Listeners (waiters, statistics, metrics) see a change only once it is durable.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ._job import Event, Job, JobStatus


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
