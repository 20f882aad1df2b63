"""The examples the README points to run as documented (on virtual time where they wait)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import trio
import trio.testing

import conveyor

EXAMPLES = Path(__file__).parent.parent / "examples"
EPOCH = 1_800_000_000.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_nightly_report_runs_its_chain_on_each_tick(tmp_path: Path) -> None:
    example = load("nightly_report")
    path = tmp_path / "nightly.db"

    async def two_nights() -> None:
        with trio.move_on_after(2 * 3600 + 60):
            await example.main(
                str(path),
                {"every": 3600},
                # Virtual time, exact: the mock clock drives the wall clock, SQL runs inline.
                clock=lambda: EPOCH + trio.current_time(),
                sql_thread=False,
            )

    trio.run(two_nights, clock=trio.testing.MockClock(autojump_threshold=0))

    async def read() -> list[conveyor.Job]:
        async with conveyor.open_queue(path, handlers=example.registry) as queue:
            return await queue.list(limit=100)

    jobs = {job.id: job for job in trio.run(read)}
    sent = [job for job in jobs.values() if job.name == "email_report"]
    assert len(sent) == 2
    assert all(job.result == "sent 399.00 to ops@example.com" for job in sent)
    assert all(job.status is conveyor.JobStatus.COMPLETED for job in jobs.values())
