"""The service against hostile browsers and hosts, and a failing database.

Requests with foreign ``Host`` and ``Origin`` headers, form bodies, cookies, bearer values
that are not sessions, bodies that never arrive, huge results in lists, and queue calls that
raise ``DatabaseError``: each is answered with the refusal it deserves, and the jobs stay as
they were. Most go through the ASGI app; the last ones run a real ``conveyor serve`` and, where
Debian's Chromium is installed, a real browser with an attacker's page on another port.
"""

from __future__ import annotations

import http.server
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio

import conveyor
from conveyor._storage import sqlite as storage
from conveyor.service import Service
from conveyor.service._guard import OLD_COOKIES, SESSION_SECONDS, Hosts, session_value
from conveyor.service._models import PREVIEW_CHARS, json_preview
from service_server import Server, both_engines, running_server

from helpers import QueueOpener

pytestmark = pytest.mark.anyio

PROBLEM = "application/problem+json"
TOKEN = "s3cret-token"
LOOPBACK = "http://127.0.0.1"


def make_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler
    async def echo(payload: Any) -> Any:
        return payload

    @registry.handler
    async def huge(payload: int) -> str:
        return "x" * payload

    @registry.handler(max_attempts=1)
    async def explode(payload: Any) -> None:
        raise ValueError("boom: " + "y" * payload)

    return registry


Serve = Callable[..., Any]


@pytest.fixture
def serve(open_test_queue: QueueOpener, wall_clock: Callable[[], float]) -> Serve:
    """``async with serve(**service_options) as (client, queue)``: httpx on the ASGI app."""

    @asynccontextmanager
    async def opener(
        base_url: str = LOOPBACK, **options: Any
    ) -> AsyncIterator[tuple[httpx.AsyncClient, conveyor.Queue]]:
        async with open_test_queue(make_registry()) as queue:
            service = Service(queue, clock=wall_clock, **options)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
                yield client, queue
            service.close()

    return opener


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:conveyor:problem:{slug}"
    return body


async def pending_job(queue: conveyor.Queue) -> conveyor.Job:
    return await queue.enqueue("echo", "later", delay=3600)


async def status_of(queue: conveyor.Queue, job: conveyor.Job) -> conveyor.JobStatus:
    stored = await queue.get(job.id)
    assert stored is not None
    return stored.status


async def log_in(client: httpx.AsyncClient) -> str:
    """Trade the token for a session as the dashboard does; the session value."""
    login = await client.post("/session", headers={"Authorization": f"Bearer {TOKEN}"})
    assert login.status_code == 200, login.text
    session: str = login.json()["session"]
    return session


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# --- Host: DNS rebinding ------------------------------------------------------------------------
async def test_a_rebound_host_name_cannot_read_jobs(serve: Serve) -> None:
    async with serve() as (client, queue):
        await queue.enqueue("echo", "secret payload", delay=3600)
        response = await client.get("/jobs", headers={"Host": "attacker.example"})
        body = assert_problem(response, 421, "wrong-host")
    assert "attacker.example" in body["detail"]
    assert "secret payload" not in response.text


async def test_a_rebound_host_name_cannot_cancel_a_job(serve: Serve) -> None:
    async with serve() as (client, queue):
        job = await pending_job(queue)
        response = await client.post(
            f"/jobs/{job.id}/cancel", headers={"Host": "attacker.example:8327"}
        )
        assert_problem(response, 421, "wrong-host")
        assert await status_of(queue, job) is conveyor.JobStatus.PENDING


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:8327", "localhost:8327", "LOCALHOST", "[::1]:8327"]
)
async def test_a_loopback_server_answers_its_address_and_loopback_names(
    serve: Serve, host: str
) -> None:
    async with serve() as (client, _):
        assert (await client.get("/jobs", headers={"Host": host})).status_code == 200


async def test_an_allowed_host_name_is_answered(serve: Serve) -> None:
    async with serve(allowed_hosts=["queue.internal"]) as (client, _):
        response = await client.get("/jobs", headers={"Host": "queue.internal:8327"})
        assert response.status_code == 200


