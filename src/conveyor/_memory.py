"""Memory-aware concurrency: above a high-water mark of the machine's memory in use, the
queue runs at most one job at a time, so that it stops adding to the pressure.

The reading is psutil's ``virtual_memory().percent`` (portable, and it counts what Linux can
reclaim as available, as ``/proc/meminfo``'s MemAvailable does); tests inject their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import psutil

from ._errors import InvalidArgument

logger = logging.getLogger("conveyor")

SAMPLE_INTERVAL: Final = 1.0
"""Seconds (of the event loop's clock) a reading is reused: reading memory costs more than a
claim."""


def memory_in_use() -> float:
    """The fraction of the machine's memory in use (0..1)."""
    return float(psutil.virtual_memory().percent) / 100


def check_high_water(value: object) -> float | None:
    """``value`` as a high-water fraction (``None``: no limit); :class:`InvalidArgument`
    unless it is a number within (0, 1]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise InvalidArgument(
            f"memory_high_water must be a fraction of memory within (0, 1], or None, not {value!r}"
        )
    return float(value)


class MemoryGuard:
    """Says whether memory in use is at or above ``high_water`` (never, when it is ``None``),
    reading it with ``read`` at most every :data:`SAMPLE_INTERVAL` seconds. Logs a WARNING
    when the queue starts holding back and INFO when it stops."""

    def __init__(self, high_water: float | None, read: Callable[[], float] = memory_in_use):
        self._high_water = high_water
        self._read = read
        self._read_at = -float("inf")
        self.limited = False
        """Whether the queue runs at most one job because memory is short (as last read)."""

    def is_high(self, now: float) -> bool:
        """Whether memory is short, as read at most :data:`SAMPLE_INTERVAL` before ``now``
        (the event loop's clock)."""
        if self._high_water is None:
            return False
        if now - self._read_at >= SAMPLE_INTERVAL:
            self._read_at = now
            used = self._read()
            high = used >= self._high_water
            if high and not self.limited:
                logger.warning(
                    "memory %.0f%% >= %.0f%%: running at most 1 job",
                    used * 100,
                    self._high_water * 100,
                    extra={"memory_in_use": used, "memory_high_water": self._high_water},
                )
            elif self.limited and not high:
                logger.info(
                    "memory %.0f%% < %.0f%%: running up to every worker again",
                    used * 100,
                    self._high_water * 100,
                    extra={"memory_in_use": used, "memory_high_water": self._high_water},
                )
            self.limited = high
        return self.limited
