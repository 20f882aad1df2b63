"""Retry policy: the backoff between attempts and the exceptions handlers raise to steer it."""

from __future__ import annotations

import math
import random

import attrs

from ._errors import InvalidArgument


def _finite_non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"Backoff.{attribute.name} must be a number, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"Backoff.{attribute.name} must be finite and >= 0, not {value!r}")


@attrs.frozen
class Backoff:
    """Exponential backoff: the delay before attempt ``n + 1`` after ``n`` failed attempts.

    The base delay is ``initial * multiplier ** (n - 1)``, capped at ``maximum``; ``jitter`` then
    spreads it uniformly by up to that fraction either way (0.1 means ±10 %), so that jobs that
    failed together do not all retry in the same instant.
    """

    initial: float = attrs.field(default=1.0, validator=_finite_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_finite_non_negative)
    maximum: float = attrs.field(default=3600.0, validator=_finite_non_negative)
    jitter: float = attrs.field(default=0.1, validator=_finite_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise InvalidArgument(f"Backoff.multiplier must be >= 1, not {self.multiplier!r}")
        if self.jitter > 1:
            raise InvalidArgument(f"Backoff.jitter must be within 0..1, not {self.jitter!r}")

    def base_delay(self, failed_attempts: int) -> float:
        """The delay before the next attempt, without jitter, after ``failed_attempts`` >= 1."""
        try:
            grown = self.initial * self.multiplier ** max(failed_attempts - 1, 0)
        except OverflowError:
            return self.maximum
        return min(grown, self.maximum)

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """The delay before the next attempt after ``failed_attempts``, jitter applied."""
        base = self.base_delay(failed_attempts)
        if self.jitter == 0 or base == 0:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return base * (1.0 + spread)


class Fail(Exception):
    """Raised by a handler to fail its job now, without retrying.

    The job becomes ``failed`` (the dead-letter state) whatever attempts it had left; its
    ``error`` holds this exception's message.
    """


class Retry(Exception):
    """Raised by a handler to retry its job after ``delay`` seconds (``None``: the backoff).

    The attempt counts: when it was the job's last one, the job becomes ``failed``.
    """

    def __init__(self, delay: float | None = None) -> None:
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or delay < 0
        ):
            raise InvalidArgument(f"Retry(delay=...) must be a finite number >= 0, not {delay!r}")
        super().__init__(f"retry requested (delay={delay!r})")
        self.delay = delay