async def test_a_request_without_a_host_header_is_refused(serve: Serve) -> None:
    async with serve() as (client, _):
        request = client.build_request("GET", "/jobs")
        del request.headers["host"]
        assert_problem(await client.send(request), 421, "wrong-host")


async def test_healthz_answers_whatever_the_host(serve: Serve) -> None:
    async with serve() as (client, _):
        response = await client.get("/healthz", headers={"Host": "probe.example"})
        assert response.status_code == 200


def test_a_subdomain_wildcard_allows_subdomains_only() -> None:
    hosts = Hosts.of("127.0.0.1", ["*.example.com"])
    assert hosts.allows("api.example.com:8327")
    assert not hosts.allows("example.com")
    assert not hosts.allows("evilexample.com")


def test_a_wildcard_bind_answers_ip_addresses_but_not_names() -> None:
    hosts = Hosts.of("0.0.0.0")
    assert hosts.allows("192.0.2.7:8327")
    assert hosts.allows("[2001:db8::1]:8327")
    assert not hosts.allows("attacker.example:8327")


def test_a_server_bound_to_a_name_answers_that_name() -> None:
    hosts = Hosts.of("queue.lan")
    assert hosts.allows("queue.lan:8327")
    assert not hosts.allows("localhost:8327")


@pytest.mark.parametrize("header", ["", "a b", "host:port", "[::1", "[::1]x", "[1.2.3.4]"])
def test_a_malformed_host_header_is_refused_even_where_any_host_is_allowed(header: str) -> None:
    assert not Hosts.of("127.0.0.1", ["*"]).allows(header)


@pytest.mark.parametrize("name", ["http://queue.internal", "queue.internal:8327", "a/b", ""])
def test_an_allowed_host_that_is_not_a_host_name_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match=f"not {name!r}"):
        Hosts.of("127.0.0.1", [name])


# --- CSRF ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:9999", "null", "http://127.0.0.1.nip.io"]
)
async def test_a_foreign_page_cannot_cancel_a_job_on_a_server_without_token(
    serve: Serve, origin: str
) -> None:
    async with serve() as (client, queue):
        job = await pending_job(queue)
        response = await client.post(f"/jobs/{job.id}/cancel", headers={"Origin": origin})
        assert_problem(response, 403, "cross-origin")
        assert await status_of(queue, job) is conveyor.JobStatus.PENDING


async def test_a_page_on_another_port_cannot_cancel_a_job_with_a_session(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, queue):
        session = await log_in(client)
        job = await pending_job(queue)
        response = await client.post(
            f"/jobs/{job.id}/cancel",
            headers={**bearer(session), "Origin": "http://127.0.0.1:9999"},
        )
        assert_problem(response, 403, "cross-origin")
        assert await status_of(queue, job) is conveyor.JobStatus.PENDING


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain"],
)
async def test_a_form_body_is_refused_on_a_state_changing_route(
    serve: Serve, content_type: str
) -> None:
    async with serve() as (client, queue):
        job = await pending_job(queue)
        response = await client.post(
            f"/jobs/{job.id}/cancel", content=b"", headers={"Content-Type": content_type}
        )
        assert_problem(response, 415, "unsupported-media-type")
        assert await status_of(queue, job) is conveyor.JobStatus.PENDING


async def test_a_session_without_origin_or_dashboard_header_cannot_change_jobs(
    serve: Serve,
) -> None:
    async with serve(token=TOKEN) as (client, queue):
        session = await log_in(client)
        job = await pending_job(queue)
        response = await client.post(f"/jobs/{job.id}/cancel", headers=bearer(session))
        assert_problem(response, 403, "cross-origin")
        assert await status_of(queue, job) is conveyor.JobStatus.PENDING


async def test_a_session_with_the_dashboard_header_may_change_jobs(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, queue):
        session = await log_in(client)
        job = await pending_job(queue)
        response = await client.post(
            f"/jobs/{job.id}/cancel",
            headers={**bearer(session), "X-Conveyor-Request": "dashboard"},
        )
        assert response.json()["status"] == "cancelled"


