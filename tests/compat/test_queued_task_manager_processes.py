"""QueuedTaskManager across processes on one file: a manager runs only the coroutines it
started, and the tasks of a process that died fail when a manager next starts. Real processes,
so the real clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import attrs
import pytest

import conveyor
from conveyor.compat import CANNOT_RESUME, QueuedTaskManager

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """trio or asyncio on the real clock: the other process lives in real time."""
    backend: str = request.param
    return backend


@attrs.frozen
class Run:
    run_id: str


CHILD = """
import sys, anyio, attrs
from conveyor.compat import QueuedTaskManager

@attrs.frozen
class Run:
    run_id: str

async def forever():
    await anyio.sleep_forever()

async def main(db, ready, start_one):
    async with QueuedTaskManager(db) as manager:
        if start_one:
            manager.start_task(Run("child-run"), forever())
            while (await manager.get_task_status("child-run"))["status"] != "running":
                await anyio.sleep(0.05)
        open(ready, "w").close()
        await anyio.sleep(120)

anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] == "start")
"""


@contextmanager
def child_manager(db: Path, *, start_one: bool) -> Iterator[subprocess.Popen[bytes]]:
    """Another process with a manager open on ``db`` (running one endless coroutine if
    ``start_one``), once it is ready; killed at the end."""
    ready = db.parent / "child-ready"
    command = [sys.executable, "-c", textwrap.dedent(CHILD), str(db), str(ready)]
    process = subprocess.Popen([*command, "start" if start_one else "idle"])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, "the child process ended"
            assert time.monotonic() < deadline, "the child process did not start"
            time.sleep(0.05)
        yield process
    finally:
        process.kill()
        process.wait()


async def test_a_manager_in_another_process_never_claims_this_ones_tasks(db_path: Path) -> None:
    ran: list[str] = []

    async def work(name: str) -> str:
        ran.append(name)
        await anyio.sleep(0.01)
        return name

    with child_manager(db_path, start_one=False):
        async with QueuedTaskManager(db_path) as manager:
            for n in range(20):
                manager.start_task(Run(f"run-{n}"), work(f"run-{n}"))
            await manager.wait_all()
            statuses = [await manager.get_task_status(f"run-{n}") for n in range(20)]
    assert len(ran) == 20
    assert [s["status"] for s in statuses if s] == ["completed"] * 20


async def test_a_task_of_a_killed_process_fails_when_a_manager_next_starts(
    db_path: Path,
) -> None:
    with child_manager(db_path, start_one=True) as child:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    async with QueuedTaskManager(db_path) as manager:
        status = await manager.get_task_status("child-run")
        assert status is not None
        job = await manager._started()[0].list()
        done = await manager._started()[0].wait(job[0].id, timeout=60)
    assert done.status is conveyor.JobStatus.FAILED
    assert CANNOT_RESUME in (done.error or "")
    assert list(db_path.parent.glob("*.in-process-*.lock")) == []
