"""Concurrency and rate limits, pause and resume, and lower priority on retry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

import conveyor
from conveyor import InvalidArgument, JobStatus

from helpers import QueueOpener

pytestmark = pytest.mark.anyio


class Tracker:
    """How many jobs of each name run at once, at most, and when each job started."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.starts: list[tuple[Any, float]] = []

    async def run(self, name: str, payload: Any, seconds: float) -> None:
        self.starts.append((payload, self.clock()))
        self.running[name] = self.running.get(name, 0) + 1
        self.peak[name] = max(self.peak.get(name, 0), self.running[name])
        try:
            await anyio.sleep(seconds)
        finally:
            self.running[name] -= 1


def registry(tracker: Tracker, **limits: Any) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("limited", **limits)
    async def limited(payload: Any) -> None:
        await tracker.run("limited", payload, 1)

    @registry.handler("free")
    async def free(payload: Any) -> None:
        await tracker.run("free", payload, 1)

    return registry


async def finish(queue: conveyor.Queue, jobs: list[conveyor.Job]) -> list[conveyor.Job]:
    return await queue.wait_all([job.id for job in jobs], timeout=600)


async def test_concurrency_caps_the_jobs_of_a_handler_running_at_once(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    async with open_test_queue(registry(tracker, concurrency=2), workers=8) as queue:
        await finish(queue, [await queue.enqueue("limited", n) for n in range(6)])
    assert tracker.peak["limited"] == 2


async def test_a_limited_handler_does_not_keep_other_jobs_from_free_slots(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    async with open_test_queue(registry(tracker, concurrency=1), workers=4) as queue:
        limited = [await queue.enqueue("limited", n, priority=1) for n in range(4)]
        free = await queue.enqueue("free", "free", priority=10)
        done = await queue.wait(free.id, timeout=600)
        still = [await queue.get(job.id) for job in limited]
        await finish(queue, limited)
    assert done.status is JobStatus.COMPLETED
    assert any(job is not None and job.status is JobStatus.PENDING for job in still)


async def test_key_concurrency_caps_running_jobs_per_key(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    running_keys: dict[str, int] = {}
    peak_keys: dict[str, int] = {}
    reg = conveyor.Registry()

    @reg.handler("per_key", key_concurrency=1)
    async def per_key(payload: str) -> None:
        running_keys[payload] = running_keys.get(payload, 0) + 1
        peak_keys[payload] = max(peak_keys.get(payload, 0), running_keys[payload])
        await tracker.run("per_key", payload, 1)
        running_keys[payload] -= 1

    async with open_test_queue(reg, workers=8) as queue:
        jobs = [
            await queue.enqueue("per_key", key, concurrency_key=key)
            for key in ["a", "a", "a", "b", "b"]
        ]
        await finish(queue, jobs)
    assert peak_keys == {"a": 1, "b": 1}
    assert tracker.peak["per_key"] == 2


@pytest.mark.trio_only
async def test_a_rate_limit_spaces_starts_by_its_window(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    async with open_test_queue(registry(tracker, rate_limit="2/minute"), workers=8) as queue:
        begin = wall_clock()
        await finish(queue, [await queue.enqueue("limited", n) for n in range(5)])
    offsets = sorted(round(at - begin) for _, at in tracker.starts)
    assert offsets == [0, 0, 60, 60, 120]


@pytest.mark.trio_only  # jobs of 100 s: virtual time only
async def test_a_window_filled_by_one_claim_opens_again_on_time(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    slow = conveyor.Registry()

    @slow.handler("limited", rate_limit="2/minute")
    async def limited(payload: Any) -> None:
        await tracker.run("limited", payload, 100)  # no end frees a slot before the window

    # Nor does a heartbeat come to look again: the window's opening must wake the queue.
    async with open_test_queue(slow, workers=8, heartbeat=3600) as queue:
        begin = wall_clock()
        specs = [conveyor.JobSpec("limited", n) for n in range(3)]
        await finish(queue, await queue.enqueue_many(specs))
    offsets = sorted(round(at - begin) for _, at in tracker.starts)
    assert offsets == [0, 0, 60]


async def test_a_paused_handlers_jobs_wait_until_it_is_resumed(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    async with open_test_queue(registry(tracker)) as queue:
        assert await queue.pause("limited")
        assert not await queue.pause("limited")
        assert await queue.paused() == {"limited"}
        held = await queue.enqueue("limited", 1)
        free = await queue.wait((await queue.enqueue("free", 2)).id, timeout=600)
        assert (await queue.get(held.id)).status is JobStatus.PENDING  # type: ignore[union-attr]
        assert free.status is JobStatus.COMPLETED
        assert await queue.resume("limited")
        assert (await queue.wait(held.id, timeout=600)).status is JobStatus.COMPLETED
        assert await queue.paused() == set()


async def test_a_pause_holds_across_a_restart(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    tracker = Tracker(wall_clock)
    async with open_test_queue(registry(tracker)) as queue:
        await queue.pause("limited")
        held = await queue.enqueue("limited", 1)
    async with open_test_queue(registry(tracker)) as queue:
        assert await queue.paused() == {"limited"}
        await queue.wait((await queue.enqueue("free", 2)).id, timeout=600)
        assert (await queue.get(held.id)).status is JobStatus.PENDING  # type: ignore[union-attr]


async def test_each_retry_runs_at_a_lower_priority(open_test_queue: QueueOpener) -> None:
    priorities: list[int] = []
    reg = conveyor.Registry()

    @reg.handler(
        "flaky",
        max_attempts=4,
        retry_priority_step=3,
        backoff=conveyor.Backoff(initial=0.01, jitter=0),
    )
    async def flaky(payload: None) -> None:
        raise RuntimeError("again")

    def note(changes: Any) -> None:
        priorities.extend(0 for change in changes if change.event is conveyor.Event.RETRIED)

    async with open_test_queue(reg) as queue:
        queue.subscribe(note)
        job = await queue.enqueue("flaky", priority=2)
        done = await queue.wait(job.id, timeout=600)
    assert done.status is JobStatus.FAILED
    assert done.priority == 10  # 2 -> 5 -> 8 -> 10 (capped)
    assert len(priorities) == 3


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"key_concurrency": -1}, "key_concurrency must be an int >= 1"),
        ({"rate_limit": "100 per minute"}, "rate_limit must look like"),
        ({"rate_limit": (0, 60)}, "count must be an int >= 1"),
        ({"rate_limit": (5, 0)}, "window must be seconds > 0"),
        ({"retry_priority_step": 10}, "retry_priority_step must be an int within 0..9"),
    ],
)
def test_a_bad_limit_is_refused_at_registration(options: dict[str, Any], problem: str) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        conveyor.Registry().handler("job", **options)
