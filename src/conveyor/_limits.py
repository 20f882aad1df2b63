"""A handler's limits: how many of its jobs may run at once, per key, and start per window.

Pure values, validated when built. The store enforces them in the claim (DESIGN §4,
invariant 11): a job held back by a limit stays ``pending`` and keeps its place, and the jobs
of other handlers are claimed past it.
"""

from __future__ import annotations

import math
import re
from typing import Final

import attrs

from ._errors import InvalidArgument
from ._job import MAX_PRIORITY

_WINDOWS: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


def parse_rate_limit(value: object) -> tuple[int, float] | None:
    """``"100/minute"`` (also ``/second``, ``/hour``, ``/day``) or ``(count, seconds)`` as
    ``(count, seconds)``; :class:`InvalidArgument` naming the problem otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _RATE.match(value)
        if match is None:
            raise InvalidArgument(
                f"rate_limit must look like '100/minute' (per second, minute, hour or day), "
                f"or be (count, seconds), not {value!r}"
            )
        count, seconds = int(match[1]), _WINDOWS[match[2]]
    elif isinstance(value, tuple) and len(value) == 2:
        count, seconds = value
    else:
        raise InvalidArgument(
            f"rate_limit must be a str such as '100/minute' or (count, seconds), not {value!r}"
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgument(f"a rate limit's count must be an int >= 1, not {count!r}")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise InvalidArgument(f"a rate limit's window must be seconds > 0, not {seconds!r}")
    return count, float(seconds)


def _check_count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgument(f"{name} must be an int >= 1, not {value!r}")


def _check_concurrency(_: object, __: object, value: int | None) -> None:
    _check_count("concurrency", value)


def _check_key_concurrency(_: object, __: object, value: int | None) -> None:
    _check_count("key_concurrency", value)


def _check_step(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_PRIORITY:
        raise InvalidArgument(
            f"retry_priority_step must be an int within 0..{MAX_PRIORITY - 1}, not {value!r}"
        )


@attrs.frozen
class Limits:
    """``concurrency``: at most this many of the handler's jobs run at once in the queue;
    ``key_concurrency``: at most this many per ``concurrency_key``; ``rate``: at most
    ``count`` starts in any window of ``seconds``; ``retry_priority_step``: each retry's
    priority is the last one's plus this (capped at the lowest priority, 10)."""

    concurrency: int | None = attrs.field(default=None, validator=_check_concurrency)
    key_concurrency: int | None = attrs.field(default=None, validator=_check_key_concurrency)
    rate: tuple[int, float] | None = None
    retry_priority_step: int = attrs.field(default=0, validator=_check_step)

    @property
    def limits_claims(self) -> bool:
        """Whether the claim must count this handler's jobs."""
        return (
            self.concurrency is not None
            or self.key_concurrency is not None
            or self.rate is not None
        )

    def retry_priority(self, priority: int) -> int:
        return min(priority + self.retry_priority_step, MAX_PRIORITY)
