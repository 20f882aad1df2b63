"""What the CLI prints: jobs, pages and statistics as rich tables; durations parsed. Pure."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from rich.table import Table
from rich.text import Text

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")

STATUS_STYLES: Final = {
    "waiting": "blue",
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit s, m, h, d or w (``7d``, ``90s``).

    Raises ``ValueError`` naming the text and the accepted form.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: use a number with an optional unit s, m, h, d or w "
            f"(for example 90s, 12h, 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


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
    table = Table(show_header=False, box=None, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in job.items():
        if key == "status":
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
