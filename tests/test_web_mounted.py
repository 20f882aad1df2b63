"""examples/web/mounted.py as its docstring runs it (``uvicorn mounted:app``): conveyor's own
API and dashboard mounted under ``/queue/`` in a Starlette app, beside the app's routes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from test_service_dashboard import ARGS, CHROMIUM

from helpers import free_port, wait_until_answering

WEB = Path(__file__).parent.parent / "examples" / "web"

pytestmark = pytest.mark.slow


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "CONVEYOR_DB": str(tmp_path / "signups.db")}
    logs = tmp_path / "uvicorn.err"
    with logs.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "mounted:app", "--port", str(port)],
            cwd=WEB,
            env=env,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/queue/healthz", server, logs)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
    # uvicorn shuts down gracefully, then ends by the signal it was sent.
    assert server.returncode in (0, -signal.SIGTERM), logs.read_text()
    assert "Application shutdown complete" in logs.read_text()


def test_a_job_enqueued_by_the_apps_route_is_followed_through_the_mounted_api(
    app_url: str,
) -> None:
    reply = httpx.post(f"{app_url}/signups", json={"email": "ada@example.com"})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    job = httpx.get(f"{app_url}/queue/jobs/{job_id}/wait", params={"timeout": 30}).json()
    assert job["status"] == "completed", job
    assert job["result"] == "welcome mail sent to ada@example.com"


def test_the_mounted_api_enqueues_like_conveyor_serve(app_url: str) -> None:
    reply = httpx.post(f"{app_url}/queue/jobs", json={"name": "send_welcome", "payload": {}})
    assert reply.status_code == 201, reply.text
    assert httpx.get(f"{app_url}/queue/stats").json()["by_name"]["send_welcome"]


def test_the_mounted_dashboard_loads_every_file_its_page_names(app_url: str) -> None:
    page = httpx.get(f"{app_url}/queue/", follow_redirects=True)
    assert page.status_code == 200
    files = re.findall(r'(?:href|src)="([^"#]+)"', page.text)
    assert files
    for name in files:
        address = urllib.parse.urljoin(str(page.url), name)
        assert address.startswith(f"{app_url}/queue/static/"), address
        assert httpx.get(address).status_code == 200, address


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"no Chromium at {CHROMIUM} (install Debian's chromium; .ci/run does)",
)
def test_the_mounted_dashboard_shows_a_job_of_the_app_in_a_browser(app_url: str) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    job_id = httpx.post(f"{app_url}/signups", json={"email": "grace@example.com"}).json()["id"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15_000)
            page.goto(f"{app_url}/queue/")
            row = page.locator(f'#recent tr[data-job-id="{job_id}"]')
            row.locator("td.status.completed").wait_for()
            assert "grace@example.com" in row.inner_text()
        finally:
            browser.close()
