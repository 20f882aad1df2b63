"""What the store announces after each commit: one :class:`Change` per job that changed.

Listeners (waiters, statistics, metrics) see a change only once it is durable.
"""

from __future__ import annotations

from typing import Literal

import attrs

ChangeKind = Literal[
    "enqueued", "started", "completed", "retried", "failed", "cancelled", "interrupted", "requeued"
]

FINISHING_KINDS = frozenset({"completed", "failed", "cancelled"})


@attrs.frozen
class Change:
    """Job ``job_id`` (handler ``name``) went through ``kind``.

    ``duration`` is the attempt's run time for the kinds that end an attempt; ``waited`` is how
    long a ``started`` job was ready before it started (start time minus ``run_at``).
    """

    kind: ChangeKind
    job_id: int
    name: str
    duration: float | None = None
    waited: float | None = None

    @property
    def is_finish(self) -> bool:
        """The job reached a terminal status."""
        return self.kind in FINISHING_KINDS
