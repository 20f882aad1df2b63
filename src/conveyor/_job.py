"""Jobs as values, and their life cycle as an explicit transition table (DESIGN §2).

Everything here is pure: no I/O and no event loop. The store applies these rules; the property
suite's reference model and the documentation mirror them.
"""

from __future__ import annotations

import enum
import json
import math
import threading
from typing import TYPE_CHECKING, Any, Final

import attrs

# pydantic reads a TypedDict's schema from typing_extensions' only, before Python 3.12.
from typing_extensions import TypedDict

from ._errors import InvalidArgument, NotJSONSerializable

if TYPE_CHECKING:
    from pydantic import GetCoreSchemaHandler
    from pydantic_core import core_schema

JSON = Any
"""A value that :func:`json.dumps` accepts: dict, list, str, int, float, bool or None."""

MIN_PRIORITY: Final = 1
MAX_PRIORITY: Final = 10
DEFAULT_PRIORITY: Final = 5
MAX_KEY_LENGTH: Final = 255
MAX_INT: Final = 2**63 - 1
"""The largest integer SQLite stores: the bound on ids and attempt counts."""
MIN_RUN_AT: Final = 946_684_800.0
"""2000-01-01 00:00 UTC as epoch seconds: the earliest ``run_at`` but 0."""
MAX_RUN_AT: Final = 32_503_680_000.0
"""3000-01-01 00:00 UTC as epoch seconds: the latest ``run_at``."""
MAX_DELAY: Final = 100 * 365.25 * 86400
"""A hundred years in seconds: the longest ``delay``."""


class JobStatus(enum.StrEnum):
    """Where a job is in its life cycle; ``completed``, ``failed``, ``cancelled`` are terminal.

    ``waiting``: some of the jobs it runs after (its dependencies) have not completed yet.
    """

    WAITING = "waiting"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: Final = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

STATUS_TEXT: Final = {status: status.value for status in JobStatus}
"""Each status's text: an enum's ``value`` is a property, ten times slower than this lookup."""


class Event(enum.StrEnum):
    """What happens to a job: the keys of :data:`TRANSITIONS`, and what a :class:`Change` says.

    The one vocabulary of the life cycle: the store asks :func:`decide` what an event does, the
    announced changes and the metrics name these values.
    """

    ENQUEUED = "enqueued"
    STARTED = "started"  # claimed for an attempt
    COMPLETED = "completed"
    RETRIED = "retried"  # an attempt failed with attempts left: pending again, after a backoff
    FAILED = "failed"  # Fail raised, or the last attempt failed: the dead letter
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # shutdown stopped the attempt: pending again, attempt not counted
    RECOVERED = "recovered"  # the process running it died: pending again, attempt counted
    REQUEUED = "requeued"
    BLOCKED = "blocked"  # stored, or requeued, while some of its dependencies are unfinished
    RELEASED = "released"  # the last of its dependencies completed: pending


TRANSITIONS: Final[dict[tuple[JobStatus | None, Event], JobStatus]] = {
    (None, Event.ENQUEUED): JobStatus.PENDING,
    (None, Event.BLOCKED): JobStatus.WAITING,
    (JobStatus.WAITING, Event.RELEASED): JobStatus.PENDING,
    (JobStatus.WAITING, Event.CANCELLED): JobStatus.CANCELLED,
    (JobStatus.PENDING, Event.STARTED): JobStatus.RUNNING,
    (JobStatus.PENDING, Event.CANCELLED): JobStatus.CANCELLED,
    (JobStatus.RUNNING, Event.COMPLETED): JobStatus.COMPLETED,
    (JobStatus.RUNNING, Event.RETRIED): JobStatus.PENDING,
    (JobStatus.RUNNING, Event.FAILED): JobStatus.FAILED,
    (JobStatus.RUNNING, Event.CANCELLED): JobStatus.CANCELLED,
    (JobStatus.RUNNING, Event.INTERRUPTED): JobStatus.PENDING,
    (JobStatus.RUNNING, Event.RECOVERED): JobStatus.PENDING,
    (JobStatus.FAILED, Event.REQUEUED): JobStatus.PENDING,
    (JobStatus.CANCELLED, Event.REQUEUED): JobStatus.PENDING,
    (JobStatus.FAILED, Event.BLOCKED): JobStatus.WAITING,
    (JobStatus.CANCELLED, Event.BLOCKED): JobStatus.WAITING,
}
"""The only legal transitions (DESIGN §2): ``(status, event) -> new status``; ``None`` is a job
not yet stored."""


