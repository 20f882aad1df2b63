"""What a running handler can learn about, and report on, its own job."""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable

from ._errors import InvalidArgument, NoJobContext
from ._job import JSON, check_text

ProgressSink = Callable[[float, str | None], None]


class JobContext:
    """The job a handler is running: returned by :func:`current_job` inside a handler."""

    __slots__ = ("_report", "attempt", "dependency_results", "id", "name", "payload")

    def __init__(
        self,
        job_id: int,
        name: str,
        attempt: int,
        payload: JSON,
        report: ProgressSink,
        dependency_results: dict[int, JSON] | None = None,
    ) -> None:
        self.id = job_id
        self.name = name
        self.attempt = attempt
        """1 for the first attempt, 2 for the first retry, and so on."""
        self.payload = payload
        self.dependency_results: dict[int, JSON] = dependency_results or {}
        """Each job this one runs after (its ``after``), by id, with its result."""
        self._report = report

    def set_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job has come: ``fraction`` within 0..1 and an optional message.

        The value is visible through :meth:`Queue.get` while the job runs. Calls are cheap and
        never block the handler; when many come faster than the store writes, the latest wins.
        Works from async and sync (threaded) handlers alike.
        """
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not math.isfinite(fraction)
            or not 0 <= fraction <= 1
        ):
            raise InvalidArgument(f"progress must be a number within 0..1, not {fraction!r}")
        if message is not None:
            if not isinstance(message, str):
                raise InvalidArgument(f"a progress message must be a str, not {message!r}")
            check_text("a progress message", message)
        self._report(float(fraction), message)


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("conveyor_current_job")


def current_job() -> JobContext:
    """The :class:`JobContext` of the job whose handler is calling; only valid inside a handler."""
    try:
        return _current.get()
    except LookupError:
        raise NoJobContext("current_job() is only available inside a running job handler") from None


def run_with_context(context: JobContext, function: Callable[[], JSON]) -> JSON:
    """Call ``function`` with ``context`` as the current job (for handlers run in a thread)."""
    token = _current.set(context)
    try:
        return function()
    finally:
        _current.reset(token)


def enter_context(context: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(context)


def leave_context(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
