"""kill -9 at random moments under load loses nothing and re-runs only what was running."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import crash_suite


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_kill_cycles_under_load_lose_nothing_and_rerun_only_running_jobs(
    tmp_path: Path,
) -> None:
    report = crash_suite.run(cycles=10, directory=tmp_path, seed=10)
    assert report.acknowledged, "the producers never got an enqueue acknowledged"
    assert not report.problems, report.summary()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_cycles_with_a_disk_that_fills_up_lose_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the disk-full phase mounts a tmpfs, which needs root")
    report = crash_suite.run(cycles=9, directory=tmp_path, seed=11, disk_full=True)
    assert report.squeezes, "no cycle filled the disk"
    assert report.acknowledged, "the producers never got an enqueue acknowledged"
    assert not report.problems, report.summary()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_cycles_with_three_processes_on_the_file_lose_nothing(tmp_path: Path) -> None:
    """Each cycle kills one of two worker processes while the other and the producer run on
    (the survivors take over its jobs), then the rest."""
    report = crash_suite.run(cycles=6, directory=tmp_path, seed=12, processes=3)
    assert report.workers_killed == 6
    assert report.acknowledged, "the producers never got an enqueue acknowledged"
    assert not report.problems, report.summary()


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """The URL of a fresh schema on the tests' PostgreSQL, dropped afterwards."""
    from postgres_schemas import (
        POSTGRES_URL,
        drop_schema,
        fresh_schema,
        postgres_unreachable,
        schema_url,
    )

    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)
    url = schema_url(POSTGRES_URL, fresh_schema("crash"))
    yield url
    drop_schema(url)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_cycles_on_postgres_lose_nothing_and_rerun_only_running_jobs(
    tmp_path: Path, postgres_schema: str
) -> None:
    """The queue in a schema on PostgreSQL: a killed process's jobs wait for its lease to
    lapse, and are taken over by the next cycle's process or the drain. (A process takes about
    half a second to open the queue there: this seed kills most of them well after that.)"""
    report = crash_suite.run(cycles=8, directory=tmp_path, seed=231, postgres=postgres_schema)
    assert report.database == postgres_schema
    assert report.acknowledged, "the producers never got an enqueue acknowledged"
    assert report.running_at_a_kill, "no job was running at a kill"
    assert not report.problems, report.summary()