async def test_a_session_with_a_same_origin_origin_may_change_jobs(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, queue):
        session = await log_in(client)
        job = await pending_job(queue)
        response = await client.post(
            f"/jobs/{job.id}/cancel", headers={**bearer(session), "Origin": LOOPBACK}
        )
        assert response.json()["status"] == "cancelled"


async def test_a_bearer_client_needs_no_origin(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, queue):
        job = await pending_job(queue)
        response = await client.post(f"/jobs/{job.id}/cancel", headers=bearer(TOKEN))
        assert response.json()["status"] == "cancelled"


async def test_an_api_client_without_origin_may_enqueue_on_a_server_without_token(
    serve: Serve,
) -> None:
    async with serve() as (client, _):
        assert (await client.post("/jobs", json={"name": "echo"})).status_code == 201


# --- dashboard sessions: never a cookie ---------------------------------------------------------
async def test_a_session_does_not_hold_the_token(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, _):
        session = await log_in(client)
    assert TOKEN not in session


async def test_logging_in_sets_no_cookie(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, _):
        login = await client.post("/session", headers=bearer(TOKEN))
    assert "set-cookie" not in login.headers


async def test_the_dashboard_page_clears_the_cookies_of_earlier_versions(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, _):
        page = await client.get("/")
    cleared = {
        cookie.partition("=")[0]
        for cookie in page.headers.get_list("set-cookie")
        if "Max-Age=0" in cookie
    }
    assert cleared == set(OLD_COOKIES)


async def test_a_session_cannot_make_another_session(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, _):
        session = await log_in(client)
        response = await client.post(
            "/session", headers={**bearer(session), "X-Conveyor-Request": "dashboard"}
        )
        assert_problem(response, 401, "unauthorized")


async def test_a_server_without_a_token_makes_no_session(serve: Serve) -> None:
    async with serve() as (client, _):
        assert_problem(await client.post("/session"), 409, "no-token")


@pytest.mark.parametrize("name", OLD_COOKIES)
async def test_a_cookie_authenticates_nothing_even_holding_a_valid_session(
    serve: Serve, name: str
) -> None:
    async with serve(token=TOKEN) as (client, _):
        session = await log_in(client)
        for value in (session, TOKEN):
            response = await client.get("/stats", headers={"Cookie": f"{name}={value}"})
            assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize(
    "value", [f"9999999999.{'0' * 64}", f"{'9' * 5000}.x", "", "1.2", TOKEN.upper()]
)
async def test_a_bearer_value_that_is_not_a_session_is_refused(serve: Serve, value: str) -> None:
    async with serve(token=TOKEN) as (client, _):
        response = await client.get("/stats", headers=bearer(value))
        assert_problem(response, 401, "unauthorized")


async def test_a_session_of_another_token_is_refused(
    serve: Serve, wall_clock: Callable[[], float]
) -> None:
    async with serve(token=TOKEN) as (client, _):
        forged = session_value(b"another token", int(wall_clock()) + 60)
        response = await client.get("/stats", headers=bearer(forged))
        assert_problem(response, 401, "unauthorized")


@pytest.mark.trio_only
async def test_a_session_ends_a_day_after_the_login(serve: Serve) -> None:
    async with serve(token=TOKEN) as (client, _):
        session = await log_in(client)
        await anyio.sleep(SESSION_SECONDS - 60)
        assert (await client.get("/stats", headers=bearer(session))).status_code == 200
        await anyio.sleep(61)
        assert_problem(await client.get("/stats", headers=bearer(session)), 401, "unauthorized")


# --- headers ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/jobs"), ("GET", "/static/dashboard.js"), ("GET", "/nope")],
)
async def test_every_answer_forbids_framing_sniffing_and_foreign_content(
    serve: Serve, method: str, path: str
) -> None:
    async with serve() as (client, _):
        response = await client.request(method, path)
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_refusal_by_the_guard_carries_the_security_headers(serve: Serve) -> None:
    async with serve() as (client, _):
        response = await client.get("/jobs", headers={"Host": "attacker.example"})
    assert response.headers["x-frame-options"] == "DENY"


