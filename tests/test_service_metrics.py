"""/metrics: Prometheus counters, gauges and histograms fed by the queue's changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import conveyor
from conveyor import Change, Event, JobStatus
from conveyor.service import Service
from conveyor.service._metrics import ThroughputSeries

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


def registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler
    async def ok(payload: Any) -> None:
        return None

    @registry.handler(max_attempts=2, backoff=conveyor.Backoff(initial=0.01, jitter=0))
    async def flaky(payload: Any) -> None:
        raise RuntimeError("always")

    return registry


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float], **queue_options: Any
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with open_test_queue(registry(), **queue_options) as queue:
        service = Service(queue, clock=wall_clock)
        done = [await queue.enqueue("ok"), await queue.enqueue("flaky")]
        for job in done:
            await queue.wait(job.id, timeout=30)
        later = await queue.enqueue("ok", delay=3600)
        cancelled = await queue.enqueue("ok", delay=3600)
        await queue.cancel(cancelled.id)
        assert later.id
        transport = httpx.ASGITransport(app=service.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            response = await client.get("/metrics")
        service.close()
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(response.text)


async def test_counters_count_each_kind_of_change_by_handler(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    found = await scrape(open_test_queue, wall_clock)
    name = (("name", "ok"),)
    flaky = (("name", "flaky"),)
    assert found[("conveyor_jobs_enqueued_total", name)] == 3
    assert found[("conveyor_jobs_completed_total", name)] == 1
    assert found[("conveyor_jobs_cancelled_total", name)] == 1
    assert found[("conveyor_jobs_started_total", flaky)] == 2
    assert found[("conveyor_jobs_retried_total", flaky)] == 1
    assert found[("conveyor_jobs_failed_total", flaky)] == 1


async def test_gauges_show_pending_and_running_jobs_at_scrape_time(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    found = await scrape(open_test_queue, wall_clock)
    assert found[("conveyor_jobs_pending", (("name", "ok"),))] == 1
    assert found[("conveyor_jobs_running", (("name", "ok"),))] == 0


async def test_histograms_observe_durations_and_start_latencies(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    found = await scrape(open_test_queue, wall_clock)
    assert found[("conveyor_job_duration_seconds_count", (("name", "flaky"),))] == 2
    assert found[("conveyor_job_start_latency_seconds_count", (("name", "ok"),))] == 1


@pytest.mark.parametrize(("in_use", "gauge"), [(0.95, 1), (0.5, 0)])
async def test_a_gauge_says_whether_memory_is_short(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float], in_use: float, gauge: int
) -> None:
    found = await scrape(
        open_test_queue, wall_clock, memory_high_water=0.85, memory_reader=lambda: in_use
    )
    assert found[("conveyor_memory_limited", ())] == gauge


def test_the_throughput_series_counts_finished_jobs_per_bucket() -> None:
    now = [1000.0]
    series = ThroughputSeries(lambda: now[0], bucket_seconds=10, span=30)
    series.on_changes(
        [
            Change(Event.COMPLETED, 1, "a", JobStatus.COMPLETED),
            Change(Event.FAILED, 2, "a", JobStatus.FAILED),
        ]
    )
    now[0] = 1015.0
    series.on_changes(
        [
            Change(Event.COMPLETED, 3, "a", JobStatus.COMPLETED),
            Change(Event.STARTED, 4, "a", JobStatus.RUNNING),
        ]
    )
    assert series.series() == [(990.0, 0, 0), (1000.0, 1, 1), (1010.0, 1, 0)]


def test_the_throughput_series_forgets_buckets_beyond_its_span() -> None:
    now = [1000.0]
    series = ThroughputSeries(lambda: now[0], bucket_seconds=10, span=20)
    series.on_changes([Change(Event.COMPLETED, 1, "a", JobStatus.COMPLETED)])
    now[0] = 1100.0
    assert series.series() == [(1090.0, 0, 0), (1100.0, 0, 0)]
