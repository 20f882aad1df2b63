"""The HTTP API's request and response bodies, as pydantic models (they make the OpenAPI schema).

Requests are strict (no coercion of ``"5"`` to ``5``, no unknown fields), so a client learns of a
wrong type instead of having it guessed.
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field

from .._job import MAX_KEY_LENGTH, MAX_PRIORITY, MIN_PRIORITY, Job, JobStatus
from .._queue import Stats

MAX_ID: Final = 2**63 - 1
"""SQLite's largest integer: ids beyond it cannot exist."""

MAX_ATTEMPTS_LIMIT: Final = 1_000_000
MAX_BATCH: Final = 1000

Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class JobIn(BaseModel):
    """A job to enqueue."""

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="The handler's name.")
    payload: Any = Field(default=None, description="Any JSON value, passed to the handler.")
    priority: int = Field(
        default=5, ge=MIN_PRIORITY, le=MAX_PRIORITY, description="1 runs first; 10 runs last."
    )
    delay: Seconds | None = Field(default=None, description="Seconds from now until it may run.")
    run_at: float | None = Field(
        default=None, allow_inf_nan=False, description="Wall-clock seconds when it may run."
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


class JobList(BaseModel):
    """A page of jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""

    jobs: list[JobOut]
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
