"""Shared fixtures: every async test runs on trio (MockClock, exact virtual time) and asyncio.

On trio the queue's wall clock is derived from a MockClock that jumps ahead whenever every task
is blocked, and SQL runs inline on the event loop's thread (``sql_thread=False``), so a test
that waits an hour of backoff runs in milliseconds and is exact. On asyncio the queue runs as in
production: real time, SQL on its own thread. Tests that need virtual time are marked
``trio_only``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import conveyor
import service_server
from conveyor.service._server import ENGINES

from helpers import POSTGRES_URL, QueueOpener, fresh_schema

EPOCH = 1_800_000_000.0
"""The mock wall clock's reading at the start of a trio test."""

BOTH_DATABASES = frozenset(
    {
        "test_cancel",
        "test_enqueue",
        "test_lifecycle",
        "test_limits",
        "test_persistence",
        "test_reads",
        "test_retention",
        "test_retry",
        "test_running",
        "test_schedules",
        "test_timing",
        "test_tracing",
        "test_workflows",
    }
)
"""The modules of core behaviour, whose tests run on SQLite and on PostgreSQL."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "trio_only: needs trio's MockClock (virtual time)")
    config.addinivalue_line("markers", "sqlite_only: a behaviour of the SQLite file itself")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "anyio_backend" in metafunc.fixturenames:
        backends = (
            ["trio"]
            if metafunc.definition.get_closest_marker("trio_only")
            else [
                "trio",
                "asyncio",
            ]
        )
        metafunc.parametrize("anyio_backend", backends, indirect=True)
    if "database" in metafunc.fixturenames:
        module = metafunc.module.__name__.rpartition(".")[2]
        both = module in BOTH_DATABASES and not metafunc.definition.get_closest_marker(
            "sqlite_only"
        )
        metafunc.parametrize(
            "database", ["sqlite", "postgres"] if both else ["sqlite"], indirect=True
        )


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


@pytest.fixture
def wall_clock(anyio_backend_name: str) -> Callable[[], float]:
    if anyio_backend_name == "trio":
        return lambda: EPOCH + trio.current_time()
    return time.time


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs the test once on each ``conveyor serve --engine`` (see ``running_server``)."""
    service_server.engine = request.param
    yield request.param
    service_server.engine = "asyncio"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def database(request: pytest.FixtureRequest, db_path: Path) -> Iterator[str]:
    """Where this test's queue lives: its SQLite file, or a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        yield str(db_path)
        return
    with fresh_schema("test") as schema:
        yield f"{POSTGRES_URL}?schema={schema}"


@pytest.fixture
def open_test_queue(
    database: str, wall_clock: Callable[[], float], anyio_backend_name: str
) -> QueueOpener:
    """``open_test_queue(registry, **options)``: ``open_queue`` on this test's database
    (file or schema) and clock."""

    def opener(
        registry: conveyor.Registry | None, **options: Any
    ) -> AbstractAsyncContextManager[conveyor.Queue]:
        options.setdefault("clock", wall_clock)
        options.setdefault("sql_thread", anyio_backend_name != "trio")
        return conveyor.open_queue(database, handlers=registry, **options)

    return opener
