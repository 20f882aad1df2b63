"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped, saying why, where /usr/bin/chromium is missing (.ci/run installs it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_server import Server, running_server

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (install Debian's chromium; .ci/run does)",
    ),
]


@pytest.fixture
def server(db_path: Path, engine: str) -> Iterator[Server]:
    with running_server(db_path) as server:
        yield server


@pytest.fixture
def page(server: Server) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            page.goto(f"{server.url}/")
            yield page
        finally:
            browser.close()


def api_job(server: Server, job_id: int) -> dict[str, Any]:
    job: dict[str, Any] = httpx.get(f"{server.url}/jobs/{job_id}").json()
    return job


def eventually(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        time.sleep(0.1)


def test_a_job_enqueued_over_the_api_appears_and_completes(page: Any, server: Server) -> None:
    job = httpx.post(f"{server.url}/jobs", json={"name": "hello", "payload": "browser"}).json()
    row = page.locator(f'#recent tr[data-job-id="{job["id"]}"]')
    row.locator("td.status.completed").wait_for()
    assert "browser" in row.inner_text()
    page.locator("#count-completed", has_text="1").wait_for()
    page.locator(f'#recent a[data-job-id="{job["id"]}"]').click()
    page.locator("#detail-title", has_text=f"Job {job['id']}").wait_for()
    assert '"hello": "browser"' in page.locator("#detail-fields").inner_text()


def test_requeue_and_cancel_buttons_act_on_the_queue(page: Any, server: Server) -> None:
    failing = httpx.post(f"{server.url}/jobs", json={"name": "fail_once"}).json()
    later = httpx.post(f"{server.url}/jobs", json={"name": "hello", "delay": 3600}).json()

    requeue = page.locator(f'#failed button[data-action="requeue"][data-job-id="{failing["id"]}"]')
    requeue.click()
    eventually(lambda: api_job(server, failing["id"])["status"] == "completed")

    cancel = page.locator(f'#pending button[data-action="cancel"][data-job-id="{later["id"]}"]')
    cancel.click()
    eventually(lambda: api_job(server, later["id"])["status"] == "cancelled")
    page.locator("#count-cancelled", has_text="1").wait_for()


def test_the_handlers_panel_pauses_and_resumes_a_handler(page: Any, server: Server) -> None:
    row = page.locator('#handlers tr[data-handler="hello"]')
    row.locator('button[data-action="pause"]').click()
    page.locator('#handlers tr[data-handler="hello"][data-paused="true"]').wait_for()
    job = httpx.post(f"{server.url}/jobs", json={"name": "hello"}).json()
    assert api_job(server, job["id"])["status"] == "pending"  # paused: not started
    row.locator('button[data-action="resume"]').click()
    eventually(lambda: api_job(server, job["id"])["status"] == "completed")
    page.locator('#handlers tr[data-handler="hello"][data-paused="false"]').wait_for()


def test_the_handlers_panel_shows_each_handlers_counts(page: Any, server: Server) -> None:
    httpx.post(f"{server.url}/jobs", json={"name": "sleepy", "delay": 3600}).raise_for_status()
    row = page.locator('#handlers tr[data-handler="sleepy"]')
    row.locator("td", has_text="1").first.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:2] == ["sleepy", "active"]
    assert cells[3:6] == ["1", "0", "0"]  # pending, running, failed
