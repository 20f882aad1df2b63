"""The dashboard's schedules panel and workflow graph, in a real browser (headless Chromium,
Debian's, driven by Playwright) against a real ``conveyor serve``.

Skipped, saying why, where /usr/bin/chromium is missing (.ci/run installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service_server import Server, running_server
from test_service_dashboard import ARGS, CHROMIUM, api_job, eventually

NONE = "\N{EN DASH}"
"""What the dashboard shows for a time or job that is not there."""

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
def browser(server: Server) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    page.goto(url)
    return page


def enqueue_workflow(server: Server, steps: list[dict[str, Any]]) -> list[int]:
    response = httpx.post(f"{server.url}/workflows", json={"steps": steps})
    assert response.status_code == 201, response.text
    return [job["id"] for job in response.json()["jobs"]]


def node(page: Any, job_id: int, status: str) -> Any:
    return page.locator(f'#workflow-graph .node[data-job-id="{job_id}"][data-status="{status}"]')


def test_the_schedules_panel_shows_a_schedules_cadence_and_next_run(
    browser: Any, server: Server
) -> None:
    httpx.post(
        f"{server.url}/schedules",
        json={"key": "nightly", "name": "hello", "cron": "0 3 * * *", "timezone": "Europe/Paris"},
    ).raise_for_status()
    page = open_page(browser, f"{server.url}/")
    row = page.locator('#schedules tr[data-schedule-key="nightly"]')
    row.wait_for()
    cells = row.locator("td").all_inner_texts()
    assert cells[:3] == ["nightly", "hello", "cron 0 3 * * * (Europe/Paris)"]
    assert cells[3] != NONE  # the next run
    assert cells[4:] == [NONE, NONE]  # no tick yet: no last run, no last job


def test_the_schedules_panel_shows_the_last_job_and_its_status(
    browser: Any, server: Server
) -> None:
    httpx.post(
        f"{server.url}/schedules", json={"key": "often", "name": "hello", "every": 1}
    ).raise_for_status()
    page = open_page(browser, f"{server.url}/")
    row = page.locator('#schedules tr[data-schedule-key="often"]')
    row.locator("td.last-job .status.completed").wait_for()
    assert "every 1s" in row.inner_text()
    job_id = int(row.locator("td.last-job a.job").first.inner_text())
    assert api_job(server, job_id)["schedule_key"] == "often"


def test_a_jobs_detail_draws_its_workflow_coloured_by_status(browser: Any, server: Server) -> None:
    # fail_once fails its first run: the step after it is cancelled, the other branch runs.
    first, failing, after_failing, other = enqueue_workflow(
        server,
        [
            {"name": "hello"},
            {"name": "fail_once", "after_steps": [0]},
            {"name": "hello", "after_steps": [1]},
            {"name": "hello", "after_steps": [0]},
        ],
    )
    eventually(lambda: api_job(server, after_failing)["status"] == "cancelled")
    eventually(lambda: api_job(server, other)["status"] == "completed")
    page = open_page(browser, f"{server.url}/#/jobs/{failing}")
    node(page, first, "completed").wait_for()
    node(page, failing, "failed").wait_for()
    node(page, after_failing, "cancelled").wait_for()
    node(page, other, "completed").wait_for()
    assert "root" in (node(page, failing, "failed").get_attribute("class") or "")
    edges = page.locator("#workflow-graph .edge")
    assert sorted(
        (int(edge.get_attribute("data-from")), int(edge.get_attribute("data-to")))
        for edge in edges.all()
    ) == sorted([(first, failing), (failing, after_failing), (first, other)])


def test_the_workflow_graph_recolours_as_its_steps_run(browser: Any, server: Server) -> None:
    first, failing, after_failing = enqueue_workflow(
        server,
        [
            {"name": "hello"},
            {"name": "fail_once", "after_steps": [0]},
            {"name": "hello", "after_steps": [1]},
        ],
    )
    eventually(lambda: api_job(server, after_failing)["status"] == "cancelled")
    page = open_page(browser, f"{server.url}/#/jobs/{first}")
    node(page, after_failing, "cancelled").wait_for()
    # Requeuing the failed step brings the cancelled one back; it then completes.
    httpx.post(f"{server.url}/jobs/{failing}/requeue").raise_for_status()
    node(page, failing, "completed").wait_for()
    node(page, after_failing, "completed").wait_for()


def test_a_step_of_the_graph_opens_that_jobs_detail(browser: Any, server: Server) -> None:
    first, second = enqueue_workflow(
        server, [{"name": "hello"}, {"name": "hello", "after_steps": [0]}]
    )
    eventually(lambda: api_job(server, second)["status"] == "completed")
    page = open_page(browser, f"{server.url}/#/jobs/{first}")
    node(page, second, "completed").click()
    page.locator("#detail-title", has_text=f"Job {second}").wait_for()
    page.locator(f'#workflow-graph .node.root[data-job-id="{second}"]').wait_for()


def test_a_job_outside_any_workflow_shows_no_graph(browser: Any, server: Server) -> None:
    job = httpx.post(f"{server.url}/jobs", json={"name": "hello"}).json()
    page = open_page(browser, f"{server.url}/#/jobs/{job['id']}")
    page.locator(f'#workflow[data-job-id="{job["id"]}"]').wait_for(state="attached")
    assert page.locator("#workflow").is_hidden()
    assert page.locator("#workflow-graph .node").count() == 0
