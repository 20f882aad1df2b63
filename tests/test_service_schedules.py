"""Schedules, workflows and bulk operations in the service: the HTTP routes (through the ASGI
app) and the CLI commands (against a real ``conveyor serve``)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

import conveyor
from conveyor.service import Service
from service_server import CONVEYOR, TESTS, both_engines, running_server

from helpers import Gate, QueueOpener, service_registry

PROBLEM = "application/problem+json"
TOKEN = "s3cret-token"

anyio_test = pytest.mark.anyio
slow = pytest.mark.slow


make_registry = service_registry


@pytest.fixture
def gate() -> Gate:
    return Gate()


Serve = Callable[..., Any]


@pytest.fixture
def serve(open_test_queue: QueueOpener, wall_clock: Callable[[], float], gate: Gate) -> Serve:
    """``async with serve(**service_options) as (client, queue)``: httpx on the ASGI app."""

    @asynccontextmanager
    async def opener(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, conveyor.Queue]]:
        async with open_test_queue(make_registry(gate)) as queue:
            service = Service(queue, clock=wall_clock, **options)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                yield client, queue
            service.close()
            gate.open()

    return opener


@pytest.fixture
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    async with serve() as (client, _):
        yield client


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:conveyor:problem:{slug}"
    return body


async def enqueue(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def workflow(client: httpx.AsyncClient, *steps: dict[str, Any]) -> list[dict[str, Any]]:
    response = await client.post("/workflows", json={"steps": list(steps)})
    assert response.status_code == 201, response.text
    jobs: list[dict[str, Any]] = response.json()["jobs"]
    return jobs


async def finished(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}/wait", params={"timeout": 30})
    job: dict[str, Any] = response.json()
    assert job["status"] in ("completed", "failed", "cancelled"), job
    return job


async def schedules(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/schedules")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["schedules"]
    return found


NIGHTLY = {"key": "nightly", "name": "echo", "cron": "0 3 * * *", "timezone": "Europe/Paris"}


# --- POST/GET/DELETE /schedules -----------------------------------------------------------------
@anyio_test
async def test_post_schedules_stores_the_schedule_and_answers_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/schedules", json={**NIGHTLY, "payload": {"kind": "daily"}})
    assert response.status_code == 200, response.text
    schedule = response.json()
    assert (schedule["key"], schedule["name"], schedule["payload"]) == (
        "nightly",
        "echo",
        {"kind": "daily"},
    )
    assert (schedule["cron"], schedule["timezone"], schedule["every"]) == (
        "0 3 * * *",
        "Europe/Paris",
        None,
    )
    assert schedule["last_job_id"] is None
    assert await schedules(client) == [schedule]


@anyio_test
async def test_posting_a_key_again_replaces_its_schedule(client: httpx.AsyncClient) -> None:
    await client.post("/schedules", json=NIGHTLY)
    await client.post("/schedules", json={"key": "nightly", "name": "echo", "every": 3600})
    (schedule,) = await schedules(client)
    assert (schedule["every"], schedule["cron"]) == (3600, None)


@anyio_test
async def test_get_schedules_lists_them_by_key(client: httpx.AsyncClient) -> None:
    for key in ("b", "c", "a"):
        await client.post("/schedules", json={"key": key, "name": "echo", "every": 60})
    assert [s["key"] for s in await schedules(client)] == ["a", "b", "c"]


@pytest.mark.trio_only
@anyio_test
async def test_a_tick_shows_as_the_schedules_last_job_with_its_status(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/schedules", json={"key": "minutely", "name": "echo", "every": 60})
    await anyio.sleep(61)  # virtual time
    (schedule,) = await schedules(client)
    job = await finished(client, schedule["last_job_id"])
    (schedule,) = await schedules(client)
    assert (schedule["last_job_status"], job["schedule_key"]) == ("completed", "minutely")
    assert schedule["last_run_at"] is not None


@pytest.mark.parametrize(
    "cadence", [{}, {"every": 60, "cron": "* * * * *"}], ids=["neither", "both"]
)
@anyio_test
async def test_a_schedule_takes_exactly_one_of_every_and_cron(
    client: httpx.AsyncClient, cadence: dict[str, Any]
) -> None:
    response = await client.post("/schedules", json={"key": "k", "name": "echo", **cadence})
    body = assert_problem(response, 422, "invalid")
    assert "exactly one of every" in body["detail"]


@anyio_test
async def test_a_bad_cron_field_is_a_422_problem_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/schedules", json={"key": "k", "name": "echo", "cron": "0 25 * * *"}
    )
    body = assert_problem(response, 422, "invalid")
    assert "Bad hour" in body["detail"]


@pytest.mark.parametrize("timezone", ["Mars/Olympus", "America"])
@anyio_test
async def test_an_unknown_timezone_is_a_422_problem_naming_the_field(
    client: httpx.AsyncClient, timezone: str
) -> None:
    response = await client.post(
        "/schedules", json={**NIGHTLY, "timezone": timezone}
    )  # "America" is a folder of the time zone database, not a zone
    body = assert_problem(response, 422, "invalid")
    assert f"body.timezone: Value error, unknown timezone {timezone!r}" in body["detail"]


@anyio_test
async def test_a_schedule_for_an_unknown_handler_is_a_422_problem(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/schedules", json={**NIGHTLY, "name": "nope"})
    assert "'nope'" in assert_problem(response, 422, "unknown-handler")["detail"]
    assert await schedules(client) == []


@anyio_test
async def test_a_schedule_ticks_at_most_once_a_second(client: httpx.AsyncClient) -> None:
    response = await client.post("/schedules", json={"key": "k", "name": "echo", "every": 0.5})
    assert "body.every" in assert_problem(response, 422, "invalid")["detail"]


@anyio_test
async def test_a_lone_surrogate_in_a_schedules_payload_is_a_422_problem(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/schedules",
        content=b'{"key": "k", "name": "echo", "every": 60, "payload": ["\\ud800"]}',
        headers={"content-type": "application/json"},
    )
    assert "schedule's payload" in assert_problem(response, 422, "not-json")["detail"]


@anyio_test
async def test_delete_removes_the_schedule(client: httpx.AsyncClient) -> None:
    await client.post("/schedules", json=NIGHTLY)
    response = await client.delete("/schedules/nightly")
    assert (response.status_code, response.content) == (204, b"")
    assert await schedules(client) == []


@anyio_test
async def test_delete_of_an_unknown_schedule_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.delete("/schedules/nope"), 404, "schedule-not-found")
    assert "'nope'" in body["detail"]


@anyio_test
async def test_a_key_holding_a_slash_is_deleted_by_its_encoded_path(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/schedules", json={**NIGHTLY, "key": "reports/nightly"})
    assert (await client.delete("/schedules/reports%2Fnightly")).status_code == 204
    assert await schedules(client) == []


# --- after, POST /workflows ---------------------------------------------------------------------
@anyio_test
async def test_a_workflow_step_runs_after_the_earlier_steps_it_names(
    client: httpx.AsyncClient,
) -> None:
    fetch, parse, index, report = await workflow(
        client,
        {"name": "blocked"},
        {"name": "echo", "after_steps": [0]},
        {"name": "echo", "after_steps": [0]},
        {"name": "echo", "payload": "ops", "after_steps": [1, 2], "priority": 1},
    )
    assert (parse["after"], index["after"]) == ([fetch["id"]], [fetch["id"]])
    assert report["after"] == [parse["id"], index["id"]]
    assert (report["status"], report["payload"], report["priority"]) == ("waiting", "ops", 1)


@anyio_test
async def test_a_workflow_step_runs_after_the_stored_jobs_it_names(
    client: httpx.AsyncClient,
) -> None:
    stored = await enqueue(client, "blocked")
    first, second = await workflow(
        client, {"name": "echo", "after": [stored["id"]]}, {"name": "echo", "after_steps": [0]}
    )
    assert (first["after"], first["status"]) == ([stored["id"]], "waiting")
    assert second["after"] == [first["id"]]


@pytest.mark.parametrize(
    ("steps", "step", "says"),
    [
        ([{"name": "echo"}, {"name": "echo", "after_steps": [1]}], 1, "step 1 runs after itself"),
        ([{"name": "echo", "after_steps": [1]}, {"name": "echo"}], 0, "after step 1, a later"),
        ([{"name": "echo"}, {"name": "echo", "after_steps": [5]}], 1, "after step 5, a later"),
    ],
    ids=["itself", "a later step", "beyond the last step"],
)
@anyio_test
async def test_a_step_after_itself_or_a_later_step_is_a_422_naming_the_step(
    client: httpx.AsyncClient, steps: list[dict[str, Any]], step: int, says: str
) -> None:
    response = await client.post("/workflows", json={"steps": steps})
    body = assert_problem(response, 422, "invalid")
    assert says in body["detail"]
    assert body["errors"][0]["loc"] == f"body.steps.{step}.after_steps"
    assert (await client.get("/jobs")).json()["jobs"] == []


@anyio_test
async def test_a_step_after_an_unknown_job_is_a_422_and_stores_nothing(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/workflows", json={"steps": [{"name": "echo"}, {"name": "echo", "after": [999]}]}
    )
    assert "999" in assert_problem(response, 422, "unknown-job")["detail"]
    assert (await client.get("/jobs")).json()["jobs"] == []


@anyio_test
async def test_post_jobs_takes_after_and_the_job_waits_for_it(client: httpx.AsyncClient) -> None:
    first = await enqueue(client, "blocked")
    job = await enqueue(client, "echo", after=[first["id"]])
    assert (job["after"], job["status"]) == ([first["id"]], "waiting")
    listed = (await client.get("/jobs", params={"status": "waiting"})).json()["jobs"]
    assert [(j["id"], j["after"]) for j in listed] == [(job["id"], [first["id"]])]


@anyio_test
async def test_a_job_enqueued_after_an_unknown_job_is_a_422_problem(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/jobs", json={"name": "echo", "after": [999]})
    assert_problem(response, 422, "unknown-job")


@anyio_test
async def test_the_job_document_shows_after_and_schedule_key(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    document = (await client.get(f"/jobs/{job['id']}")).json()
    assert (document["after"], document["schedule_key"]) == ([], None)


# --- GET /jobs/{id}/workflow --------------------------------------------------------------------
@anyio_test
async def test_a_jobs_workflow_holds_the_jobs_connected_to_it_both_ways(
    client: httpx.AsyncClient,
) -> None:
    first, second, third, sibling = await workflow(
        client,
        {"name": "blocked"},
        {"name": "echo", "after_steps": [0]},
        {"name": "echo", "after_steps": [1]},
        {"name": "echo", "after_steps": [0]},
    )
    later = await enqueue(client, "echo", after=[third["id"]])
    await enqueue(client, "echo")  # not connected
    graph = (await client.get(f"/jobs/{second['id']}/workflow")).json()
    assert graph["job_id"] == second["id"]
    assert [job["id"] for job in graph["jobs"]] == [
        first["id"],
        second["id"],
        third["id"],
        sibling["id"],
        later["id"],
    ]
    assert graph["jobs"][2]["after"] == [second["id"]]
    assert graph["truncated"] is False


@anyio_test
async def test_a_jobs_workflow_is_bounded_by_its_limit(client: httpx.AsyncClient) -> None:
    jobs = await workflow(
        client, {"name": "blocked"}, *({"name": "echo", "after_steps": [0]} for _ in range(5))
    )
    graph = (await client.get(f"/jobs/{jobs[0]['id']}/workflow", params={"limit": 3})).json()
    assert len(graph["jobs"]) == 3
    assert jobs[0]["id"] in [job["id"] for job in graph["jobs"]]
    assert graph["truncated"] is True


@anyio_test
async def test_a_job_outside_any_workflow_is_its_own_workflow(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    graph = (await client.get(f"/jobs/{job['id']}/workflow")).json()
    assert ([j["id"] for j in graph["jobs"]], graph["truncated"]) == ([job["id"]], False)


@anyio_test
async def test_the_workflow_of_an_unknown_job_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/jobs/999/workflow"), 404, "not-found")


@anyio_test
async def test_a_workflow_limit_over_200_is_a_422_problem(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    response = await client.get(f"/jobs/{job['id']}/workflow", params={"limit": 201})
    assert_problem(response, 422, "invalid")


# --- POST /jobs/requeue-failed, /jobs/cancel-pending --------------------------------------------
async def failed_jobs(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    jobs = [await enqueue(client, "explode") for _ in range(count)]
    return [await finished(client, job["id"]) for job in jobs]


@anyio_test
async def test_requeue_failed_requeues_every_failed_job_and_says_how_many(
    client: httpx.AsyncClient,
) -> None:
    await failed_jobs(client, 2)
    response = await client.post("/jobs/requeue-failed")
    assert response.json() == {"requeued": 2}


@anyio_test
async def test_requeue_failed_takes_a_handler_name(client: httpx.AsyncClient) -> None:
    await failed_jobs(client, 1)
    response = await client.post("/jobs/requeue-failed", json={"name": "echo"})
    assert response.json() == {"requeued": 0}


@anyio_test
async def test_cancel_pending_cancels_pending_and_waiting_jobs(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    running = await enqueue(client, "blocked")
    await gate.entered.wait()
    pending = await enqueue(client, "echo", delay=3600)
    waiting = await enqueue(client, "echo", after=[running["id"]])
    response = await client.post("/jobs/cancel-pending")
    assert response.json() == {"cancelled": 2}
    for job in (pending, waiting):
        assert (await client.get(f"/jobs/{job['id']}")).json()["status"] == "cancelled"


@anyio_test
async def test_cancel_pending_takes_a_handler_name(client: httpx.AsyncClient) -> None:
    kept = await enqueue(client, "blocked", delay=3600)
    await enqueue(client, "echo", delay=3600)
    response = await client.post("/jobs/cancel-pending", json={"name": "echo"})
    assert response.json() == {"cancelled": 1}
    assert (await client.get(f"/jobs/{kept['id']}")).json()["status"] == "pending"


# --- the guard covers the new routes ------------------------------------------------------------
WRITES = [
    ("POST", "/schedules", {"key": "k", "name": "echo", "every": 60}),
    ("DELETE", "/schedules/k", None),
    ("POST", "/workflows", {"steps": [{"name": "echo"}]}),
    ("POST", "/jobs/requeue-failed", None),
    ("POST", "/jobs/cancel-pending", None),
]


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@anyio_test
async def test_a_page_of_another_origin_cannot_use_the_new_writes(
    client: httpx.AsyncClient, method: str, path: str, body: Any
) -> None:
    response = await client.request(
        method, path, json=body, headers={"Origin": "http://evil.example"}
    )
    assert_problem(response, 403, "cross-origin")


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
@anyio_test
async def test_a_dashboard_session_alone_cannot_use_the_new_writes(
    serve: Serve, method: str, path: str, body: Any
) -> None:
    async with serve(token=TOKEN) as (client, _):
        login = await client.post("/session", headers={"Authorization": f"Bearer {TOKEN}"})
        session = login.json()["session"]
        response = await client.request(
            method, path, json=body, headers={"Authorization": f"Bearer {session}"}
        )
        assert_problem(response, 403, "cross-origin")


@pytest.mark.parametrize("path", ["/schedules", "/jobs/1/workflow"])
@anyio_test
async def test_the_new_reads_need_the_token(serve: Serve, path: str) -> None:
    async with serve(token=TOKEN) as (client, _):
        assert_problem(await client.get(path), 401, "unauthorized")


@anyio_test
async def test_the_schema_documents_the_new_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {
        "/schedules": {"get", "post"},
        "/schedules/{key}": {"delete"},
        "/workflows": {"post"},
        "/jobs/{job_id}/workflow": {"get"},
        "/jobs/requeue-failed": {"post"},
        "/jobs/cancel-pending": {"post"},
    }.items() <= {path: set(operations) for path, operations in paths.items()}.items()


# --- the CLI ------------------------------------------------------------------------------------
def run(*args: str) -> subprocess.CompletedProcess[str]:
    """The ``conveyor`` command, with a wide terminal so that tables never fold a cell."""
    return subprocess.run(
        [CONVEYOR, *args],
        cwd=TESTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


@both_engines
@slow
def test_schedule_add_list_and_rm_drive_a_running_service(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        added = run("schedule", "add", "nightly", "hello", "--cron", "0 3 * * *", "--json", *url)
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["cron"] == "0 3 * * *"
        run("schedule", "add", "hourly", "hello", "--every", "1h", *url)
        listed = json.loads(run("schedule", "list", "--json", *url).stdout)
        assert [s["key"] for s in listed["schedules"]] == ["hourly", "nightly"]
        table = run("schedule", "list", *url).stdout
        assert "every 1h" in table
        assert "cron 0 3 * * * (UTC)" in table
        removed = run("schedule", "rm", "nightly", *url)
        assert (removed.returncode, removed.stdout.strip()) == (0, "removed schedule nightly")
        again = run("schedule", "rm", "nightly", *url)
        assert again.returncode == 3
        assert "no schedule has key 'nightly'" in again.stderr


@both_engines
@slow
def test_schedule_add_refuses_a_bad_cron_with_exit_code_4(db_path: Path) -> None:
    with running_server(db_path) as server:
        result = run("schedule", "add", "k", "hello", "--cron", "0 25 * * *", "--url", server.url)
        assert result.returncode == 4
        assert "Bad hour" in result.stderr


@pytest.mark.parametrize(
    "cadence", [[], ["--every", "1h", "--cron", "* * * * *"]], ids=["neither", "both"]
)
def test_schedule_add_takes_exactly_one_of_every_and_cron(cadence: list[str]) -> None:
    result = run("schedule", "add", "k", "hello", *cadence, "--url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "exactly one of --every and --cron" in result.stderr


@both_engines
@slow
def test_requeue_failed_and_cancel_pending_commands_print_counts(db_path: Path) -> None:
    with running_server(db_path) as server:
        url = ("--url", server.url)
        failing = httpx.post(f"{server.url}/jobs", json={"name": "fail_once"}).json()
        httpx.get(f"{server.url}/jobs/{failing['id']}/wait", params={"timeout": 30})
        requeued = run("requeue-failed", *url)
        assert (requeued.returncode, requeued.stdout.strip()) == (0, "requeued 1 failed jobs")
        httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": 3600})
        httpx.post(f"{server.url}/jobs", json={"name": "sleepy", "delay": 3600})
        cancelled = run("cancel-pending", "--name", "hello", *url)
        assert cancelled.stdout.strip() == "cancelled 1 pending and waiting jobs of handler hello"
        assert json.loads(run("cancel-pending", "--json", *url).stdout) == {"cancelled": 1}


@both_engines
@slow
def test_list_filters_waiting_jobs(db_path: Path) -> None:
    with running_server(db_path) as server:
        first = httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": 3600}).json()
        waiting = httpx.post(
            f"{server.url}/jobs", json={"name": "hello", "after": [first["id"]]}
        ).json()
        listed = run("list", "--status", "waiting", "--json", "--url", server.url)
        assert [job["id"] for job in json.loads(listed.stdout)["jobs"]] == [waiting["id"]]
