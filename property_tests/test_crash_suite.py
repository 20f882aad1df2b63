"""kill -9 at random moments under load loses nothing and re-runs only what was running."""

from __future__ import annotations

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