# --- a body that does not arrive ----------------------------------------------------------------
async def test_a_body_that_does_not_arrive_in_time_is_a_408_problem(
    open_test_queue: QueueOpener, wall_clock: Callable[[], float]
) -> None:
    async with open_test_queue(make_registry()) as queue:
        service = Service(queue, clock=wall_clock, body_timeout=0.5)
        sent: list[dict[str, Any]] = []
        first = True

        async def receive() -> dict[str, Any]:
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"name": "ec', "more_body": True}
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/jobs",
            "raw_path": b"/jobs",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8327),
        }
        with anyio.fail_after(60):
            await service.asgi(scope, receive, send)  # type: ignore[arg-type]
        assert await queue.list() == []
        service.close()
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b"body-timeout" in sent[1]["body"]


# --- 405 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path", ["/jobs/purge", "/jobs/batch", "/jobs/1/cancel", "/jobs/1/requeue"]
)
async def test_get_on_a_post_only_route_is_a_405_allowing_post(serve: Serve, path: str) -> None:
    async with serve() as (client, _):
        response = await client.get(path)
        assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(("path", "allow"), [("/jobs", "GET, POST"), ("/jobs/1", "GET")])
async def test_a_405_allows_every_method_of_the_path(serve: Serve, path: str, allow: str) -> None:
    async with serve() as (client, _):
        response = await client.put(path, json={})
        assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == allow


# --- a failing database -------------------------------------------------------------------------
def failing(message: str) -> Callable[..., Any]:
    async def call(*args: Any, **kwargs: Any) -> Any:
        raise conveyor.DatabaseError(message)

    return call


@pytest.mark.parametrize(
    ("method", "path", "call", "body"),
    [
        ("POST", "/jobs", "_enqueue_or_replay", {"name": "echo"}),
        ("POST", "/jobs/batch", "enqueue_many", {"jobs": [{"name": "echo"}]}),
        ("POST", "/jobs/1/cancel", "cancel", None),
        ("POST", "/jobs/1/requeue", "requeue", None),
        ("POST", "/jobs/purge", "purge", {"older_than": 0}),
        ("GET", "/jobs", "list", None),
        ("GET", "/jobs/1", "get", None),
        ("GET", "/stats", "stats", None),
        ("GET", "/metrics", "stats", None),
    ],
)
async def test_a_database_error_in_a_route_is_a_503_problem_saying_when_to_retry(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    call: str,
    body: Any,
) -> None:
    message = "database or disk is full: free space on the volume of jobs.db"
    async with serve() as (client, queue):
        monkeypatch.setattr(queue, call, failing(message))
        response = await client.request(method, path, json=body)
        problem = assert_problem(response, 503, "database-unavailable")
    assert problem["detail"] == message
    assert int(response.headers["retry-after"]) > 0