class IllegalTransition(RuntimeError):
    """An event was applied to a job in a status it cannot happen in: a bug in conveyor."""


def decide(status: JobStatus | None, event: Event) -> JobStatus:
    """The status a job in ``status`` moves to when ``event`` happens.

    Raises :class:`IllegalTransition` when the table has no such transition.
    """
    try:
        return TRANSITIONS[status, event]
    except KeyError:
        raise IllegalTransition(f"{event.value!r} cannot happen to a {status} job") from None


def sources_of(event: Event) -> frozenset[JobStatus]:
    """Every stored status from which ``event`` is legal."""
    return frozenset(status for status, ev in TRANSITIONS if ev is event and status is not None)


ATTEMPT_ENDINGS: Final = frozenset(
    {
        Event.COMPLETED,
        Event.RETRIED,
        Event.FAILED,
        Event.CANCELLED,
        Event.INTERRUPTED,
        Event.RECOVERED,
    }
)
"""The events that end a running attempt."""


def end_attempt(
    proposed: Event, *, attempts: int, max_attempts: int, cancel_requested: bool
) -> Event:
    """The event that ends an attempt, given what its runner ``proposed`` and the job's state.

    A cancel requested while the job ran wins over any ending; a retry (or a recovery after a
    crash, which counts the attempt) with no attempts left fails the job. Shutdown's
    ``interrupted`` does not count the attempt, so it always returns the job to pending.
    """
    if proposed not in ATTEMPT_ENDINGS:
        raise IllegalTransition(f"{proposed.value!r} does not end an attempt")
    if cancel_requested:
        return Event.CANCELLED
    if proposed in (Event.RETRIED, Event.RECOVERED) and attempts >= max_attempts:
        return Event.FAILED
    return proposed


_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
"""One encoder for every call: ``json.dumps`` with options builds a new one each time."""


_encoders: Final = threading.local()


def _encode(value: JSON) -> str:
    """``_ENCODER.encode(value)`` without its per-call cost, where the C accelerator is there.

    ``JSONEncoder.encode`` builds the accelerator's encoder anew for every value (about half
    of the 1.1 µs a small payload takes); this keeps one per thread, since its record of the
    containers it is inside (which finds a value that contains itself) is its own. A failed
    encode may leave that record dirty: the encoder is dropped then, and built anew.
    """
    try:
        chunks = _encoders.chunks
    except AttributeError:
        make = json.encoder.c_make_encoder  # type: ignore[attr-defined]
        if make is None:
            return _ENCODER.encode(value)
        chunks = _encoders.chunks = make(
            {}, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
            False, False, False,
        )  # fmt: skip
    try:
        return "".join(chunks(value, 0))
    except BaseException:
        del _encoders.chunks
        raise


def encode_json(value: JSON, what: str, *what_args: object) -> str:
    """``value`` as compact JSON text; :class:`NotJSONSerializable` naming ``what`` if it is
    not (``what`` formatted with ``what_args`` by :meth:`str.format`, only then)."""
    if value is None:
        return "null"
    try:
        if type(value) is int:
            return str(value)
        text = _encode(value)
        # SQLite stores UTF-8: a lone surrogate would fail there, inside the store's batch.
        # ASCII text (the common case, checked in C without a copy) cannot hold one.
        if not text.isascii():
            text.encode()
    except UnicodeEncodeError:
        problem = "it holds a lone surrogate, which is not Unicode text"
    except RecursionError:
        problem = "it is nested too deeply"
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        return text
    raise NotJSONSerializable(f"{what.format(*what_args)} is not JSON-serializable: {problem}")


