"""The timer: sleeps until the earliest scheduled job is due, then tells the store.

The store tells it, after every batch, when the earliest scheduled job becomes due; the latest
word replaces the one before. Due times are wall-clock seconds (they outlive the process); the
sleep runs on the event loop's clock, so a mock clock drives it in tests. The two clocks drift
apart whenever the wall clock is stepped (NTP, an administrator, a suspended machine), so while
something is due the timer looks at the wall clock again at least every :data:`MAX_SLEEP`
seconds; with nothing due it sleeps until told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from .mailbox import Mailbox
from .messages import NextDue, StoreCommand, Tick

MIN_SLEEP: Final = 1e-6
"""The shortest sleep: keeps the wait finite and moving when float rounding leaves a sliver."""

MAX_SLEEP: Final = 1.0
"""The longest sleep while something is due: a due job starts at most this late, however the
wall clock is stepped."""


class Timer:
    def __init__(
        self,
        *,
        clock: Callable[[], float],
        inbox: MemoryObjectReceiveStream[NextDue],
        store: Mailbox[StoreCommand],
    ) -> None:
        self._clock = clock
        self._inbox = inbox
        self._store = store

    async def run(self) -> None:
        due: float | None = None
        async with self._inbox:
            while True:
                if due is not None and self._clock() >= due:
                    due = None
                    try:
                        await self._store.send(Tick())
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        return  # the store has stopped: nothing is due any more
                with anyio.move_on_after(self._sleep_until(due)):
                    due = (await self._inbox.receive()).at

    def _sleep_until(self, due: float | None) -> float:
        """Seconds to wait for word from the store before looking at the wall clock again."""
        if due is None:
            return math.inf
        return min(max(due - self._clock(), MIN_SLEEP), MAX_SLEEP)
