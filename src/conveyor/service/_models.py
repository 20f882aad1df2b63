"""The HTTP API's request and response bodies, as pydantic models (they make the OpenAPI schema).

Requests are strict (no coercion of ``"5"`` to ``5``, no unknown fields), so a client learns of a
wrong type instead of having it guessed.
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from .._job import (
    MAX_DELAY,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_RUN_AT,
    MIN_PRIORITY,
    STATUS_TEXT,
    Job,
    JobStatus,
    check_run_at,
)
from .._queue import BatchProgress, Stats
from .._registry import Handler
from .._schedule import Schedule
from ._format import parse_duration

MAX_ID: Final = 2**63 - 1
"""SQLite's largest integer: ids beyond it cannot exist."""

MAX_ATTEMPTS_LIMIT: Final = 1_000_000
MAX_BATCH: Final = 1000
MAX_AFTER: Final = 1000
"""The most jobs one job may run after, over HTTP."""
MIN_EVERY: Final = 1.0
"""The shortest ``every`` a schedule takes over HTTP, in seconds: a schedule is durable
bookkeeping (one transaction per tick), not a timer loop."""
MAX_WORKFLOW: Final = 200
"""The most jobs ``GET /jobs/{id}/workflow`` answers with."""
MAX_PROGRESS_IDS: Final = 1000
"""The most jobs ``GET /jobs/progress`` follows at once."""
MAX_PROGRESS_IDS_CHARS: Final = 12_000
"""The longest ``ids`` of ``GET /jobs/progress``: the request's head must stay well within
what the HTTP server reads (16 KiB)."""
MAX_NAME_LENGTH: Final = 200
"""The longest handler name the API takes."""

PREVIEW_CHARS: Final = 200
"""The longest preview of a payload, result or error in a list of jobs."""

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


JobIdIn = Annotated[int, Field(ge=1, le=MAX_ID)]

DURATION_PATTERN: Final = r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?[smhdw])+)\s*$"


def _duration(value: object) -> object:
    """A duration given as text (``90s``, ``1m30s``, ``7d``) as seconds; a number as it is."""
    return parse_duration(value) if isinstance(value, str) else value


def _moment(value: object) -> object:
    """A time given as ISO 8601 text, with its offset, as epoch seconds; a number as it is."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{value!r} is neither epoch seconds nor an ISO 8601 time such as 2030-01-01T09:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} needs its UTC offset (Z, or +01:00): which zone is it in?")
    return moment.timestamp()


def _seconds_schema(
    description: str, *, nullable: bool = True, maximum: float | None = None
) -> WithJsonSchema:
    number: dict[str, Any] = {"type": "number", "minimum": 0}
    if maximum is not None:
        number["maximum"] = maximum
    kinds: list[dict[str, Any]] = [number, {"type": "string", "pattern": DURATION_PATTERN}]
    return WithJsonSchema(
        {"anyOf": [*kinds, {"type": "null"}] if nullable else kinds, "description": description}
    )


def _run_at_in_range(value: float | None) -> float | None:
    check_run_at(value)  # InvalidArgument is a ValueError: pydantic reports it at body...run_at
    return value


def _known_timezone(value: str) -> str:
    # Checked here too, to name the field: the file lookup behind ZoneInfo also fails with
    # OSError (a directory such as "America", a name too long for the file system).
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            f"unknown timezone {value!r} (an IANA name such as 'Europe/Paris')"
        ) from None
    return value


class JobIn(BaseModel):
    """A job to enqueue."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The handler's name.")
    payload: Any = Field(default=None, description="Any JSON value, passed to the handler.")
    priority: int = Field(
        default=5, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="1 runs first; 10 runs last."
    )
    delay: Annotated[
        float | None,
        BeforeValidator(_duration),
        _seconds_schema(
            "How long from now until it may run: seconds, or text such as 90s, 1m30s, 2h, 7d "
            "(at most a hundred years).",
            maximum=MAX_DELAY,
        ),
    ] = Field(default=None, ge=0, le=MAX_DELAY, allow_inf_nan=False)
    run_at: Annotated[
        float | None,
        BeforeValidator(_moment),
        AfterValidator(_run_at_in_range),
        WithJsonSchema(
            {
                "anyOf": [
                    # The range for clients; the validator, the core's own rule, also refuses
                    # 0 < t < 2000.
                    {"type": "number", "minimum": 0, "maximum": MAX_RUN_AT},
                    {"type": "string", "format": "date-time"},
                    {"type": "null"},
                ],
                "description": "When it may run: wall-clock epoch seconds from 946684800 (year "
                "2000) to 32503680000 (year 3000), or 0 for at once; or an ISO 8601 time with "
                "its offset (2030-01-01T09:00:00Z).",
            }
        ),
    ] = Field(default=None, allow_inf_nan=False)
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout: Annotated[
        float | None,
        BeforeValidator(_duration),
        _seconds_schema("How long an attempt may run: seconds, or text such as 30s, 5m."),
    ] = Field(default=None, gt=0, allow_inf_nan=False)
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="An enqueue with a key a job already holds returns that job.",
    )
    after: list[JobIdIn] = Field(
        default_factory=list,
        max_length=MAX_AFTER,
        description="Ids of stored jobs this one runs after: it is `waiting` until all of them "
        "completed, and is cancelled if one fails or is cancelled. An unknown id is a 422.",
    )
    concurrency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Groups jobs for the handler's `key_concurrency`: at most that many jobs "
        "of the handler with the same key run at once.",
    )