def check_text(what: str, value: str) -> None:
    """Refuse a str that cannot be stored as text everywhere: one holding a lone surrogate
    (not UTF-8) or a NUL character (which PostgreSQL's text cannot hold)."""
    if not value.isascii():  # ASCII (checked in C without a copy) holds no surrogate
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidArgument(
                f"{what} must be Unicode text; {value!r} holds a lone surrogate"
            ) from None
    if "\x00" in value:
        raise InvalidArgument(f"{what} must not hold a NUL character: {value!r}")


def check_priority(value: int) -> None:
    """Refuse a priority that is not an int within 1..10."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"priority must be an int, not {value!r}")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be within {MIN_PRIORITY}..{MAX_PRIORITY} "
            f"({MIN_PRIORITY} runs first), not {value}"
        )


def check_seconds(
    name: str, value: float | None, *, positive: bool = False, maximum: float | None = None
) -> None:
    """Refuse a time argument that is not a finite number >= 0 (> 0 when ``positive``), or
    that exceeds ``maximum`` when one is given."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a finite number of seconds, not {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise InvalidArgument(f"{name} must be {bound}, not {value!r}")
    if maximum is not None and value > maximum:
        years = maximum / (365.25 * 86400)
        raise InvalidArgument(
            f"{name} must be at most {maximum:.0f} seconds (about {years:.0f} years), not {value!r}"
        )


def check_run_at(value: float | None) -> None:
    """Refuse a ``run_at`` that is not 0 (due at once) or wall-clock epoch seconds within
    years 2000..3000.

    Outside it a time is a mistake (a delay given as ``run_at``, milliseconds for seconds) or
    hostile: ``-1e300`` would put a job ahead of every job of its priority ever to come, and
    make the ages and latencies the queue reports absurd.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"run_at must be finite wall-clock seconds, not {value!r}")
    if value == 0 or MIN_RUN_AT <= value <= MAX_RUN_AT:
        return
    hint = ""
    if 0 < value < MIN_RUN_AT:
        hint = "; to run it some seconds from now, give delay instead"
    elif MIN_RUN_AT <= value / 1000 <= MAX_RUN_AT:
        hint = "; it looks like milliseconds, and run_at is in seconds"
    raise InvalidArgument(
        f"run_at must be epoch seconds between {MIN_RUN_AT:.0f} (year 2000) and "
        f"{MAX_RUN_AT:.0f} (year 3000), or 0 for at once, not {value!r}{hint}"
    )


def check_max_attempts(value: int | None) -> None:
    """Refuse a ``max_attempts`` that is not an int >= 1."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
        raise InvalidArgument(f"max_attempts must be an int within 1..2**63-1, not {value!r}")


