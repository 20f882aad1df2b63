"""What the two engines of ``conveyor serve`` (uvicorn on asyncio, hypercorn on trio) add to
the app they serve alike: the server's own behaviour, on a real process."""

from __future__ import annotations

import gc
import json
import re
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
import trio

import conveyor
from conveyor.service import ServeOptions, serve
from conveyor.service._server import ENGINES, Engine, Running, run
from service_server import CONVEYOR, TESTS, Server, both_engines, running_server


def access_records(server: Server, path: str) -> list[dict[str, object]]:
    records = []
    for line in list(server.stderr):
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("http_path") == path:
                records.append(record)
    return records


def first_access_record(server: Server, path: str, within: float) -> dict[str, object]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = access_records(server, path)
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no request of {path} was logged: {''.join(server.stderr)}")


def abandon_get(url: str, target: str) -> None:
    """Send a GET and close the connection without reading the answer."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    assert parts.port is not None
    with socket.create_connection((parts.hostname, parts.port)) as connection:
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        time.sleep(0.5)  # the server has the request before the client goes


@both_engines
def test_a_long_poll_ends_when_its_client_disconnects(db_path: Path) -> None:
    with running_server(db_path, "--log-format", "json") as server:
        created = httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": "1h"})
        job_id = created.json()["id"]
        path = f"/jobs/{job_id}/wait"
        abandon_get(server.url, f"{path}?timeout=60")
        record = first_access_record(server, path, within=30)
    assert record["http_status"] == 499
    assert isinstance(record["http_duration_ms"], float)
    assert record["http_duration_ms"] < 30_000


@both_engines
def test_a_progress_long_poll_ends_when_its_client_disconnects(db_path: Path) -> None:
    with running_server(db_path, "--log-format", "json") as server:
        created = httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": "1h"})
        job_id = created.json()["id"]
        state = httpx.get(f"{server.url}/jobs/progress", params={"ids": job_id}).json()["state"]
        query = urllib.parse.urlencode({"ids": job_id, "since": state, "timeout": 60})
        abandon_get(server.url, f"/jobs/progress?{query}")
        deadline = time.monotonic() + 30
        while len(access_records(server, "/jobs/progress")) < 2:  # the first answered at once
            assert time.monotonic() < deadline, "".join(server.stderr)
            time.sleep(0.05)
    assert access_records(server, "/jobs/progress")[1]["http_status"] == 499


@both_engines
def test_jobs_run_on_the_engines_event_loop(db_path: Path, engine: str) -> None:
    with running_server(db_path) as server:
        job = httpx.post(f"{server.url}/jobs", json={"name": "event_loop"}).json()
        done = httpx.get(f"{server.url}/jobs/{job['id']}/wait", params={"timeout": 30}).json()
    assert done["result"] == engine
    assert re.search(rf"\b{engine}\b", server.announcement)


@both_engines
def test_the_servers_own_records_follow_the_log_format(db_path: Path) -> None:
    with running_server(db_path, "--log-format", "json") as server:
        parts = urllib.parse.urlsplit(server.url)
        assert parts.hostname is not None
        assert parts.port is not None
        with socket.create_connection((parts.hostname, parts.port)) as connection:
            connection.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            connection.recv(4096)
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    lines = server.stderr_after_exit().splitlines()
    records = [line for line in lines if line.startswith("{")]
    assert records
    others = [line for line in lines if not line.startswith("{")]
    assert all("shutting down" in line for line in others), others


def test_serve_refuses_to_run_on_another_engines_event_loop(db_path: Path) -> None:
    options = ServeOptions(db=str(db_path), engine="asyncio")
    with pytest.raises(ValueError, match=r"serve\(\) runs on trio, but ServeOptions.engine"):
        trio.run(serve, options, conveyor.Registry())


@pytest.mark.parametrize("engine", ENGINES)
def test_a_worker_runs_its_jobs_on_the_engine_it_is_given(db_path: Path, engine: str) -> None:
    handlers = ["--handlers", "service_handlers:registry"]
    worker = subprocess.Popen(
        [CONVEYOR, "worker", "--db", str(db_path), *handlers, "--engine", engine],
        cwd=TESTS,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        started = worker.stderr.readline()
        assert f"workers on {engine}" in started, started

        async def enqueue_and_wait() -> object:
            async with conveyor.open_queue(db_path) as queue:
                job = await queue.enqueue("event_loop")
                return (await queue.wait(job.id, timeout=30)).result

        assert trio.run(enqueue_and_wait) == engine
    finally:
        worker.terminate()
        worker.communicate(timeout=30)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_program_serving_by_run_keeps_its_collectors_settings(
    db_path: Path, engine: Engine
) -> None:
    seen: list[tuple[tuple[int, int, int], int]] = []

    async def note_and_stop(running: Running) -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        running.stop()

    before = (gc.get_threshold(), gc.get_freeze_count())
    run(ServeOptions(db=str(db_path), port=0, engine=engine), conveyor.Registry(), note_and_stop)
    assert seen == [before]
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