class BatchIn(BaseModel):
    """Jobs to enqueue in one transaction: all or none."""

    model_config = ConfigDict(strict=True, extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH)


class StepIn(JobIn):
    """A step of a workflow: a job, and the earlier steps of the same request it runs after."""

    after_steps: list[Annotated[int, Field(ge=0, lt=MAX_BATCH)]] = Field(
        default_factory=list,
        max_length=MAX_AFTER,
        description="Positions (0-based) in `steps` of earlier steps this one runs after; a "
        "step cannot run after itself or a later step. `after` takes ids of stored jobs.",
    )


class WorkflowIn(BaseModel):
    """Jobs that run after one another, enqueued in one transaction: all or none."""

    model_config = ConfigDict(strict=True, extra="forbid")

    steps: list[StepIn] = Field(min_length=1, max_length=MAX_BATCH)


class HandlerFilterIn(BaseModel):
    """Which jobs a bulk operation takes: those of one handler, or (no name) all."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="Only jobs of this handler."
    )


class ScheduleIn(BaseModel):
    """A recurring job, stored under ``key`` (replacing the schedule there). Give exactly one
    of ``every`` and ``cron``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH, description="The schedule's name.")
    name: str = Field(min_length=1, max_length=200, description="The handler's name.")
    payload: Any = Field(default=None, description="Any JSON value, passed to each job.")
    every: float | None = Field(
        default=None,
        ge=MIN_EVERY,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description=f"Seconds between ticks (at least {MIN_EVERY:g}); the first tick is this "
        "long from now.",
    )
    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Five fields (minute hour day month weekday), read in `timezone`.",
    )
    timezone: Annotated[str, AfterValidator(_known_timezone)] = Field(
        default="UTC", min_length=1, max_length=100, description="An IANA time zone name."
    )
    catch_up: Literal["latest", "all", "none"] = Field(
        default="latest",
        description="Ticks missed while no process had the file open: enqueue one job for the "
        "latest, one per tick (the latest 1000 at most), or none.",
    )
    priority: int = Field(
        default=5, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="1 runs first; 10 runs last."
    )
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduleIn:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (seconds) and cron (five fields)")
        return self


class PurgeIn(BaseModel):
    """Which finished jobs to delete."""

    model_config = ConfigDict(strict=True, extra="forbid")

    older_than: Annotated[
        Seconds,
        BeforeValidator(_duration),
        _seconds_schema(
            "Delete jobs that finished more than this ago: seconds, or text such as 12h, 7d.",
            nullable=False,
        ),
    ]


