"""What the two engines of ``conveyor serve`` (uvicorn on asyncio, hypercorn on trio) add to
the app they serve alike: the server's own behaviour, on a real process."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.parse
from pathlib import Path

import httpx

from service_server import Server, both_engines, running_server


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
        record = first_access_record(server, "/jobs/progress", within=30)
        while record.get("http_status") == 200:  # the first, answered at once
            records = access_records(server, "/jobs/progress")
            if len(records) > 1:
                record = records[1]
                break
            time.sleep(0.05)
    assert record["http_status"] == 499


@both_engines
def test_serve_announces_the_engine_it_runs(db_path: Path, engine: str) -> None:
    with running_server(db_path) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert re.search(rf"\b{engine}\b", server.announcement)
