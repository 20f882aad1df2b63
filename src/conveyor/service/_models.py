"""The HTTP API's request and response bodies, as pydantic models (they make the OpenAPI schema).

Requests are strict (no coercion of ``"5"`` to ``5``, no unknown fields), so a client learns of a
wrong type instead of having it guessed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .._job import (
    MAX_DELAY,
    MAX_KEY_LENGTH,
    MAX_PRIORITY,
    MAX_RUN_AT,
    MIN_PRIORITY,
    Job,
    JobStatus,
    check_run_at,
)
from .._queue import Stats

MAX_ID: Final = 2**63 - 1
"""SQLite's largest integer: ids beyond it cannot exist."""

MAX_ATTEMPTS_LIMIT: Final = 1_000_000
MAX_BATCH: Final = 1000

PREVIEW_CHARS: Final = 200
"""The longest preview of a payload, result or error in a list of jobs."""

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _run_at_in_range(value: float | None) -> float | None:
    check_run_at(value)  # InvalidArgument is a ValueError: pydantic reports it at body...run_at
    return value


class JobIn(BaseModel):
    """A job to enqueue."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The handler's name.")
    payload: Any = Field(default=None, description="Any JSON value, passed to the handler.")
    priority: int = Field(
        default=5, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="1 runs first; 10 runs last."
    )
    delay: float | None = Field(
        default=None,
        ge=0,
        le=MAX_DELAY,
        allow_inf_nan=False,
        description="Seconds from now until it may run (at most a hundred years).",
    )
    run_at: Annotated[float | None, AfterValidator(_run_at_in_range)] = Field(
        default=None,
        allow_inf_nan=False,
        # The range for clients; the validator, the core's own rule, also refuses 0 < t < 2000.
        json_schema_extra={"minimum": 0, "maximum": MAX_RUN_AT},
        description="Wall-clock epoch seconds when it may run: from 946684800 (year 2000) to "
        "32503680000 (year 3000), or 0 for at once.",
    )
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS_LIMIT)
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="An enqueue with a key a job already holds returns that job.",
    )


class BatchIn(BaseModel):
    """Jobs to enqueue in one transaction: all or none."""

    model_config = ConfigDict(strict=True, extra="forbid")

    jobs: list[JobIn] = Field(min_length=1, max_length=MAX_BATCH)


class PurgeIn(BaseModel):
    """Which finished jobs to delete."""

    model_config = ConfigDict(strict=True, extra="forbid")

    older_than: Seconds = Field(description="Delete jobs that finished more than this ago (s).")


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


class StatsOut(BaseModel):
    """Counts by status and by handler name, and the last minute's throughput."""

    by_status: dict[str, int]
    by_name: dict[str, dict[str, int]]
    throughput: float = Field(description="Jobs finished per second over the last minute.")
    avg_duration: float | None
    success_rate: float | None
    oldest_pending_age: float | None


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
    return {
        "id": job.id,
        "name": job.name,
        "payload": job.payload,
        "status": job.status.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "result": job.result,
        "error": job.error,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "timeout": job.timeout,
        "idempotency_key": job.idempotency_key,
    }


def job_summary_dict(job: Job) -> dict[str, Any]:
    """A job as an item of the API's lists (the fields of :class:`JobSummary`)."""
    payload_preview, payload_truncated = json_preview(job.payload)
    result_preview, result_truncated = json_preview(job.result)
    error, error_truncated = error_preview(job.error)
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status.value,
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
        "payload_preview": payload_preview,
        "payload_truncated": payload_truncated,
        "result_preview": result_preview,
        "result_truncated": result_truncated,
        "error_preview": error,
        "error_truncated": error_truncated,
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
    }