class JobOut(BaseModel):
    """A job as stored. Times are wall-clock seconds since the epoch."""

    id: int
    name: str
    payload: Any
    status: JobStatus
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
    after: list[int] = Field(description="Ids of the jobs it runs after.")
    schedule_key: str | None = Field(description="The schedule that enqueued it, if one did.")
    concurrency_key: str | None = Field(
        description="The key its handler's key_concurrency counts it under, if given."
    )


class CancelInProgress(JobOut):
    """A running job whose cancel is not done yet: its handler has not stopped."""

    note: str = Field(description="Says that cancellation is in progress, and how to follow it.")


class JobSummary(BaseModel):
    """A job in a list: every field of the job but its payload, result and error, which come
    as bounded previews. ``GET /jobs/{id}`` gives the whole job."""

    id: int
    name: str
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    run_at: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float | None
    progress_message: str | None
    timeout: float | None
    idempotency_key: str | None
    after: list[int] = Field(description="Ids of the jobs it runs after.")
    schedule_key: str | None = Field(description="The schedule that enqueued it, if one did.")
    concurrency_key: str | None = Field(
        description="The key its handler's key_concurrency counts it under, if given."
    )
    payload_preview: str = Field(
        description=f"The payload as JSON text, cut to {PREVIEW_CHARS} characters."
    )
    payload_truncated: bool = Field(description="Whether payload_preview was cut.")
    result_preview: str = Field(
        description=f"The result as JSON text, cut to {PREVIEW_CHARS} characters."
    )
    result_truncated: bool = Field(description="Whether result_preview was cut.")
    error_preview: str | None = Field(
        description="The error's summary line (a traceback's last line, a message's first), "
        f"cut to {PREVIEW_CHARS} characters."
    )
    error_truncated: bool = Field(description="Whether error_preview's line was cut.")


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobSummary]
    next_cursor: int | None


class Batch(BaseModel):
    jobs: list[JobOut]


class WorkflowOut(BaseModel):
    """The jobs connected to ``job_id`` through ``after``, in both directions, by id.

    Each job's ``after`` gives the edges; ids in it that are not among ``jobs`` were purged
    or lie beyond the bound. ``truncated``: more jobs are connected than the answer holds.
    """

    job_id: int
    jobs: list[JobSummary]
    truncated: bool


class ScheduleOut(BaseModel):
    """A stored schedule. Times are wall-clock seconds since the epoch."""

    key: str
    name: str
    payload: Any
    every: float | None
    cron: str | None
    timezone: str
    catch_up: Literal["latest", "all", "none"]
    priority: int
    max_attempts: int | None
    timeout: float | None
    next_run_at: float = Field(description="When it ticks next.")
    last_run_at: float | None = Field(description="The tick of the last job it enqueued.")
    last_job_id: int | None = Field(description="The last job it enqueued.")
    last_job_status: JobStatus | None = Field(
        description="That job's status now (null: no job yet, or it was purged)."
    )
    paused: bool


class ScheduleList(BaseModel):
    """Every schedule, by key."""

    schedules: list[ScheduleOut]


class Requeued(BaseModel):
    requeued: int


class Cancelled(BaseModel):
    cancelled: int


class StatsOut(BaseModel):
    """Counts by status and by handler name, and the last minute's throughput."""

    by_status: dict[str, int]
    by_name: dict[str, dict[str, int]]
    throughput: float = Field(description="Jobs finished per second over the last minute.")
    avg_duration: float | None
    success_rate: float | None
    oldest_pending_age: float | None
    memory_limited: bool = Field(
        description="Memory in use is at or above the queue's high-water mark: at most one "
        "job runs at a time."
    )


class RateLimitOut(BaseModel):
    """At most ``count`` starts in any window of ``seconds``."""

    count: int
    seconds: float


class LimitsOut(BaseModel):
    """A handler's limits, held when jobs are claimed (null: no limit)."""

    concurrency: int | None = Field(description="At most this many of its jobs run at once.")
    key_concurrency: int | None = Field(
        description="At most this many of its jobs with the same concurrency_key run at once."
    )
    rate_limit: RateLimitOut | None
    retry_priority_step: int = Field(
        description="Each retry runs at the last attempt's priority plus this (capped at 10)."
    )


