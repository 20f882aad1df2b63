"""The HTTP API, through the ASGI app (no server): routes, problems, auth, limits."""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pytest

from conveyor.service import Service
from conveyor.service._guard import check_bind

from helpers import Gate, QueueOpener, service_registry

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"


make_registry = service_registry


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
def serve_app(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float], gate: Gate
) -> Callable[..., Any]:
    """``async with serve_app(**service_options) as client``: an httpx client on the app."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opener(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
        async with open_test_queue(make_registry(gate)) as queue:
            service = Service(queue, clock=wall_clock, **options)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1"
            ) as client:
                yield client
            service.close()
            gate.open()

    return opener


@pytest.fixture
async def client(serve_app: Callable[..., Any]) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_app() as client:
        yield client


async def enqueue(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def finished(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}/wait", params={"timeout": 30})
    assert response.status_code == 200
    job: dict[str, Any] = response.json()
    assert job["status"] in ("completed", "failed", "cancelled")
    return job


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:conveyor:problem:{slug}"
    assert body["status"] == status
    return body


async def test_enqueue_answers_201_with_the_stored_job(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "payload": {"a": 1}, "priority": 2})
    assert response.status_code == 201
    job = response.json()
    assert (job["name"], job["payload"], job["priority"]) == ("echo", {"a": 1}, 2)
    assert job["status"] in ("pending", "running", "completed")


async def test_get_returns_the_job_with_its_result(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo", payload=[1, 2])
    await finished(client, job["id"])
    response = await client.get(f"/jobs/{job['id']}")
    assert response.json()["result"] == [1, 2]


async def test_get_unknown_job_is_a_404_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(await client.get("/jobs/12345"), 404, "not-found")
    assert "12345" in body["detail"]


async def test_malformed_json_is_a_400_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "bad-request")


async def test_wrong_type_is_a_422_problem_naming_the_field(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/jobs", json={"name": "echo", "priority": "1"}), 422, "invalid"
    )
    assert "body.priority" in body["detail"]


async def test_out_of_range_priority_is_a_422_problem(client: httpx.AsyncClient) -> None:
    body = assert_problem(
        await client.post("/jobs", json={"name": "echo", "priority": 11}), 422, "invalid"
    )
    assert "less than or equal to 10" in body["detail"]


async def test_unknown_handler_is_a_422_problem_listing_the_known_ones(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/jobs", json={"name": "nope"})
    body = assert_problem(response, 422, "unknown-handler")
    assert "'nope'" in body["detail"]
    assert "echo" in body["detail"]


async def test_a_lone_surrogate_in_the_payload_is_a_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs",
        content=b'{"name": "echo", "payload": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422, "not-json")


async def test_a_body_over_the_limit_is_a_413_problem(serve_app: Callable[..., Any]) -> None:
    async with serve_app(max_body=1000) as client:
        response = await client.post("/jobs", json={"name": "echo", "payload": "x" * 2000})
        assert_problem(response, 413, "too-large")
        assert (
            await client.post("/jobs", json={"name": "echo", "payload": "x"})
        ).status_code == 201


async def test_the_idempotency_key_header_yields_one_job(client: httpx.AsyncClient) -> None:
    first = await client.post("/jobs", json={"name": "echo"}, headers={"Idempotency-Key": "k1"})
    again = await client.post("/jobs", json={"name": "echo"}, headers={"Idempotency-Key": "k1"})
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["idempotency_key"] == "k1"


async def test_a_replay_answers_200_saying_it_is_one(client: httpx.AsyncClient) -> None:
    first = await client.post("/jobs", json={"name": "echo"}, headers={"Idempotency-Key": "k2"})
    again = await client.post("/jobs", json={"name": "echo"}, headers={"Idempotency-Key": "k2"})
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_a_batch_is_enqueued_in_order(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs/batch", json={"jobs": [{"name": "echo", "payload": n} for n in range(3)]}
    )
    assert response.status_code == 201
    assert [job["payload"] for job in response.json()["jobs"]] == [0, 1, 2]


async def test_an_int_beyond_64_bits_in_a_payload_is_answered_exactly(
    client: httpx.AsyncClient,
) -> None:
    payload = {"big": 2**70 + 1, "small": -(2**63) - 1}
    job = await enqueue(client, "echo", payload=payload)
    assert json.loads((await client.get(f"/jobs/{job['id']}")).content)["payload"] == payload


async def test_answers_carry_text_beyond_ascii_as_utf8(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo", payload={"text": "été \u2028 \U0001f600"})
    response = await client.get(f"/jobs/{job['id']}")
    assert response.headers["content-type"] == "application/json"
    assert response.json()["payload"] == {"text": "été \u2028 \U0001f600"}


async def test_a_batch_with_one_bad_job_writes_none(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs/batch", json={"jobs": [{"name": "echo"}, {"name": "nope"}]})
    assert_problem(response, 422, "unknown-handler")
    assert (await client.get("/jobs")).json()["jobs"] == []


async def test_list_pages_newest_first_through_the_cursor(client: httpx.AsyncClient) -> None:
    ids = [(await enqueue(client, "echo", delay=3600))["id"] for _ in range(5)]
    first = (await client.get("/jobs", params={"limit": 3})).json()
    second = (await client.get("/jobs", params={"limit": 3, "cursor": first["next_cursor"]})).json()
    assert [job["id"] for job in first["jobs"] + second["jobs"]] == ids[::-1]
    assert second["next_cursor"] is None


async def test_list_filters_by_status_and_name(client: httpx.AsyncClient) -> None:
    await enqueue(client, "echo", delay=3600)
    failed = await enqueue(client, "explode")
    await finished(client, failed["id"])
    response = await client.get("/jobs", params={"status": "failed", "name": "explode"})
    assert [job["id"] for job in response.json()["jobs"]] == [failed["id"]]


async def test_an_unknown_status_filter_is_a_422_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/jobs", params={"status": "lost"}), 422, "invalid")


async def test_cancel_makes_a_pending_job_cancelled(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo", delay=3600)
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.json()["status"] == "cancelled"


async def test_cancel_of_a_running_job_answers_it_cancelled(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    job = await enqueue(client, "blocked")
    await gate.entered.wait()
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"


@pytest.mark.trio_only
async def test_cancel_of_a_job_whose_handler_does_not_stop_is_a_202_saying_so(
    client: httpx.AsyncClient, gate: Gate
) -> None:
    job = await enqueue(client, "stubborn")
    await gate.entered.wait()
    response = await client.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running"
    assert "cancellation is in progress" in response.json()["note"]
    gate.open()
    assert (await finished(client, job["id"]))["status"] == "cancelled"


async def test_cancel_of_a_finished_job_is_a_409_problem(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    await finished(client, job["id"])
    body = assert_problem(await client.post(f"/jobs/{job['id']}/cancel"), 409, "conflict")
    assert "completed" in body["detail"]


async def test_a_failed_jobs_error_names_conveyor_fail_by_its_public_name(
    client: httpx.AsyncClient,
) -> None:
    job = await enqueue(client, "explode")
    assert (await finished(client, job["id"]))["error"].endswith(
        "\nconveyor.Fail: boom: the handler gave up"
    )
    listed = (await client.get("/jobs", params={"status": "failed"})).json()["jobs"]
    assert listed[0]["error_preview"] == "conveyor.Fail: boom: the handler gave up"


async def test_cancel_of_an_unknown_job_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.post("/jobs/999/cancel"), 404, "not-found")


async def test_requeue_brings_a_failed_job_back_with_attempts_reset(
    client: httpx.AsyncClient,
) -> None:
    job = await enqueue(client, "explode")
    assert "boom" in (await finished(client, job["id"]))["error"]
    response = await client.post(f"/jobs/{job['id']}/requeue")
    assert response.status_code == 200
    again = await finished(client, job["id"])
    assert (again["status"], again["attempts"]) == ("failed", 1)  # one fresh attempt, not two


async def test_requeue_of_a_pending_job_is_a_409_problem(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo", delay=3600)
    assert_problem(await client.post(f"/jobs/{job['id']}/requeue"), 409, "conflict")


async def test_wait_answers_once_the_job_finished(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo", payload="done")
    assert (await finished(client, job["id"]))["result"] == "done"


async def test_wait_answers_with_the_job_as_it_is_after_its_timeout(
    client: httpx.AsyncClient,
) -> None:
    job = await enqueue(client, "echo", delay=3600)
    response = await client.get(f"/jobs/{job['id']}/wait", params={"timeout": 0.1})
    assert response.json()["status"] == "pending"


async def test_wait_refuses_a_timeout_over_a_minute(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    assert_problem(
        await client.get(f"/jobs/{job['id']}/wait", params={"timeout": 61}), 422, "invalid"
    )


async def test_stats_count_jobs_by_status_and_name(client: httpx.AsyncClient) -> None:
    await enqueue(client, "echo", delay=3600)
    stats = (await client.get("/stats")).json()
    assert stats["by_status"]["pending"] == 1
    assert stats["by_name"]["echo"]["pending"] == 1


async def test_purge_deletes_finished_jobs(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "echo")
    await finished(client, job["id"])
    response = await client.post("/jobs/purge", json={"older_than": 0})
    assert response.json() == {"deleted": 1}


async def test_healthz_and_readyz_answer_ok(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


async def test_a_token_is_required_on_every_route_but_healthz(
    serve_app: Callable[..., Any],
) -> None:
    async with serve_app(token="s3cret") as client:
        assert (await client.get("/healthz")).status_code == 200
        for path in ("/jobs", "/stats", "/metrics", "/openapi.json", "/handlers"):
            response = await client.get(path)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")


async def test_the_right_bearer_token_is_let_through(serve_app: Callable[..., Any]) -> None:
    async with serve_app(token="s3cret") as client:
        wrong = await client.get("/stats", headers={"Authorization": "Bearer s3cre"})
        assert wrong.status_code == 401
        right = await client.get("/stats", headers={"Authorization": "Bearer s3cret"})
        assert right.status_code == 200


async def test_the_dashboard_trades_the_token_for_a_session_that_authenticates(
    serve_app: Callable[..., Any],
) -> None:
    async with serve_app(token="s3cret") as client:
        login = await client.post("/session", headers={"Authorization": "Bearer s3cret"})
        session = login.json()["session"]
        response = await client.get("/stats", headers={"Authorization": f"Bearer {session}"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/", "/static/dashboard.js"])
async def test_the_dashboards_page_and_files_need_no_token(
    serve_app: Callable[..., Any], path: str
) -> None:
    async with serve_app(token="s3cret") as client:
        assert (await client.get(path)).status_code == 200


async def test_the_schema_documents_errors_as_problem_json(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    responses = schema["paths"]["/jobs"]["post"]["responses"]
    assert PROBLEM in responses["422"]["content"]
    assert "application/json" in responses["201"]["content"]


async def test_the_dashboard_page_and_its_assets_are_served_locally(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert "<title>conveyor</title>" in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")
    assert (await client.get("/static/dashboard.js")).status_code == 200


def test_serving_beyond_loopback_without_a_token_is_refused() -> None:
    with pytest.raises(ValueError, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "s3cret")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)


@pytest.mark.parametrize("token", ["", "   "])
def test_a_blank_token_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="the token is empty"):
        check_bind("0.0.0.0", token)
    with pytest.raises(ValueError, match="the token is empty"):
        check_bind("127.0.0.1", token)


async def test_wait_of_a_running_job_ends_when_the_service_stops_waits(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float], gate: Gate
) -> None:
    async with open_test_queue(make_registry(gate)) as queue:
        service = Service(queue, clock=wall_clock)
        job = await queue.enqueue("blocked")
        await gate.entered.wait()
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(service.wait, job.id, 60.0)
                await anyio.sleep(0.1)
                service.stop_waits()
        service.close()
        gate.open()


async def test_a_delay_and_a_timeout_may_be_given_with_units(
    client: httpx.AsyncClient, wall_clock: Callable[[], float]
) -> None:
    job = await enqueue(client, "echo", delay="1m30s", timeout="5m")
    assert job["run_at"] == pytest.approx(job["created_at"] + 90, abs=0.01)
    assert job["timeout"] == 300


async def test_run_at_may_be_an_iso_8601_time(
    client: httpx.AsyncClient, wall_clock: Callable[[], float]
) -> None:
    when = datetime.datetime.fromtimestamp(round(wall_clock()) + 3600, datetime.UTC)
    job = await enqueue(client, "echo", run_at=when.isoformat().replace("+00:00", "Z"))
    assert job["run_at"] == when.timestamp()


async def test_an_iso_time_without_its_offset_is_a_422_naming_the_field(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/jobs", json={"name": "echo", "run_at": "2030-01-01T09:00"})
    body = assert_problem(response, 422, "invalid")
    assert "run_at" in json.dumps(body)
    assert "needs its UTC offset" in json.dumps(body)


async def test_a_duration_that_is_not_one_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json={"name": "echo", "delay": "soon"})
    body = assert_problem(response, 422, "invalid")
    assert "'soon' is not a duration" in json.dumps(body)


async def test_purge_takes_an_age_with_units(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs/purge", json={"older_than": "7d"})
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 0}


async def test_every_operation_has_a_stable_id_and_a_tag(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operations = {
        operation["operationId"]: operation
        for methods in schema["paths"].values()
        for operation in methods.values()
    }
    assert {"enqueueJob", "getJob", "cancelJob", "waitJob", "listJobs"} <= set(operations)
    assert all(operation["tags"] for operation in operations.values())
    assert {tag["name"] for tag in schema["tags"]} >= {"jobs", "schedules", "handlers"}


async def test_the_schema_names_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert {"bearerAuth": []} in schema["security"]
    assert schema["paths"]["/healthz"]["get"]["security"] == [{}]


async def test_a_key_reused_for_other_work_is_a_409_naming_it(client: httpx.AsyncClient) -> None:
    first = await client.post("/jobs", json={"name": "echo", "payload": 1, "idempotency_key": "k"})
    assert first.status_code == 201
    other = await client.post("/jobs", json={"name": "echo", "payload": 2, "idempotency_key": "k"})
    body = assert_problem(other, 409, "idempotency-conflict")
    assert "'k' is held by job" in body["detail"]


ROUTE_BODIES = [
    {"name": "echo", "payload": {"a": [1, 2.5, None]}},
    {"name": "echo", "priority": 1, "delay": "1m30s", "max_attempts": 2, "timeout": 5},
    {"name": "echo", "run_at": "2030-01-01T09:00:00+01:00"},
    {"name": "echo", "run_at": "2030-01-01T09:00:00"},
    {"name": "echo", "after": [424242]},
    {"name": "nope"},
    {"name": ""},
    {"name": "echo", "priority": 0},
    {"name": "echo", "priority": "1"},
    {"name": "echo", "unknown": 1},
    {"name": "echo", "delay": 1, "run_at": 2},
    {"name": "echo", "idempotency_key": "k", "payload": 1, "delay": "1h"},
    {"name": "echo", "idempotency_key": "k", "payload": 2, "delay": "1h"},
    {"payload": 1},
    [],
    "echo",
]


@pytest.mark.parametrize("body", ROUTE_BODIES, ids=[json.dumps(b) for b in ROUTE_BODIES])
async def test_post_jobs_answers_as_the_fastapi_route_does(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float], gate: Gate, body: Any
) -> None:
    """``POST /jobs`` skips FastAPI's routing: its answers are the route's."""
    answers = []
    moments: list[list[float]] = []
    for through_fastapi in (False, True):
        async with open_test_queue(make_registry(gate)) as queue:
            service = Service(queue, clock=wall_clock)
            app = service.app if through_fastapi else service.asgi
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
            ) as client:
                response = await client.post("/jobs", json=body)
                if isinstance(body, dict) and "idempotency_key" in body:
                    # A replay, answered with the job as it stands: delayed, it stays pending.
                    response = await client.post("/jobs", json=body)
            service.close()
        answer = response.json()
        if isinstance(answer, dict) and "id" in answer:  # both runs share the file
            del answer["id"]
            moments.append([answer.pop(m) - wall_clock() for m in ("run_at", "created_at")])
        answers.append((response.status_code, dict(response.headers), answer))
    (fast_status, fast_headers, fast), (route_status, route_headers, route) = answers
    assert (fast_status, fast) == (route_status, route)
    if moments:  # times relative to each run's now: alike, not equal
        assert all(abs(a - b) < 5 for a, b in zip(*moments, strict=True)), moments
    assert fast_headers.get("content-type") == route_headers.get("content-type")
    assert fast_headers.get("idempotent-replayed") == route_headers.get("idempotent-replayed")
