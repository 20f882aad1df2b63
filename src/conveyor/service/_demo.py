"""``conveyor demo``: the service with built-in handlers and a realistic mixed workload.

The workload is deterministic: which jobs fail, retry or get cancelled is written in their
payloads, so every run tells the same story (a card declined, a flaky mail server that recovers,
reports with progress, delayed jobs, jobs cancelled while pending and while running).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Final

import anyio
import attrs
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from .._context import current_job
from .._errors import QueueClosed
from .._events import Change
from .._job import Event, Job, JobSpec, JobStatus
from .._queue import Queue
from .._registry import Registry
from .._retry import Backoff, Fail
from ._format import STATUS_STYLES, stats_tables
from ._models import stats_to_dict

DEMO_DB: Final = "conveyor-demo.db"
REFRESH: Final = 0.25

registry = Registry()
"""The demo's handlers (``conveyor serve --handlers conveyor.service:demo_registry`` too)."""


@registry.handler("thumbnail", max_attempts=3)
async def thumbnail(payload: dict[str, Any]) -> dict[str, Any]:
    """Resize an image: a few hundred milliseconds of work in steps, reporting progress."""
    steps = 4
    for step in range(steps):
        current_job().set_progress(step / steps, ("decode", "resize", "sharpen", "encode")[step])
        await anyio.sleep(payload.get("seconds", 0.4) / steps)
    return {"thumbnail": payload["image"].rsplit(".", 1)[0] + ".thumb.jpg", "size": [320, 240]}


@registry.handler(
    "send_email", max_attempts=4, backoff=Backoff(initial=0.5, multiplier=2, maximum=4, jitter=0.1)
)
async def send_email(payload: dict[str, Any]) -> dict[str, Any]:
    """Send a mail; the first ``flaky`` attempts meet a busy server and are retried."""
    await anyio.sleep(0.1)
    if current_job().attempt <= payload.get("flaky", 0):
        raise ConnectionError("421 smtp.example.com: service not available, try again later")
    return {"message_id": f"<{payload['to']}.{current_job().id}@example.com>"}


@registry.handler("charge_card", max_attempts=3)
async def charge_card(payload: dict[str, Any]) -> dict[str, Any]:
    """Charge a card; a declined card fails at once (retrying cannot help)."""
    await anyio.sleep(0.2)
    if payload["card"].endswith("0002"):
        raise Fail(f"card ending {payload['card'][-4:]} declined: insufficient funds")
    return {"charged": payload["amount"], "currency": "EUR"}


@registry.handler("build_report", timeout=120)
async def build_report(payload: dict[str, Any]) -> dict[str, Any]:
    """A slow job: ``seconds`` of work in ten steps, reporting progress."""
    steps = 10
    for step in range(steps):
        current_job().set_progress(step / steps, f"section {step + 1} of {steps}")
        await anyio.sleep(payload["seconds"] / steps)
    return {"report": f"{payload['title']}.pdf", "pages": 12}


@registry.handler("resize_video", max_attempts=2)
def resize_video(payload: dict[str, Any]) -> dict[str, Any]:
    """A sync handler (it runs in a worker thread) that blocks for a while."""
    for step in range(5):
        current_job().set_progress(step / 5, "transcoding")
        time.sleep(payload.get("seconds", 1.0) / 5)
    return {"video": payload["video"], "resolution": "720p"}


@registry.handler("nightly_cleanup")
async def nightly_cleanup(payload: dict[str, Any]) -> int:
    """Scheduled far ahead in the demo, and cancelled before it runs."""
    await anyio.sleep(0.1)
    return 0


