"""Times out of any sane range are refused where they enter, naming the field.

``run_at`` is 0 (due at once) or epoch seconds within years 2000..3000; ``delay`` is 0 to a
hundred years. Before, ``run_at=-1e300`` was stored and put the job ahead of every job of its
priority, and ``delay=1e300`` scheduled a job for no time a clock can show.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

import conveyor
from conveyor import InvalidArgument, JobSpec, JobStatus
from conveyor._job import MAX_DELAY, MAX_RUN_AT, MIN_RUN_AT
from conveyor.service import Service

from helpers import QueueOpener

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
OUT_OF_RANGE_RUN_AT = [-1e300, -1.0, 5.0, MIN_RUN_AT - 1, MAX_RUN_AT + 1, 1e300]


def make_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler
    async def echo(payload: Any) -> Any:
        return payload

    return registry


@pytest.fixture
def serve(open_test_queue: QueueOpener, wall_clock: Callable[[], float]) -> Callable[[], Any]:
    @asynccontextmanager
    async def opener() -> AsyncIterator[tuple[httpx.AsyncClient, conveyor.Queue]]:
        async with open_test_queue(make_registry()) as queue:
            service = Service(queue, clock=wall_clock)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                yield client, queue
            service.close()

    return opener


# --- the Python API -----------------------------------------------------------------------------
@pytest.mark.parametrize("run_at", OUT_OF_RANGE_RUN_AT)
def test_a_run_at_out_of_range_is_refused_naming_run_at(run_at: float) -> None:
    with pytest.raises(InvalidArgument, match=r"^run_at must be epoch seconds between"):
        JobSpec("echo", run_at=run_at)


@pytest.mark.parametrize("run_at", [0, 0.0, MIN_RUN_AT, 1_800_000_000.0, MAX_RUN_AT])
def test_a_run_at_of_zero_or_within_the_range_is_accepted(run_at: float) -> None:
    assert JobSpec("echo", run_at=run_at).run_at == run_at


def test_a_run_at_in_milliseconds_is_refused_saying_so() -> None:
    with pytest.raises(InvalidArgument, match="looks like milliseconds"):
        JobSpec("echo", run_at=1_800_000_000_000.0)


def test_a_small_run_at_is_refused_pointing_to_delay() -> None:
    with pytest.raises(InvalidArgument, match="give delay instead"):
        JobSpec("echo", run_at=60.0)


@pytest.mark.parametrize("delay", [MAX_DELAY + 1, 1e300])
def test_a_delay_beyond_a_hundred_years_is_refused_naming_delay(delay: float) -> None:
    with pytest.raises(InvalidArgument, match=r"^delay must be at most 3155760000 seconds"):
        JobSpec("echo", delay=delay)


def test_a_delay_of_a_hundred_years_is_accepted() -> None:
    assert JobSpec("echo", delay=MAX_DELAY).delay == MAX_DELAY


async def test_enqueue_refuses_a_run_at_out_of_range_and_writes_nothing(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(InvalidArgument, match="run_at"):
            await queue.enqueue("echo", run_at=-1e300)
        assert await queue.list() == []


async def test_enqueue_refuses_a_delay_out_of_range_and_writes_nothing(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(make_registry()) as queue:
        with pytest.raises(InvalidArgument, match="delay"):
            await queue.enqueue("echo", delay=1e300)
        assert await queue.list() == []


async def test_a_run_at_of_zero_is_due_at_once(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(make_registry()) as queue:
        job = await queue.enqueue("echo", "now", run_at=0)
        done = await queue.wait(job.id, timeout=30)
    assert (done.status, done.result) == (JobStatus.COMPLETED, "now")


# --- over HTTP ----------------------------------------------------------------------------------
def assert_invalid(response: httpx.Response, field: str) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    detail: str = response.json()["detail"]
    assert detail.startswith(field), detail
    return detail


@pytest.mark.parametrize("run_at", OUT_OF_RANGE_RUN_AT)
async def test_http_refuses_a_run_at_out_of_range_with_a_422_naming_it(
    serve: Callable[[], Any], run_at: float
) -> None:
    async with serve() as (client, queue):
        response = await client.post("/jobs", json={"name": "echo", "run_at": run_at})
        assert_invalid(response, "body.run_at: ")
        assert await queue.list() == []


@pytest.mark.parametrize("delay", [MAX_DELAY + 1, 1e300])
async def test_http_refuses_a_delay_out_of_range_with_a_422_naming_it(
    serve: Callable[[], Any], delay: float
) -> None:
    async with serve() as (client, queue):
        response = await client.post("/jobs", json={"name": "echo", "delay": delay})
        assert_invalid(response, "body.delay: ")
        assert await queue.list() == []


async def test_http_names_the_batch_job_whose_run_at_is_out_of_range(
    serve: Callable[[], Any],
) -> None:
    async with serve() as (client, queue):
        response = await client.post(
            "/jobs/batch", json={"jobs": [{"name": "echo"}, {"name": "echo", "run_at": -1e300}]}
        )
        assert_invalid(response, "body.jobs.1.run_at: ")
        assert await queue.list() == []


async def test_http_accepts_a_run_at_of_zero(serve: Callable[[], Any]) -> None:
    async with serve() as (client, _):
        response = await client.post("/jobs", json={"name": "echo", "run_at": 0})
        assert response.status_code == 201, response.text


async def test_the_schema_tells_clients_the_time_ranges(serve: Callable[[], Any]) -> None:
    async with serve() as (client, _):
        schema = (await client.get("/openapi.json")).json()
    fields = schema["components"]["schemas"]["JobIn"]["properties"]
    run_at = next(kind for kind in fields["run_at"]["anyOf"] if kind.get("type") == "number")
    assert (run_at["minimum"], run_at["maximum"]) == (0, MAX_RUN_AT)
    delay = next(kind for kind in fields["delay"]["anyOf"] if kind.get("type") == "number")
    assert (delay["minimum"], delay["maximum"]) == (0, MAX_DELAY)
