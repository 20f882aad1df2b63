"""What the CLI prints: jobs, pages, statistics and schedules as rich tables; durations parsed.
Pure."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from rich.table import Table
from rich.text import Text

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"\s*(?:\d+(?:\.\d+)?|(?:\d+(?:\.\d+)?[smhdw])+)\s*")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")

STATUS_STYLES: Final = {
    "waiting": "blue",
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds (``90``), or numbers each with a unit s, m,
    h, d or w, added up (``90s``, ``1m30s``, ``1h``, ``7d``).

    Raises ``ValueError`` naming the text and the accepted forms.
    """
    if _DURATION.fullmatch(text) is None:
        raise ValueError(
            f"{text!r} is not a duration: use seconds, or numbers with a unit s, m, h, d or w "
            f"(for example 90, 90s, 1m30s, 12h, 7d)"
        )
    return sum(
        float(number) * _UNITS[unit or "s"] for number, unit in _DURATION_PART.findall(text.strip())
    )


def format_every(seconds: float) -> str:
    """A period in the largest unit that holds it whole (``90s``, ``12h``, ``7d``); seconds
    otherwise."""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def cadence(schedule: Mapping[str, Any]) -> str:
    """When a schedule ticks: ``every 1h``, or ``cron 0 3 * * * (Europe/Paris)``."""
    if schedule.get("every") is not None:
        return f"every {format_every(schedule['every'])}"
    return f"cron {schedule['cron']} ({schedule['timezone']})"


def format_time(seconds: float | None) -> str:
    """A wall-clock time as local ISO text, to the second; ``-`` for none."""
    if seconds is None:
        return "-"
    return datetime.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


def _status(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def _first_line(error: str | None) -> str:
    if not error:
        return ""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    # A traceback's last line is the exception; a plain message is its first line.
    return lines[-1] if lines and lines[0].startswith("Traceback") else lines[0] if lines else ""


def job_table(job: Mapping[str, Any]) -> Table:
    """One job, field by field."""
    return _fields_table(job)


def _fields_table(document: Mapping[str, Any]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in document.items():
        if (key == "status" or key.endswith("_status")) and value is not None:
            table.add_row(key, _status(str(value)))
        elif key.endswith("_at"):
            table.add_row(key, format_time(value))
        elif value is None:
            table.add_row(key, "-")
        elif key in ("payload", "result"):
            table.add_row(key, json.dumps(value, ensure_ascii=False))
        else:
            table.add_row(key, str(value))
    return table


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> Table:
    """Jobs, one a row: id, name, status, priority, attempts, created, and the last error."""
    table = Table(show_lines=False)
    for column in ("id", "name", "status", "prio", "attempts", "created", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            str(job["id"]),
            job["name"],
            _status(job["status"]),
            str(job["priority"]),
            f"{job['attempts']}/{job['max_attempts']}",
            format_time(job["created_at"]),
            # The API's lists carry a preview; `inspect` reads whole jobs.
            (job["error_preview"] or "")
            if "error_preview" in job
            else _first_line(job.get("error")),
        )
    return table


def stats_tables(stats: Mapping[str, Any]) -> list[Table]:
    """Counts by status, the last minute's figures, and counts by handler name."""
    statuses = list(STATUS_STYLES)
    summary = Table(title="jobs by status")
    for status in statuses:
        summary.add_column(status, justify="right", style=STATUS_STYLES[status])
    summary.add_row(*(str(stats["by_status"].get(status, 0)) for status in statuses))

    minute = Table(title="last minute", show_header=False)
    minute.add_column(style="bold")
    minute.add_column(justify="right")
    minute.add_row("throughput", f"{stats['throughput']:.2f} jobs/s")
    avg = stats.get("avg_duration")
    minute.add_row("mean duration", "-" if avg is None else f"{avg:.3f} s")
    rate = stats.get("success_rate")
    minute.add_row("success rate", "-" if rate is None else f"{rate:.0%}")
    age = stats.get("oldest_pending_age")
    minute.add_row("oldest pending", "-" if age is None else f"{age:.1f} s")

    by_name = Table(title="jobs by handler")
    by_name.add_column("handler")
    for status in statuses:
        by_name.add_column(status, justify="right")
    for name, counts in sorted(stats["by_name"].items()):
        by_name.add_row(name, *(str(counts.get(status, 0)) for status in statuses))
    return [summary, minute, by_name]


def schedule_table(schedule: Mapping[str, Any]) -> Table:
    """One schedule, field by field."""
    return _fields_table(schedule)


def schedules_table(schedules: Sequence[Mapping[str, Any]]) -> Table:
    """Schedules, one a row: key, handler, cadence, next and last tick, and the last job."""
    table = Table()
    for column in ("key", "handler", "cadence", "next run", "last run", "last job"):
        table.add_column(column, overflow="fold")
    for schedule in schedules:
        last = schedule.get("last_job_id")
        last_job = Text("-")
        if last is not None:
            status = schedule.get("last_job_status")
            last_job = Text(f"{last} ")
            last_job.append_text(_status(status) if status else Text("(purged)"))
        # Text, not str: a key or cron expression holding brackets is not rich markup.
        table.add_row(
            Text(schedule["key"]),
            Text(schedule["name"]),
            Text(cadence(schedule)),
            format_time(schedule["next_run_at"]),
            format_time(schedule["last_run_at"]),
            last_job,
        )
    return table


def progress_counts(progress: Mapping[str, Any]) -> str:
    """A batch's counts by status, in words: ``2 completed, 1 failed, 3 running``."""
    parts = [
        f"{progress[status]} {status}"
        for status in ("completed", "failed", "cancelled", "running", "pending")
        if progress.get(status)
    ]
    return ", ".join(parts) or "none yet"


def _limits_text(options: Mapping[str, Any] | None) -> str:
    if options is None:
        return "(not run by this server)"
    limits = options["limits"]
    parts = []
    if limits["concurrency"] is not None:
        parts.append(f"concurrency {limits['concurrency']}")
    if limits["key_concurrency"] is not None:
        parts.append(f"per key {limits['key_concurrency']}")
    rate = limits["rate_limit"]
    if rate is not None:
        parts.append(f"{rate['count']} per {format_every(rate['seconds'])}")
    if limits["retry_priority_step"]:
        parts.append(f"retry priority +{limits['retry_priority_step']}")
    if options["process"]:
        parts.append("process")
    return ", ".join(parts) or "-"


HANDLER_COUNTS: Final = ("pending", "running", "completed", "failed")
"""The statuses ``conveyor handlers`` counts (``--json`` gives them all)."""


def handlers_table(handlers: Sequence[Mapping[str, Any]]) -> Table:
    """Handlers, one a row: name, paused or active, limits, and jobs by status."""
    table = Table()
    table.add_column("handler", overflow="fold")
    table.add_column("state")
    table.add_column("limits", overflow="fold")
    for status in HANDLER_COUNTS:
        table.add_column(status, justify="right")
    for handler in handlers:
        state = Text("paused", style="bold yellow") if handler["paused"] else Text("active")
        table.add_row(
            Text(handler["name"]),
            state,
            Text(_limits_text(handler["options"])),
            *(str(handler["counts"].get(status, 0)) for status in HANDLER_COUNTS),
        )
    return table
