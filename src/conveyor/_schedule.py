"""Recurring jobs: when a schedule's ticks fall, and which of them a late store still enqueues.

Pure logic with no event loop and no database: the store asks :func:`due_ticks` which ticks to
enqueue and when the next one falls, and writes both in one transaction. Times are wall-clock
epoch seconds, like every persisted time. Cron expressions are read by cronsim (a maintained,
strict parser that names the bad field) in the schedule's time zone, so that "03:00 every day"
stays 03:00 local time across daylight-saving changes.
"""

from __future__ import annotations

import datetime
import math
import zoneinfo
from collections.abc import Iterator
from typing import Final, Literal

import attrs
import cronsim

from ._errors import InvalidArgument
from ._job import JSON

CatchUp = Literal["latest", "all", "none"]
CATCH_UPS: Final = ("latest", "all", "none")

MAX_CATCH_UP: Final = 1000
"""Most missed ticks ``catch_up="all"`` enqueues at once (the most recent ones)."""

MIN_EVERY: Final = 1.0
"""The shortest ``every``: ticks are whole jobs, and a tick's key is its time to the ms."""

MISSED_AFTER: Final = 60.0
"""A tick more than this many seconds past is *missed* (the file was closed, or the process
stalled); one less late is simply due, and ``catch_up="none"`` still enqueues it."""


@attrs.frozen
class Cadence:
    """When a schedule ticks: every ``every`` seconds from its first tick, or at the times
    ``cron`` (five fields) matches in ``timezone``. Exactly one of the two is set."""

    every: float | None
    cron: str | None
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise InvalidArgument("give exactly one of every= and cron=")
        zone = _zone(self.timezone)
        if self.every is not None:
            if not (math.isfinite(self.every) and self.every >= MIN_EVERY):
                raise InvalidArgument(
                    f"every must be at least {MIN_EVERY:g} second (a number of seconds or a "
                    f"timedelta), not {self.every!r}"
                )
        elif self.cron is not None:
            if len(self.cron.split()) != 5:
                raise InvalidArgument(
                    f"cron must have five fields (minute hour day month weekday), not {self.cron!r}"
                )
            try:
                cronsim.CronSim(self.cron, datetime.datetime.now(zone))
            except cronsim.CronSimError as exc:
                raise InvalidArgument(f"cron expression {self.cron!r}: {exc}") from None

    def first_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (for ``every``: ``moment + every``)."""
        if self.every is not None:
            return moment + self.every
        return next(self._forward(moment)).timestamp()

    def ticks_between(self, first: float, now: float, limit: int) -> list[float]:
        """Up to ``limit`` of the latest ticks from ``first`` (a tick) to ``now``, in order."""
        if first > now:
            return []
        if self.every is not None:
            count = math.floor((now - first) / self.every) + 1
            start = max(count - limit, 0)
            return [first + n * self.every for n in range(start, count)]
        ticks: list[float] = []
        for match in self._backward(now):
            tick = match.timestamp()
            if tick < first or len(ticks) == limit:
                break
            ticks.append(tick)
        return ticks[::-1]

    def _forward(self, moment: float) -> Iterator[datetime.datetime]:
        assert self.cron is not None
        start = datetime.datetime.fromtimestamp(moment, _zone(self.timezone))
        return cronsim.CronSim(self.cron, start)

    def _backward(self, moment: float) -> Iterator[datetime.datetime]:
        """Matches at or before ``moment``, latest first."""
        assert self.cron is not None
        # cronsim looks strictly before its start: start just after ``moment``'s second.
        start = datetime.datetime.fromtimestamp(math.floor(moment) + 1, _zone(self.timezone))
        for match in cronsim.CronSim(self.cron, start, reverse=True):
            if match.timestamp() <= moment:
                yield match


def due_ticks(
    cadence: Cadence, next_run_at: float, now: float, catch_up: CatchUp
) -> tuple[list[float], float]:
    """The ticks to enqueue now, and the schedule's next tick after them.

    Every tick from ``next_run_at`` to ``now`` is due. The latest of them is enqueued unless it
    is missed (more than :data:`MISSED_AFTER` late) and ``catch_up`` is ``"none"``; the older
    ones only with ``catch_up="all"`` (at most :data:`MAX_CATCH_UP` in all). The schedule then
    goes on from the first tick after ``now``.
    """
    if next_run_at > now:
        return [], next_run_at
    limit = MAX_CATCH_UP if catch_up == "all" else 1
    ticks = cadence.ticks_between(next_run_at, now, limit)
    if catch_up == "none" and ticks and now - ticks[-1] > MISSED_AFTER:
        ticks = []
    last = ticks[-1] if ticks else cadence.ticks_between(next_run_at, now, 1)[-1]
    return ticks, cadence.first_after(last)


@attrs.frozen
class Schedule:
    """A recurring job, as stored under ``key``: handler ``name`` with ``payload``, ticking as
    ``every`` or ``cron`` (in ``timezone``) says. ``next_run_at`` is its next tick and
    ``last_run_at`` the tick of the last job it enqueued (``None`` before the first);
    ``last_job_id`` is that job."""

    key: str
    name: str
    payload: JSON
    every: float | None
    cron: str | None
    timezone: str
    catch_up: CatchUp
    priority: int
    max_attempts: int | None
    timeout: float | None
    next_run_at: float
    last_run_at: float | None
    last_job_id: int | None
    paused: bool = False


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidArgument(
            f"unknown timezone {name!r} (an IANA name such as 'Europe/Paris')"
        ) from None
