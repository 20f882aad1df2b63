"""The service's handlers, limits and batches: ``GET /handlers``, pause and resume, the
``concurrency_key`` of jobs, ``memory_limited``, ``GET /jobs/progress``, and what the service
answers once its queue has stopped for good. Through the ASGI app (no server)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

import conveyor
from conveyor.service import Service

from helpers import Gate, QueueOpener

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


def make_registry(gate: Gate) -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler
    async def echo(payload: Any) -> Any:
        return payload

    @registry.handler(
        max_attempts=4,
        timeout=30,
        concurrency=2,
        key_concurrency=1,
        rate_limit="10/minute",
        retry_priority_step=1,
    )
    async def limited(payload: Any) -> Any:
        return payload

    @registry.handler("reports/monthly")
    async def monthly(payload: Any) -> None:
        return None

    @registry.handler
    async def blocked(payload: Any) -> None:
        await gate.pass_through()

    return registry


@pytest.fixture
def gate() -> Gate:
    return Gate()


Serve = Callable[..., Any]


@pytest.fixture
def serve(open_test_queue: QueueOpener, wall_clock: Callable[[], float], gate: Gate) -> Serve:
    """``async with serve(with_registry=True, **queue_options) as (client, queue, service)``."""

    @asynccontextmanager
    async def opener(
        with_registry: bool = True, **queue_options: Any
    ) -> AsyncIterator[tuple[httpx.AsyncClient, conveyor.Queue, Service]]:
        registry = make_registry(gate)
        async with open_test_queue(registry, **queue_options) as queue:
            service = Service(queue, registry=registry if with_registry else None, clock=wall_clock)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                yield client, queue, service
            service.close()
            gate.open()

    return opener


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:conveyor:problem:{slug}"
    return body


async def handlers_by_name(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    response = await client.get("/handlers")
    assert response.status_code == 200, response.text
    return {handler["name"]: handler for handler in response.json()["handlers"]}


# --- GET /handlers ------------------------------------------------------------------------------
async def test_handlers_lists_every_registered_handler_by_name(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.get("/handlers")
    names = [handler["name"] for handler in response.json()["handlers"]]
    assert names == ["blocked", "echo", "limited", "reports/monthly"]


async def test_handlers_shows_each_handlers_options_and_limits(serve: Serve) -> None:
    async with serve() as (client, _, _):
        limited = (await handlers_by_name(client))["limited"]
    assert limited["registered"] is True
    assert limited["options"] == {
        "max_attempts": 4,
        "timeout": 30,
        "process": False,
        "memory_limit": None,
        "limits": {
            "concurrency": 2,
            "key_concurrency": 1,
            "rate_limit": {"count": 10, "seconds": 60.0},
            "retry_priority_step": 1,
        },
    }


async def test_handlers_counts_each_handlers_jobs_by_status(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        await queue.enqueue("echo", delay=3600)
        done = await queue.enqueue("echo")
        await queue.wait(done.id, timeout=30)
        counts = (await handlers_by_name(client))["echo"]["counts"]
    assert counts == {
        "waiting": 0,
        "pending": 1,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
    }


async def test_without_the_registry_handlers_are_known_by_their_jobs(serve: Serve) -> None:
    async with serve(with_registry=False) as (client, queue, _):
        await queue.enqueue("echo", delay=3600)
        handlers = await handlers_by_name(client)
    assert list(handlers) == ["echo"]
    assert (handlers["echo"]["registered"], handlers["echo"]["options"]) == (False, None)


# --- pause and resume ---------------------------------------------------------------------------
async def test_pause_answers_the_handler_paused(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.post("/handlers/echo/pause")
    assert response.json() == {"name": "echo", "paused": True, "changed": True}


async def test_a_paused_handlers_jobs_stay_pending_while_others_run(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        await client.post("/handlers/echo/pause")
        held = await queue.enqueue("echo")
        other = await queue.enqueue("limited")
        await queue.wait(other.id, timeout=30)
        job = await queue.get(held.id)
    assert job is not None
    assert job.status is conveyor.JobStatus.PENDING


async def test_a_paused_handler_is_listed_as_paused(serve: Serve) -> None:
    async with serve() as (client, _, _):
        await client.post("/handlers/echo/pause")
        handlers = await handlers_by_name(client)
    assert (handlers["echo"]["paused"], handlers["limited"]["paused"]) == (True, False)


async def test_resume_lets_a_paused_handlers_jobs_run(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        await client.post("/handlers/echo/pause")
        job = await queue.enqueue("echo", "again")
        response = await client.post("/handlers/echo/resume")
        done = await queue.wait(job.id, timeout=30)
    assert response.json() == {"name": "echo", "paused": False, "changed": True}
    assert done.status is conveyor.JobStatus.COMPLETED


async def test_pausing_a_paused_handler_changes_nothing(serve: Serve) -> None:
    async with serve() as (client, _, _):
        await client.post("/handlers/echo/pause")
        response = await client.post("/handlers/echo/pause")
    assert response.json() == {"name": "echo", "paused": True, "changed": False}


async def test_resuming_a_handler_that_is_not_paused_changes_nothing(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.post("/handlers/echo/resume")
    assert response.json() == {"name": "echo", "paused": False, "changed": False}


@pytest.mark.parametrize("action", ["pause", "resume"])
async def test_an_unknown_handler_is_a_404_problem_naming_the_known_ones(
    serve: Serve, action: str
) -> None:
    async with serve() as (client, queue, _):
        body = assert_problem(
            await client.post(f"/handlers/nope/{action}"), 404, "handler-not-found"
        )
        assert await queue.paused() == set()
    assert "'nope'" in body["detail"]
    assert "echo" in body["detail"]


async def test_a_pause_of_a_handler_this_server_does_not_run_is_listed_and_can_be_resumed(
    serve: Serve,
) -> None:
    async with serve() as (client, queue, _):
        await queue.pause("retired")
        listed = (await handlers_by_name(client))["retired"]
        response = await client.post("/handlers/retired/resume")
        assert await queue.paused() == set()
    assert (listed["registered"], listed["paused"]) == (False, True)
    assert response.json()["changed"] is True


async def test_a_handler_name_holding_a_slash_is_paused_percent_encoded(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        response = await client.post("/handlers/reports%2Fmonthly/pause")
        assert await queue.paused() == {"reports/monthly"}
    assert response.json()["name"] == "reports/monthly"


async def test_get_on_pause_is_a_405_allowing_post(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.get("/handlers/echo/pause")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


async def test_a_page_of_another_origin_cannot_pause_a_handler(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        response = await client.post(
            "/handlers/echo/pause", headers={"Origin": "http://evil.example"}
        )
        assert_problem(response, 403, "cross-origin")
        assert await queue.paused() == set()


# --- concurrency_key ----------------------------------------------------------------------------
async def test_a_jobs_concurrency_key_is_stored_and_shown(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        response = await client.post(
            "/jobs", json={"name": "limited", "concurrency_key": "acct-42", "delay": 3600}
        )
        stored = await queue.get(response.json()["id"])
    assert response.json()["concurrency_key"] == "acct-42"
    assert stored is not None
    assert stored.concurrency_key == "acct-42"


async def test_a_list_item_shows_the_concurrency_key(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        await queue.enqueue("limited", concurrency_key="acct-7", delay=3600)
        (item,) = (await client.get("/jobs")).json()["jobs"]
    assert item["concurrency_key"] == "acct-7"


async def test_a_batch_takes_each_jobs_concurrency_key(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.post(
            "/jobs/batch",
            json={
                "jobs": [
                    {"name": "limited", "concurrency_key": "a", "delay": 3600},
                    {"name": "limited", "delay": 3600},
                ]
            },
        )
    assert [job["concurrency_key"] for job in response.json()["jobs"]] == ["a", None]


@pytest.mark.parametrize("key", ["", "k" * 256, 42])
async def test_a_concurrency_key_that_is_not_a_short_string_is_a_422(
    serve: Serve, key: Any
) -> None:
    async with serve() as (client, _, _):
        response = await client.post("/jobs", json={"name": "limited", "concurrency_key": key})
    body = assert_problem(response, 422, "invalid")
    assert body["errors"][0]["loc"] == "body.concurrency_key"


async def test_a_concurrency_key_holding_a_lone_surrogate_is_a_422(serve: Serve) -> None:
    async with serve() as (client, _, _):
        response = await client.post(
            "/jobs",
            content=b'{"name": "limited", "concurrency_key": "\\ud800"}',
            headers={"content-type": "application/json"},
        )
    body = assert_problem(response, 422, "invalid")
    assert "concurrency_key" in body["detail"]


# --- memory_limited -----------------------------------------------------------------------------
async def test_stats_say_when_memory_is_short(serve: Serve) -> None:
    async with serve(memory_high_water=0.85, memory_reader=lambda: 0.95) as (client, queue, _):
        job = await queue.enqueue("echo")
        await queue.wait(job.id, timeout=30)  # a claim reads the memory in use
        stats = (await client.get("/stats")).json()
    assert stats["memory_limited"] is True


async def test_stats_say_when_memory_is_not_short(serve: Serve) -> None:
    async with serve(memory_high_water=0.85, memory_reader=lambda: 0.5) as (client, queue, _):
        job = await queue.enqueue("echo")
        await queue.wait(job.id, timeout=30)
        stats = (await client.get("/stats")).json()
    assert stats["memory_limited"] is False


# --- GET /jobs/progress -------------------------------------------------------------------------
async def test_progress_counts_a_batch_by_status(serve: Serve, gate: Gate) -> None:
    async with serve() as (client, queue, _):
        done = await queue.enqueue("echo")
        await queue.wait(done.id, timeout=30)
        running = await queue.enqueue("blocked")
        await gate.entered.wait()
        later = await queue.enqueue("echo", delay=3600)
        ids = f"{done.id},{running.id},{later.id}"
        body = (await client.get("/jobs/progress", params={"ids": ids})).json()
    assert {k: v for k, v in body.items() if k != "state"} == {
        "total": 3,
        "pending": 1,
        "running": 1,
        "completed": 1,
        "failed": 0,
        "cancelled": 0,
        "finished": 1,
    }


async def test_progress_with_the_state_seen_answers_once_it_changes(
    serve: Serve, gate: Gate
) -> None:
    async with serve() as (client, queue, _):
        job = await queue.enqueue("blocked")
        await gate.entered.wait()
        seen = (await client.get("/jobs/progress", params={"ids": str(job.id)})).json()
        answers: list[dict[str, Any]] = []

        async def poll() -> None:
            params = {"ids": str(job.id), "since": seen["state"], "timeout": 60}
            answers.append((await client.get("/jobs/progress", params=params)).json())

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.2)
            assert answers == []  # still waiting for a change
            gate.open()
    assert (answers[0]["completed"], answers[0]["finished"]) == (1, 1)


async def test_progress_with_the_state_seen_answers_it_at_the_timeout(
    serve: Serve, gate: Gate
) -> None:
    async with serve() as (client, queue, _):
        job = await queue.enqueue("blocked")
        await gate.entered.wait()
        seen = (await client.get("/jobs/progress", params={"ids": str(job.id)})).json()
        params = {"ids": str(job.id), "since": seen["state"], "timeout": 0.2}
        again = (await client.get("/jobs/progress", params=params)).json()
    assert again == seen


async def test_progress_of_an_unknown_job_is_a_404_problem(serve: Serve) -> None:
    async with serve() as (client, queue, _):
        job = await queue.enqueue("echo", delay=3600)
        response = await client.get("/jobs/progress", params={"ids": f"{job.id},999"})
    body = assert_problem(response, 404, "not-found")
    assert "999" in body["detail"]


@pytest.mark.parametrize(
    "ids", ["", "1,,2", "a", "1;2", "0", str(2**63), "9" * 5000, "1," * 6000 + "1"]
)
async def test_progress_refuses_ids_that_are_not_job_ids(serve: Serve, ids: str) -> None:
    async with serve() as (client, _, _):
        response = await client.get("/jobs/progress", params={"ids": ids})
    assert_problem(response, 422, "invalid")


async def test_progress_refuses_more_than_1000_ids(serve: Serve) -> None:
    async with serve() as (client, _, _):
        ids = ",".join(str(n) for n in range(1, 1002))
        response = await client.get("/jobs/progress", params={"ids": ids})
    body = assert_problem(response, 422, "invalid")
    assert "1001" in body["detail"]


# --- a queue stopped for good -------------------------------------------------------------------
STOPPED = "jobs.db was deleted while the queue had it open. The queue has stopped."


@pytest.mark.parametrize(("method", "path"), [("GET", "/stats"), ("POST", "/jobs")])
async def test_once_the_queue_stopped_every_request_is_a_503_saying_why(
    serve: Serve, method: str, path: str
) -> None:
    async with serve() as (client, _, service):
        service.fail(conveyor.DatabaseError(STOPPED))
        response = await client.request(method, path, json={"name": "echo"})
    body = assert_problem(response, 503, "unavailable")
    assert STOPPED in body["detail"]
    assert "retry-after" in response.headers


async def test_a_long_poll_in_flight_when_the_queue_stops_is_a_503(serve: Serve) -> None:
    async with serve() as (client, queue, service):
        job = await queue.enqueue("echo", delay=3600)
        answers: list[httpx.Response] = []

        async def poll() -> None:
            answers.append(await client.get(f"/jobs/{job.id}/wait", params={"timeout": 60}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.2)
            service.fail(conveyor.DatabaseError(STOPPED))
    assert_problem(answers[0], 503, "unavailable")


# --- the schema ---------------------------------------------------------------------------------
async def test_the_schema_documents_the_handler_and_progress_routes(serve: Serve) -> None:
    async with serve() as (client, _, _):
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert {
        "/handlers": {"get"},
        "/handlers/{name}/pause": {"post"},
        "/handlers/{name}/resume": {"post"},
        "/jobs/progress": {"get"},
        "/session": {"post"},
    }.items() <= {path: set(operations) for path, operations in paths.items()}.items()
