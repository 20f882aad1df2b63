"""Recurring jobs: the tick arithmetic (pure), and schedules run by a queue (virtual time)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from zoneinfo import ZoneInfo

import anyio
import pytest

import conveyor
from conveyor import InvalidArgument, JobStatus, UnknownHandler
from conveyor._schedule import MAX_CATCH_UP, MISSED_AFTER, Cadence, due_ticks

from helpers import QueueOpener

PARIS = ZoneInfo("Europe/Paris")


def at(*args: int, zone: ZoneInfo = PARIS) -> float:
    return datetime.datetime(*args, tzinfo=zone).timestamp()  # type: ignore[misc]


# --- ticks, without a queue ---------------------------------------------------------------------
def test_every_ticks_at_fixed_intervals_from_the_last_tick() -> None:
    assert Cadence(60, None).first_after(1000.0) == 1060.0


def test_a_cron_tick_keeps_local_time_across_a_daylight_saving_change() -> None:
    daily = Cadence(None, "0 3 * * *", "Europe/Paris")
    before = at(2026, 3, 28, 12, 0)
    first = daily.first_after(before)
    second = daily.first_after(first)
    assert first == at(2026, 3, 29, 3, 0)
    assert second == at(2026, 3, 30, 3, 0)
    assert second - first == 24 * 3600  # both 03:00 local, in summer time


def test_a_cron_tick_in_the_skipped_hour_runs_once_that_day() -> None:
    nightly = Cadence(None, "30 2 * * *", "Europe/Paris")
    assert nightly.first_after(at(2026, 3, 29, 0, 0)) == at(2026, 3, 29, 3, 0)


def test_only_the_latest_due_tick_is_enqueued_by_default() -> None:
    ticks, following = due_ticks(Cadence(60, None), 1000.0, 1000.0 + 600, "latest")
    assert ticks == [1600.0]
    assert following == 1660.0


def test_catch_up_all_enqueues_every_missed_tick() -> None:
    ticks, following = due_ticks(Cadence(60, None), 1000.0, 1000.0 + 600, "all")
    assert ticks == [1000.0 + 60 * n for n in range(11)]
    assert following == 1660.0


def test_catch_up_all_is_bounded() -> None:
    ticks, _ = due_ticks(Cadence(1, None), 0.0, 1_000_000.0, "all")
    assert len(ticks) == MAX_CATCH_UP
    assert ticks[-1] == 1_000_000.0


def test_catch_up_none_skips_missed_ticks_but_not_one_just_due() -> None:
    late, following = due_ticks(Cadence(3600, None), 0.0, 7200.0 + MISSED_AFTER + 1, "none")
    assert late == []
    assert following == 3 * 3600
    just_due, _ = due_ticks(Cadence(3600, None), 0.0, 0.5, "none")
    assert just_due == [0.0]


def test_missed_cron_ticks_are_found_going_back_from_now() -> None:
    hourly = Cadence(None, "0 * * * *", "UTC")
    start = at(2026, 1, 1, 0, 0, zone=ZoneInfo("UTC"))
    ticks, following = due_ticks(hourly, start, start + 3 * 3600 + 30, "all")
    assert ticks == [start + 3600 * n for n in range(4)]
    assert following == start + 4 * 3600


@pytest.mark.parametrize(
    ("every", "cron", "timezone", "problem"),
    [
        (None, None, "UTC", "exactly one of every= and cron="),
        (60, "* * * * *", "UTC", "exactly one of every= and cron="),
        (0, None, "UTC", "every must be at least 1 second"),
        (0.001, None, "UTC", "every must be at least 1 second"),
        (float("inf"), None, "UTC", "every must be at least 1 second"),
        (None, "0 3 * * *", "America", "unknown timezone 'America'"),
        (None, "61 * * * *", "UTC", "Bad minute"),
        (None, "0 3 * * 8", "UTC", "Bad day-of-week"),
        (None, "0 3 * *", "UTC", "five fields"),
        (60, None, "Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
    ],
)
def test_a_bad_cadence_is_refused_naming_the_problem(
    every: float | None, cron: str | None, timezone: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument, match=problem):
        Cadence(every, cron, timezone)


# --- schedules in a queue -----------------------------------------------------------------------
def counting_registry(runs: list[float], wall_clock: Callable[[], float]) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("report")
    async def report(payload: object) -> None:
        runs.append(wall_clock())

    return registry


@pytest.mark.anyio
@pytest.mark.trio_only
async def test_each_tick_enqueues_one_job_at_its_time(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    runs: list[float] = []
    async with open_test_queue(counting_registry(runs, wall_clock)) as queue:
        start = wall_clock()
        schedule = await queue.schedule("minutely", "report", {"kind": "x"}, every=60)
        assert schedule.next_run_at == pytest.approx(start + 60)
        await anyio.sleep(60 * 5 + 1)
        jobs = await queue.list(limit=100)
        (stored,) = await queue.schedules()
    assert [round(t - start) for t in runs] == [60, 120, 180, 240, 300]
    assert {job.schedule_key for job in jobs} == {"minutely"}
    assert all(job.payload == {"kind": "x"} for job in jobs)
    assert stored.last_run_at == pytest.approx(start + 300)
    assert stored.last_job_id == max(job.id for job in jobs)


@pytest.mark.anyio
@pytest.mark.trio_only
@pytest.mark.parametrize(("catch_up", "expected"), [("latest", 1), ("all", 10), ("none", 0)])
async def test_ticks_missed_while_closed_are_caught_up_as_asked(
    open_test_queue: QueueOpener,
    wall_clock: Callable[[], float],
    catch_up: conveyor._schedule.CatchUp,
    expected: int,
) -> None:
    runs: list[float] = []
    registry = counting_registry(runs, wall_clock)
    async with open_test_queue(registry) as queue:
        await queue.schedule("tick", "report", every=600, catch_up=catch_up)
    await anyio.sleep(600 * 10 + 300)  # the last tick is 300 s past: missed
    async with open_test_queue(registry) as queue:
        await anyio.sleep(1)
        caught_up = len(await queue.list(limit=100))
        (stored,) = await queue.schedules()
    assert caught_up == expected
    assert stored.next_run_at > wall_clock() - 1


@pytest.mark.anyio
async def test_scheduling_a_key_again_replaces_its_definition(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(counting_registry([], lambda: 0.0)) as queue:
        await queue.schedule("job", "report", every=60)
        replaced = await queue.schedule("job", "report", {"v": 2}, cron="0 3 * * *")
        (stored,) = await queue.schedules()
        assert stored == replaced
        assert (stored.every, stored.cron, stored.payload) == (None, "0 3 * * *", {"v": 2})
        assert await queue.unschedule("job")
        assert not await queue.unschedule("job")
        assert await queue.schedules() == []


@pytest.mark.anyio
async def test_a_schedule_for_an_unknown_handler_is_refused(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(counting_registry([], lambda: 0.0)) as queue:
        with pytest.raises(UnknownHandler):
            await queue.schedule("job", "nope", every=60)
        with pytest.raises(InvalidArgument, match="Bad hour"):
            await queue.schedule("job", "report", cron="0 25 * * *")
        with pytest.raises(InvalidArgument, match="catch_up"):
            await queue.schedule("job", "report", every=60, catch_up="some")  # type: ignore[arg-type]
        assert await queue.schedules() == []


@pytest.mark.anyio
async def test_every_accepts_a_timedelta(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(counting_registry([], lambda: 0.0)) as queue:
        schedule = await queue.schedule("job", "report", every=datetime.timedelta(minutes=5))
    assert schedule.every == 300


@pytest.mark.anyio
@pytest.mark.trio_only
async def test_a_scheduled_job_is_completed_like_any_other(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    runs: list[float] = []
    async with open_test_queue(counting_registry(runs, wall_clock)) as queue:
        await queue.schedule("job", "report", every=30)
        await anyio.sleep(31)
        (job,) = await queue.list()
        done = await queue.wait(job.id, timeout=5)
    assert done.status is JobStatus.COMPLETED
    assert done.schedule_key == "job"


@pytest.mark.anyio
@pytest.mark.trio_only
async def test_a_schedule_ticks_on_time_while_a_due_job_waits_for_a_busy_slot(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    # Found by the state machine: the timer was told only the earliest deadline, and nothing
    # while that one (a due job that no slot was free for) had passed: ticks stopped until a
    # slot freed, and then the missed ones were merged into one.
    registry = conveyor.Registry()

    @registry.handler("occupy")
    async def occupy(payload: object) -> None:
        await anyio.sleep(100)

    @registry.handler("report")
    async def report(payload: object) -> None:
        pass

    async with open_test_queue(registry, workers=1) as queue:
        start = wall_clock()
        await queue.enqueue("occupy")
        await queue.enqueue("report", delay=5)
        await queue.schedule("tick", "report", every=10)
        await anyio.sleep(55)
        ticks = [job for job in await queue.list(limit=100) if job.schedule_key == "tick"]
    assert sorted(round(job.created_at - start) for job in ticks) == [10, 20, 30, 40, 50]