def workload() -> list[JobSpec]:
    """The demo's jobs: about a hundred, mixed."""
    specs: list[JobSpec] = []
    for n in range(40):
        specs.append(
            JobSpec("thumbnail", {"image": f"photos/img_{n:04}.png", "seconds": 0.3 + n % 5 * 0.2})
        )
    for n in range(25):
        specs.append(
            JobSpec("send_email", {"to": f"user{n}@example.com", "flaky": 2 if n % 5 == 0 else 0})
        )
    for n in range(12):
        card = "4000 0000 0000 0002" if n % 4 == 3 else "4242 4242 4242 4242"
        specs.append(JobSpec("charge_card", {"card": card, "amount": 10 + n}, priority=2))
    for n, seconds in enumerate((4.0, 6.0, 8.0)):
        specs.append(
            JobSpec("build_report", {"title": f"q{n + 1}-revenue", "seconds": seconds}, priority=7)
        )
    specs.append(JobSpec("build_report", {"title": "yearly-archive", "seconds": 600.0}, priority=1))
    for n in range(4):
        specs.append(JobSpec("resize_video", {"video": f"clip{n}.mp4", "seconds": 1.5}))
    for n in range(6):
        specs.append(JobSpec("thumbnail", {"image": f"later/img_{n}.png"}, delay=3.0 + n))
    for n in range(3):
        specs.append(JobSpec("nightly_cleanup", {"night": n}, delay=3600.0 * (n + 1)))
    return specs


@attrs.define
class _Tally:
    """Changes counted as they commit: retries and cancellations are not visible in stats."""

    retried: int = 0
    cancelled: int = 0

    def on_changes(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.event is Event.RETRIED:
                self.retried += 1
            elif change.event is Event.CANCELLED:
                self.cancelled += 1


async def run_workload(queue: Queue, console: Console) -> bool:
    """Enqueue the workload, show it live, and return True once every job is finished.

    Returns False if the queue closes first (the server was asked to stop).
    """
    tally = _Tally()
    queue.subscribe(tally.on_changes)
    started = time.monotonic()
    try:
        jobs = await queue.enqueue_many(workload())
        archive = next(job for job in jobs if job.payload.get("title") == "yearly-archive")
        cleanups = [job for job in jobs if job.name == "nightly_cleanup"]
        cancelled = False
        with Live(console=console, refresh_per_second=8) as live:
            while True:
                stats = await queue.stats()
                running = await queue.list(status="running", limit=20)
                live.update(_view(stats.by_status, running, len(jobs), tally))
                if not cancelled and time.monotonic() - started > 2.0:
                    # The story's cancellations: scheduled jobs nobody needs any more, and a
                    # report that would run for ten minutes, stopped while it runs.
                    for job in [*cleanups, archive]:
                        await queue.cancel(job.id)
                    cancelled = True
                elif (
                    cancelled
                    and not stats.by_status[JobStatus.PENDING] + stats.by_status[JobStatus.RUNNING]
                ):
                    break
                await anyio.sleep(REFRESH)
        final = await queue.stats()
    except QueueClosed:
        return False
    finally:
        queue.unsubscribe(tally.on_changes)
    console.print(
        f"\n[bold]Workload done[/] in {time.monotonic() - started:.1f} s: {len(jobs)} jobs, "
        f"{tally.retried} retries, {tally.cancelled} cancelled."
    )
    for table in stats_tables(stats_to_dict(final)):
        console.print(table)
    return True


def _view(
    by_status: Mapping[JobStatus, int], running: Sequence[Job], total: int, tally: _Tally
) -> RenderableType:
    finished = sum(by_status[status] for status in JobStatus if status.is_terminal)
    overall = Table.grid(padding=(0, 1))
    overall.add_row(
        "[bold]workload[/]",
        ProgressBar(total=total, completed=finished, width=40),
        f"{finished}/{total} finished",
    )
    counts = "  ".join(
        f"[{STATUS_STYLES[status.value]}]{status.value} {by_status[status]}[/]"
        for status in JobStatus
    )
    jobs = Table(title="running", title_justify="left", show_edge=False)
    for column in ("id", "handler", "attempt", "progress", ""):
        jobs.add_column(column)
    for job in running:
        jobs.add_row(
            str(job.id),
            job.name,
            f"{job.attempts}/{job.max_attempts}",
            ProgressBar(total=1.0, completed=job.progress or 0.0, width=20),
            job.progress_message or "",
        )
    summary = counts + f"  retries {tally.retried}"
    return Group(overall, summary, jobs) if running else Group(overall, summary)
