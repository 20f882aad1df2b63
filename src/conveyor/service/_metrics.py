"""Prometheus metrics and the dashboard's throughput series, both fed by the queue's changes.

:meth:`Metrics.on_changes` is a :meth:`conveyor.Queue.subscribe` listener: it runs right after
each commit, on the event loop, so it only counts. Gauges (pending and running jobs, whether
memory is short) are read from :meth:`conveyor.Queue.stats` when Prometheus scrapes
(:meth:`Metrics.render`).
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .._events import Change
from .._job import Event, JobStatus
from .._queue import Stats

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

_COUNTED: Final = (
    Event.ENQUEUED,
    Event.STARTED,
    Event.COMPLETED,
    Event.FAILED,
    Event.RETRIED,
    Event.CANCELLED,
)


class Metrics:
    """The service's Prometheus registry (one per app, so that apps do not share counters)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {
            kind: Counter(
                f"conveyor_jobs_{kind}",
                f"Jobs {kind}, by handler name.",
                ["name"],
                registry=self.registry,
            )
            for kind in _COUNTED
        }
        self._duration = Histogram(
            "conveyor_job_duration_seconds",
            "Run time of each attempt that ended (completed, failed, retried or cancelled).",
            ["name"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._waited = Histogram(
            "conveyor_job_start_latency_seconds",
            "Time from when a job was due (its enqueue, or its delay's end) to its start.",
            ["name"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._pending = Gauge(
            "conveyor_jobs_pending",
            "Pending jobs now, by handler name.",
            ["name"],
            registry=self.registry,
        )
        self._running = Gauge(
            "conveyor_jobs_running",
            "Running jobs now, by handler name.",
            ["name"],
            registry=self.registry,
        )
        self._memory_limited = Gauge(
            "conveyor_memory_limited",
            "1 while memory in use is at or above the queue's high-water mark (at most one job "
            "runs at a time), else 0.",
            registry=self.registry,
        )

    def on_changes(self, changes: Sequence[Change]) -> None:
        """Count one commit's changes (a :meth:`conveyor.Queue.subscribe` listener).

        Counters move once per (event, name) of the commit, not once per change.
        """
        for (event, name), count in Tally((c.event, c.name) for c in changes).items():
            counter = self._counters.get(event)
            if counter is not None:
                counter.labels(name).inc(count)
        for change in changes:
            if change.duration is not None:
                self._duration.labels(change.name).observe(change.duration)
            if change.waited is not None:
                self._waited.labels(change.name).observe(change.waited)

    def render(self, stats: Stats) -> bytes:
        """The text exposition format, with the gauges set from ``stats``."""
        self._pending.clear()
        self._running.clear()
        for name, counts in stats.by_name.items():
            self._pending.labels(name).set(counts[JobStatus.PENDING])
            self._running.labels(name).set(counts[JobStatus.RUNNING])
        self._memory_limited.set(1 if stats.memory_limited else 0)
        return generate_latest(self.registry)


class ThroughputSeries:
    """Finished jobs per bucket of ``bucket_seconds`` over the last ``span`` seconds.

    Fed by :meth:`on_changes`; the dashboard draws it. Kept in memory: it starts empty when
    the server starts.
    """

    def __init__(
        self, clock: Callable[[], float], *, bucket_seconds: float = 10.0, span: float = 600.0
    ) -> None:
        self._clock = clock
        self.bucket_seconds = bucket_seconds
        self._size = math.ceil(span / bucket_seconds)
        self._buckets: deque[list[int]] = deque()  # [bucket index, completed, failed]

    def _index(self, now: float) -> int:
        return math.floor(now / self.bucket_seconds)

    def on_changes(self, changes: Sequence[Change]) -> None:
        """Count the completed and failed jobs of one commit."""
        completed = failed = 0
        for change in changes:
            if change.event is Event.COMPLETED:
                completed += 1
            elif change.event is Event.FAILED:
                failed += 1
        if not (completed or failed):
            return
        index = self._index(self._clock())
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
            while len(self._buckets) > self._size:
                self._buckets.popleft()
        bucket = self._buckets[-1]
        bucket[1] += completed
        bucket[2] += failed

    def series(self) -> list[tuple[float, int, int]]:
        """``(bucket start, completed, failed)`` for every bucket of the span, oldest first."""
        last = self._index(self._clock())
        counts = {index: (completed, failed) for index, completed, failed in self._buckets}
        return [
            (index * self.bucket_seconds, *counts.get(index, (0, 0)))
            for index in range(last - self._size + 1, last + 1)
        ]