class HandlerOptions(BaseModel):
    """How a handler is registered: its job defaults, where it runs, and its limits."""

    max_attempts: int = Field(description="Attempts per job, unless the job gives its own.")
    timeout: float | None = Field(description="Seconds an attempt may run, unless the job says.")
    process: bool = Field(description="Whether it runs in a worker process.")
    memory_limit: int | None = Field(
        description="Bytes of resident memory an attempt's worker process may use."
    )
    limits: LimitsOut


class HandlerOut(BaseModel):
    """A handler: whether it is paused, how it is registered, and its jobs by status."""

    name: str
    registered: bool = Field(
        description="Whether this server runs it; the file may hold jobs, or a pause, of a "
        "handler it does not run (then options is null)."
    )
    paused: bool = Field(description="Its pending jobs are not started until it is resumed.")
    options: HandlerOptions | None
    counts: dict[str, int] = Field(description="Its jobs by status.")


class HandlerList(BaseModel):
    """Every handler the server runs, and any other that has jobs or a pause, by name."""

    handlers: list[HandlerOut]


class Paused(BaseModel):
    """A handler after a pause or resume; ``changed`` is false if it already was so."""

    name: str
    paused: bool
    changed: bool


class ProgressOut(BaseModel):
    """Where a batch of jobs stands (``pending`` counts the waiting jobs too)."""

    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    finished: int = Field(description="completed + failed + cancelled.")
    state: str = Field(
        description="These counts as one value: pass it as `since` to wait for a change."
    )


class SessionOut(BaseModel):
    """A dashboard session: send it as `Authorization: Bearer <session>` until it expires."""

    session: str
    expires_at: float


class Bucket(BaseModel):
    start: float
    completed: int
    failed: int


class Throughput(BaseModel):
    """Jobs finished per time bucket since the server started, oldest first."""

    bucket_seconds: float
    buckets: list[Bucket]


class Purged(BaseModel):
    deleted: int


class Health(BaseModel):
    status: str


class ProblemOut(BaseModel):
    """An RFC 9457 problem: what went wrong, precisely."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job as the API's JSON object (the fields of :class:`JobOut`)."""
    return cast(dict[str, Any], job.to_dict())


def job_summary_dict(job: Job) -> dict[str, Any]:
    """A job as an item of the API's lists (the fields of :class:`JobSummary`)."""
    payload_preview, payload_truncated = json_preview(job.payload)
    result_preview, result_truncated = json_preview(job.result)
    error, error_truncated = error_preview(job.error)
    return {
        "id": job.id,
        "name": job.name,
        "status": STATUS_TEXT[job.status],
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "timeout": job.timeout,
        "idempotency_key": job.idempotency_key,
        "after": list(job.after),
        "schedule_key": job.schedule_key,
        "concurrency_key": job.concurrency_key,
        "payload_preview": payload_preview,
        "payload_truncated": payload_truncated,
        "result_preview": result_preview,
        "result_truncated": result_truncated,
        "error_preview": error,
        "error_truncated": error_truncated,
    }


def schedule_to_dict(schedule: Schedule, last_job: Job | None) -> dict[str, Any]:
    """A schedule as the API's JSON object (the fields of :class:`ScheduleOut`), with the
    status of ``last_job``, its last job as read now (``None``: none, or purged)."""
    return {
        "key": schedule.key,
        "name": schedule.name,
        "payload": schedule.payload,
        "every": schedule.every,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "catch_up": schedule.catch_up,
        "priority": schedule.priority,
        "max_attempts": schedule.max_attempts,
        "timeout": schedule.timeout,
        "next_run_at": schedule.next_run_at,
        "last_run_at": schedule.last_run_at,
        "last_job_id": schedule.last_job_id,
        "last_job_status": None if last_job is None else last_job.status.value,
        "paused": schedule.paused,
    }


