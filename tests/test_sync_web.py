"""The sync examples (examples/sync): a Flask route and a Django view enqueue through
conveyor's blocking API, and the jobs run."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "sync"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The example's ``jobs`` module on a fresh file, its queue closed afterwards."""
    monkeypatch.setenv("CONVEYOR_DB", str(tmp_path / "signups.db"))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    for name in ("jobs", "flask_app", "django_views"):
        sys.modules.pop(name, None)
    import jobs

    yield jobs
    jobs.close()


def test_a_flask_route_enqueues_and_the_job_runs(jobs: ModuleType) -> None:
    import flask_app

    client = flask_app.app.test_client()
    reply = client.post("/signups", json={"email": "ada@example.com"})
    assert reply.status_code == 202
    job_id = reply.get_json()["job"]
    done = jobs.queue().wait(job_id, timeout=30)
    assert done.result == "welcome mail sent to ada@example.com"
    assert client.get(f"/jobs/{job_id}").get_json()["status"] == "completed"
    assert client.get("/jobs/999").status_code == 404


def test_a_django_view_enqueues_and_the_job_runs(jobs: ModuleType) -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=True, ALLOWED_HOSTS=["testserver"], SECRET_KEY="tests")
    import django_views
    from django.test import RequestFactory

    request = RequestFactory().post(
        "/signups", data=json.dumps({"email": "ada@example.com"}), content_type="application/json"
    )
    reply = django_views.sign_up(request)
    assert reply.status_code == 202
    job_id = json.loads(reply.content)["job"]
    done = jobs.queue().wait(job_id, timeout=30)
    assert done.result == "welcome mail sent to ada@example.com"
    status = django_views.job_status(RequestFactory().get(f"/jobs/{job_id}"), job_id)
    assert json.loads(status.content)["status"] == "completed"
