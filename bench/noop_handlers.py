"""The no-op handler the PostgreSQL benchmark's worker processes run."""

from __future__ import annotations

import conveyor

registry = conveyor.Registry()


@registry.handler
async def noop(payload: object) -> None:
    """Does nothing: what is measured is the queue."""