def json_preview(value: Any, limit: int = PREVIEW_CHARS) -> tuple[str, bool]:
    """``value`` as compact JSON text cut to ``limit`` characters, and whether it was cut.

    Encodes no more of the value than the preview needs, so a list of jobs with huge payloads
    costs the same as one with small ones.
    """
    pieces: list[str] = []
    size = 0
    for piece in _json_pieces(value, limit):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(pieces)[:limit], True
    return "".join(pieces), False


def _json_pieces(value: Any, limit: int) -> Iterator[str]:
    # A generator, so that the caller stops the walk once it has enough text: every level
    # yields at least one character first, so the walk never goes deeper than ``limit``.
    if isinstance(value, str):
        # One character more than fits is enough to know the text was cut.
        yield json.dumps(value[: limit + 1], ensure_ascii=False)
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield "," if index else ""
            yield from _json_pieces(key if isinstance(key, str) else str(key), limit)
            yield ":"
            yield from _json_pieces(item, limit)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for index, item in enumerate(value):
            yield "," if index else ""
            yield from _json_pieces(item, limit)
        yield "]"
    else:
        yield json.dumps(value)


def error_preview(error: str | None, limit: int = PREVIEW_CHARS) -> tuple[str | None, bool]:
    """The line that sums up an error, cut to ``limit`` characters, and whether it was cut.

    A traceback is summed up by its last line (the exception), a message by its first.
    """
    if error is None:
        return None, False
    text = error.strip()
    if text.startswith("Traceback"):
        line = text[text.rfind("\n") + 1 :]
    else:
        end = text.find("\n")
        line = text if end < 0 else text[:end]
    line = line.strip()
    return line[:limit], len(line) > limit


def stats_to_dict(stats: Stats) -> dict[str, Any]:
    """Statistics as the API's JSON object (the fields of :class:`StatsOut`)."""
    return {
        "by_status": {status.value: count for status, count in stats.by_status.items()},
        "by_name": {
            name: {status.value: count for status, count in counts.items()}
            for name, counts in stats.by_name.items()
        },
        "throughput": stats.throughput,
        "avg_duration": stats.avg_duration,
        "success_rate": stats.success_rate,
        "oldest_pending_age": stats.oldest_pending_age,
        "memory_limited": stats.memory_limited,
    }


def handler_to_dict(
    name: str, handler: Handler | None, paused: bool, counts: Mapping[JobStatus, int]
) -> dict[str, Any]:
    """A handler as the API's JSON object (the fields of :class:`HandlerOut`); ``handler`` is
    its registration, ``None`` if this server does not run it."""
    options = None
    if handler is not None:
        limits = handler.limits
        rate = None if limits.rate is None else {"count": limits.rate[0], "seconds": limits.rate[1]}
        options = {
            "max_attempts": handler.max_attempts,
            "timeout": handler.timeout,
            "process": handler.process,
            "memory_limit": handler.memory_limit,
            "limits": {
                "concurrency": limits.concurrency,
                "key_concurrency": limits.key_concurrency,
                "rate_limit": rate,
                "retry_priority_step": limits.retry_priority_step,
            },
        }
    return {
        "name": name,
        "registered": handler is not None,
        "paused": paused,
        "options": options,
        "counts": {status.value: counts.get(status, 0) for status in JobStatus},
    }


def progress_state(progress: BatchProgress) -> str:
    """A batch's counts as one value, to compare with a client's ``since``."""
    return (
        f"{progress.total}.{progress.pending}.{progress.running}.{progress.completed}."
        f"{progress.failed}.{progress.cancelled}"
    )


def progress_to_dict(progress: BatchProgress) -> dict[str, Any]:
    """A batch's progress as the API's JSON object (the fields of :class:`ProgressOut`)."""
    return {
        "total": progress.total,
        "pending": progress.pending,
        "running": progress.running,
        "completed": progress.completed,
        "failed": progress.failed,
        "cancelled": progress.cancelled,
        "finished": progress.finished,
        "state": progress_state(progress),
    }
