"""A client generated from the API's OpenAPI document by ``openapi-python-client``, used
against a real ``conveyor serve`` with a token: the schema is good enough to drive the
service."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from service_server import Server, running_server

TOKEN = "client-token"
GENERATOR = str(Path(sys.executable).parent / "openapi-python-client")

pytestmark = pytest.mark.slow


@pytest.fixture
def server(db_path: Path) -> Iterator[Server]:
    with running_server(db_path, "--token", TOKEN) as server:
        yield server


@pytest.fixture
def generated(server: Server, tmp_path: Path) -> Iterator[ModuleType]:
    """The generated package, ``conveyor_client``, imported."""
    schema = tmp_path / "openapi.json"
    answer = httpx.get(f"{server.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    schema.write_bytes(answer.raise_for_status().content)
    config = tmp_path / "config.yml"
    config.write_text("post_hooks: []\n")  # no formatter runs on the generated code
    output = ["--meta", "none", "--output-path", str(tmp_path / "conveyor_client")]
    subprocess.run(
        [GENERATOR, "generate", "--path", str(schema), "--config", str(config), *output],
        check=True,
        timeout=120,
    )
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("conveyor_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.startswith("conveyor_client")]:
            del sys.modules[name]


def api(generated: ModuleType, operation: str) -> ModuleType:
    return importlib.import_module(f"conveyor_client.api.jobs.{operation}")


@pytest.fixture
def client(generated: ModuleType, server: Server) -> Iterator[object]:
    """The generated client, with the token."""
    with generated.AuthenticatedClient(base_url=server.url, token=TOKEN) as client:
        yield client


def test_the_generated_operations_carry_the_apis_names(generated: ModuleType) -> None:
    for operation in ("enqueue_job", "get_job", "wait_job", "cancel_job", "list_jobs"):
        assert hasattr(api(generated, operation), "sync_detailed"), operation


def test_a_generated_client_enqueues_and_waits_for_a_job(
    generated: ModuleType, client: object
) -> None:
    models = importlib.import_module("conveyor_client.models")
    job = api(generated, "enqueue_job").sync(
        client=client, body=models.JobIn(name="hello", payload={"who": "client"})
    )
    assert isinstance(job, models.JobOut)
    done = api(generated, "wait_job").sync(job.id, client=client, timeout=30)
    assert isinstance(done, models.JobOut)
    assert done.status == models.JobStatus.COMPLETED
    assert done.result == {"hello": {"who": "client"}}


def test_a_generated_client_cancels_a_job(generated: ModuleType, client: object) -> None:
    models = importlib.import_module("conveyor_client.models")
    job = api(generated, "enqueue_job").sync(
        client=client, body=models.JobIn(name="hello", delay="1h")
    )
    cancelled = api(generated, "cancel_job").sync(job.id, client=client)
    assert isinstance(cancelled, models.JobOut)
    assert cancelled.status == models.JobStatus.CANCELLED


def test_a_generated_client_reads_a_missing_job_as_a_404_problem(
    generated: ModuleType, client: object
) -> None:
    models = importlib.import_module("conveyor_client.models")
    answer = api(generated, "get_job").sync_detailed(424242, client=client)
    assert answer.status_code == 404
    assert isinstance(answer.parsed, models.ProblemOut)
    assert answer.parsed.type_ == "urn:conveyor:problem:not-found"


def test_a_generated_client_without_the_token_is_refused(
    generated: ModuleType, server: Server
) -> None:
    models = importlib.import_module("conveyor_client.models")
    with generated.Client(base_url=server.url) as anonymous:
        answer = api(generated, "get_job").sync_detailed(1, client=anonymous)
    assert answer.status_code == 401
    assert isinstance(answer.parsed, models.ProblemOut)