async def test_readyz_is_a_503_problem_when_the_database_fails(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve() as (client, queue):
        monkeypatch.setattr(queue, "ping", failing("database is locked"))
        response = await client.get("/readyz")
        assert_problem(response, 503, "database-unavailable")
        assert "retry-after" in response.headers
        monkeypatch.undo()
        assert (await client.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.slow
def test_a_database_locked_from_outside_is_a_503_and_the_service_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real fault, as production runs (trio, real time, the SQL thread): an admin's sqlite3
    # session holds the write lock past the busy timeout.
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "jobs.db"

    async def main() -> None:
        async with conveyor.open_queue(path, handlers=make_registry()) as queue:
            service = Service(queue)
            transport = httpx.ASGITransport(app=service.asgi)
            async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as client:
                outside = sqlite3.connect(path, isolation_level=None)
                outside.execute("BEGIN IMMEDIATE")
                try:
                    refused = await client.post("/jobs", json={"name": "echo"})
                finally:
                    outside.rollback()
                    outside.close()
                accepted = await client.post("/jobs", json={"name": "echo"})
                ready = await client.get("/readyz")
            service.close()
        assert_problem(refused, 503, "database-unavailable")
        assert "retry-after" in refused.headers
        assert accepted.status_code == 201
        assert ready.json() == {"status": "ready"}

    trio.run(main)


# --- huge documents in lists --------------------------------------------------------------------
async def test_a_list_carries_a_bounded_preview_of_a_huge_result(serve: Serve) -> None:
    async with serve() as (client, queue):
        job = await queue.enqueue("huge", 5_000_000)
        await queue.wait(job.id, timeout=60)
        response = await client.get("/jobs")
    (item,) = response.json()["jobs"]
    assert (item["result_truncated"], len(item["result_preview"])) == (True, PREVIEW_CHARS)
    assert "result" not in item
    assert len(response.content) < 4 * PREVIEW_CHARS + 1000


async def test_a_small_payload_is_previewed_whole(serve: Serve) -> None:
    async with serve() as (client, queue):
        await queue.enqueue("echo", {"a": [1, None, "b"]}, delay=3600)
        (item,) = (await client.get("/jobs")).json()["jobs"]
    assert (item["payload_preview"], item["payload_truncated"]) == ('{"a":[1,null,"b"]}', False)
    assert "payload" not in item


async def test_a_list_previews_a_traceback_by_its_exception_line(serve: Serve) -> None:
    async with serve() as (client, queue):
        job = await queue.enqueue("explode", 3)
        await queue.wait(job.id, timeout=60)
        (item,) = (await client.get("/jobs")).json()["jobs"]
    assert (item["error_preview"], item["error_truncated"]) == ("ValueError: boom: yyy", False)


async def test_the_job_route_gives_the_whole_document(serve: Serve) -> None:
    async with serve() as (client, queue):
        job = await queue.enqueue("huge", 1_000_000)
        await queue.wait(job.id, timeout=60)
        response = await client.get(f"/jobs/{job.id}")
    assert len(response.json()["result"]) == 1_000_000


def test_a_preview_of_a_deeply_nested_value_stops_at_its_limit() -> None:
    value: Any = "end"
    for _ in range(100_000):
        value = [value]
    preview, truncated = json_preview(value)
    assert (preview, truncated) == ("[" * PREVIEW_CHARS, True)


@pytest.mark.parametrize(
    "value", [None, True, 1.5, -3, 'é\n"q"', {"k": {"l": []}}, [{}, "", 0], {"": None}]
)
def test_a_preview_that_was_not_cut_is_the_values_json(value: Any) -> None:
    import json

    preview, truncated = json_preview(value)
    assert not truncated
    assert json.loads(preview) == value


# --- a real server ------------------------------------------------------------------------------
@both_engines
@pytest.mark.slow
def test_a_real_server_answers_its_allowed_hosts_only(db_path: Path) -> None:
    with running_server(db_path, "--allowed-host", "queue.internal") as server:
        allowed = httpx.get(f"{server.url}/stats", headers={"Host": "queue.internal"})
        foreign = httpx.get(f"{server.url}/stats", headers={"Host": "attacker.example"})
    assert allowed.status_code == 200
    assert foreign.status_code == 421


# --- a real browser -----------------------------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} (install Debian's chromium; .ci/run does)",
)


class AttackerSite:
    """A web server on another port of 127.0.0.1, serving one page; it records the Cookie
    headers the browser sends it (an empty string for none)."""

    def __init__(self, page: str) -> None:
        self.cookies: list[str] = []
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.cookies.append(self.headers.get("Cookie", ""))
                body = page.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AttackerSite:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture
def token_server(db_path: Path) -> Iterator[Server]:
    with running_server(db_path, "--token", TOKEN) as server:
        yield server


@pytest.fixture
def browser(token_server: Server) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(token_server: Server, browser: Any) -> Any:
    """A Chromium page logged in to the dashboard of ``token_server``."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{token_server.url}/#token={TOKEN}")
    page.locator("#connection", has_text="live").wait_for()
    return page


def api(server: Server, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.request(method, f"{server.url}{path}", headers=headers, **kwargs)
    assert response.is_success, response.text
    return response.json()


@pytest.mark.slow
@needs_chromium
def test_a_page_on_another_port_cannot_cancel_a_job_through_an_auto_submitting_form(
    token_server: Server, browser_page: Any
) -> None:
    job = api(token_server, "POST", "/jobs", json={"name": "hello", "delay": 3600})
    target = f"{token_server.url}/jobs/{job['id']}/cancel"
    page = (
        f'<form id="f" method="POST" action="{target}"></form>'
        f"<script>document.getElementById('f').submit()</script>"
    )
    with AttackerSite(page) as attacker:
        with browser_page.expect_response(target) as answer:
            browser_page.goto(attacker.url)
        assert answer.value.status == 401  # the browser has no credential it could send
    assert api(token_server, "GET", f"/jobs/{job['id']}")["status"] == "pending"


@pytest.mark.slow
@needs_chromium
def test_a_page_on_another_port_is_sent_no_cookie_of_the_dashboard(
    token_server: Server, browser_page: Any
) -> None:
    with AttackerSite("<p>hello</p>") as attacker:
        browser_page.goto(attacker.url)
        cookies = attacker.cookies
    assert cookies  # the page (and perhaps its icon) was asked for...
    assert not any(cookies)  # ...with no Cookie header at all


@pytest.mark.slow
@needs_chromium
def test_a_page_on_another_port_cannot_read_the_dashboards_session(
    token_server: Server, browser_page: Any
) -> None:
    stored = browser_page.evaluate("sessionStorage.getItem('conveyor.session')")
    with AttackerSite("<p>hello</p>") as attacker:
        browser_page.goto(attacker.url)  # the same tab: its storage is per origin
        seen = browser_page.evaluate(
            "[document.cookie, sessionStorage.length, localStorage.length]"
        )
    assert stored  # the dashboard's own origin holds it...
    assert seen == ["", 0, 0]  # ...and another port sees nothing of it


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_drops_the_token_from_the_address(browser_page: Any) -> None:
    assert TOKEN not in browser_page.url


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_asks_for_the_token_and_then_shows_the_queue(
    token_server: Server, browser: Any
) -> None:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{token_server.url}/")
    page.locator("#login").wait_for()
    page.locator("#login-token").fill(TOKEN)
    page.locator("#login-button").click()
    page.locator("#connection", has_text="live").wait_for()
    assert page.locator("#login").is_hidden()


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_refuses_a_wrong_token_saying_so(token_server: Server, browser: Any) -> None:
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{token_server.url}/#token=wrong")
    page.locator("#login-message", has_text="refused").wait_for()
    assert page.locator("#count-pending").inner_text() == "\N{EN DASH}"


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_logged_in_with_a_token_cancels_a_job(
    token_server: Server, browser_page: Any
) -> None:
    job = api(token_server, "POST", "/jobs", json={"name": "hello", "delay": 3600})
    browser_page.locator(
        f'#pending button[data-action="cancel"][data-job-id="{job["id"]}"]'
    ).click()
    browser_page.locator("#count-cancelled", has_text="1").wait_for()
    assert api(token_server, "GET", f"/jobs/{job['id']}")["status"] == "cancelled"


@pytest.mark.slow
@needs_chromium
def test_the_dashboard_fetches_a_whole_job_only_when_it_is_opened(
    token_server: Server, browser_page: Any
) -> None:
    job = api(token_server, "POST", "/jobs", json={"name": "hello", "payload": "z" * 50_000})
    fetched: list[str] = []
    polls: list[str] = []
    browser_page.on(
        "request",
        lambda request: (fetched if request.url.endswith(f"/jobs/{job['id']}") else polls).append(
            request.url
        ),
    )

    def after_polls(count: int) -> None:
        """Let the dashboard poll ``count`` more times (each poll reads /stats once)."""

        def done() -> int:
            return sum(url.endswith("/stats") for url in polls)

        target = done() + count
        for _ in range(600):
            if done() >= target:
                return
            browser_page.wait_for_timeout(50)
        raise AssertionError(f"the dashboard did not poll {count} times")

    row = browser_page.locator(f'#recent tr[data-job-id="{job["id"]}"]')
    row.locator("td.status.completed").wait_for()
    assert row.inner_text().rstrip().endswith("…")
    assert len(row.inner_text()) < 1000
    after_polls(2)
    assert fetched == []
    browser_page.locator(f'#recent a[data-job-id="{job["id"]}"]').click()
    browser_page.locator("#detail-title", has_text=f"Job {job['id']}").wait_for()
    assert "z" * 50_000 in browser_page.locator("#detail-fields").inner_text()
    after_polls(3)
    assert len(fetched) == 1