def check_name(value: str) -> None:
    """Refuse a handler name that is not a non-empty text."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"a job's handler name must be a non-empty str, not {value!r}")
    check_text("a job's handler name", value)


def check_key(what: str, value: str | None) -> None:
    """Refuse a key (``None`` or a non-empty text of at most :data:`MAX_KEY_LENGTH`
    characters) that is anything else, naming it ``what``."""
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise InvalidArgument(
            f"{what} must be a non-empty str of at most {MAX_KEY_LENGTH} characters, not {value!r}"
        )
    check_text(what, value)


def job_ids(value: object) -> tuple[int, ...]:
    """``value`` as a tuple of job ids, each once, in order; :class:`InvalidArgument` if it
    is not an iterable of ints within 1..2**63-1."""
    if not value and value.__class__ in (tuple, list):
        return ()
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise InvalidArgument(f"after must be a list of job ids, not {value!r}")
    ids: dict[int, None] = {}
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= MAX_INT:
            raise InvalidArgument(f"after holds job ids (ints >= 1), not {item!r}")
        ids[item] = None
    return tuple(ids)


@attrs.frozen
class JobSpec:
    """A job to enqueue: what :meth:`Queue.enqueue_many` takes. Validated when constructed.

    ``delay`` (seconds from now, at most :data:`MAX_DELAY`, a hundred years) and ``run_at``
    (wall-clock epoch seconds within years 2000..3000, or 0 for at once) are exclusive; with
    neither, the job is ready at once.
    """

    name: str
    payload: JSON = None
    priority: int = attrs.field(default=DEFAULT_PRIORITY, kw_only=True)
    delay: float | None = attrs.field(default=None, kw_only=True)
    run_at: float | None = attrs.field(default=None, kw_only=True)
    max_attempts: int | None = attrs.field(default=None, kw_only=True)
    timeout: float | None = attrs.field(default=None, kw_only=True)
    idempotency_key: str | None = attrs.field(default=None, kw_only=True)
    after: tuple[int, ...] = attrs.field(default=(), kw_only=True, converter=job_ids)
    """Ids of stored jobs this one runs after: it waits until all of them completed."""
    concurrency_key: str | None = attrs.field(default=None, kw_only=True)
    """Jobs of one handler and key run at most ``key_concurrency`` at once (the handler's)."""

    def __attrs_post_init__(self) -> None:
        # One check of every field, field by field, rather than a validator each: attrs calls
        # a validator even for a default, and ten calls cost more than the rest of the spec.
        check_name(self.name)
        priority = self.priority
        if priority.__class__ is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
            check_priority(priority)
        if self.delay is not None:
            check_seconds("delay", self.delay, maximum=MAX_DELAY)
        if self.run_at is not None:
            check_run_at(self.run_at)
        if self.max_attempts is not None:
            check_max_attempts(self.max_attempts)
        if self.timeout is not None:
            check_seconds("timeout", self.timeout, positive=True)
        if self.idempotency_key is not None:
            check_key("idempotency_key", self.idempotency_key)
        if self.concurrency_key is not None:
            check_key("concurrency_key", self.concurrency_key)
        if self.delay is not None and self.run_at is not None:
            raise InvalidArgument("give delay or run_at, not both")


class JobDict(TypedDict):
    """A job as :meth:`Job.to_dict` gives it: JSON-ready. Times are wall-clock seconds since
    the epoch."""

    id: int
    name: str
    payload: Any
    status: str
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: Any
    error: str | None
    progress: float | None
    progress_message: str | None
    timeout: float | None
    idempotency_key: str | None
    after: list[int]
    schedule_key: str | None
    concurrency_key: str | None


# Not slotted: a frozen class with a __dict__ is built in two thirds of the time (attrs fills
# the dict instead of calling object.__setattr__ per field), and a drain builds one per job.
@attrs.frozen(slots=False)
class Job:
    """A job as stored: an immutable snapshot, taken when it was read.

    ``attempts`` counts the attempts started so far (a running job's current attempt included).
    ``error`` holds the last failure's message and traceback text. ``progress`` (0..1) and
    ``progress_message`` are what the handler last reported. ``after`` holds the ids of the
    jobs it runs after; ``schedule_key`` the key of the schedule that enqueued it, if one did;
    ``concurrency_key`` the key its handler's ``key_concurrency`` counts it under.
    """

    id: int
    name: str
    payload: JSON
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: JSON = None
    error: str | None = None
    progress: float | None = None
    progress_message: str | None = None
    timeout: float | None = None
    idempotency_key: str | None = None
    after: tuple[int, ...] = ()
    schedule_key: str | None = None
    concurrency_key: str | None = None
    trace_context: str | None = attrs.field(default=None, eq=False, repr=False)
    """The W3C trace context (``traceparent``, ``tracestate``) of the span it was enqueued in,
    as JSON, with the ``otel`` extra (``None``: none): the spans of its attempts continue that
    trace. Not part of :meth:`to_dict`, nor of equality."""

    def to_dict(self) -> JobDict:
        """The job as a JSON-ready dict: every field, the status as its text, ``after`` as a
        list (what ``conveyor serve``'s API answers, and what a web route can return)."""
        return {
            "id": self.id,
            "name": self.name,
            "payload": self.payload,
            "status": STATUS_TEXT[self.status],
            "priority": self.priority,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "run_at": self.run_at,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "timeout": self.timeout,
            "idempotency_key": self.idempotency_key,
            "after": list(self.after),
            "schedule_key": self.schedule_key,
            "concurrency_key": self.concurrency_key,
        }

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Lets a FastAPI route (or a pydantic model) return a Job: it is written as
        :meth:`to_dict`, with :class:`JobDict`'s schema. As input it takes Job values only: a
        job is read from its queue, never built from a request."""
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(
            cls,
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls.to_dict, return_schema=handler.generate_schema(JobDict)
            ),
        )
