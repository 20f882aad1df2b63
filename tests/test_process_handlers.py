"""Handlers in worker processes (``process=True``), with real processes and real time.

A cancel, a timeout and the end of shutdown's grace kill the process running the attempt; a
process that dies on its own is a failed attempt naming how; a process past its handler's
``memory_limit`` is killed and its attempt fails naming the limit. The handlers live in
tests/process_handlers.py, a module a worker process can import by name.

These are plain tests that run the queue with ``anyio.run`` (no mock clock: processes take
real time); the core behaviours run on trio and on asyncio.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import conveyor
import conveyor._process
import process_handlers as handlers
from conveyor import Backoff, Event, InvalidArgument, JobStatus
from conveyor._process import parse_memory_limit

pytestmark = pytest.mark.slow

BACKENDS = ["trio", "asyncio"]
QUICK = Backoff(initial=0.05, jitter=0)


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main, backend=backend)


def registry(name: str, function: Callable[..., Any], **options: Any) -> conveyor.Registry:
    registry = conveyor.Registry()
    registry.handler(name, process=True, **options)(function)
    return registry


def written_pid(pid_file: Path) -> int | None:
    text = pid_file.read_text() if pid_file.exists() else ""
    return int(text) if text else None


async def running_pid(pid_file: Path) -> int:
    """The pid a handler wrote to ``pid_file`` once it runs."""
    with anyio.fail_after(20):
        while (pid := written_pid(pid_file)) is None:  # noqa: ASYNC110 (another process writes it)
            await anyio.sleep(0.02)
    return pid


def is_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie that nobody reaped has ended too)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- running -----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_payload_and_result_round_trip_as_json(tmp_path: Path, backend: str) -> None:
    payload = {"text": 'é ☃ \u2028 "quoted"\n', "numbers": [1, 2.5, -3], "nested": {"ok": None}}

    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("echo", handlers.echo)
        ) as queue:
            job = await queue.enqueue("echo", payload)
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.COMPLETED
        assert done.result["payload"] == payload
        assert done.result["pid"] != os.getpid()

    run(backend, main)


def test_current_job_in_a_process_knows_its_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("echo", handlers.echo)
        ) as queue:
            job = await queue.enqueue("echo", [1, "two"])
            done = await queue.wait(job.id, timeout=30)
        assert done.result == {
            "payload": [1, "two"],
            "echoed": [1, "two"],
            "id": job.id,
            "name": "echo",
            "attempt": 1,
            "pid": done.result["pid"],
            "after": {},
        }

    run("trio", main)


def test_dependency_results_reach_a_process(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("echo", handlers.echo)
        ) as queue:
            first = await queue.enqueue("echo", "first")
            second = await queue.enqueue("echo", "second", after=[first.id])
            first_done, second_done = await queue.wait_all([first.id, second.id], timeout=30)
        assert second_done.result["after"] == {str(first.id): first_done.result}

    run("trio", main)


def test_a_worker_process_runs_the_jobs_after_the_first(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("echo", handlers.echo), workers=1
        ) as queue:
            first = await queue.enqueue("echo", 1)
            first_done = await queue.wait(first.id, timeout=30)
            second = await queue.enqueue("echo", 2)
            second_done = await queue.wait(second.id, timeout=30)
        assert first_done.result["pid"] == second_done.result["pid"]

    run("trio", main)


def test_progress_from_a_process_reaches_the_queue(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("progress", handlers.progress)
        ) as queue:
            job = await queue.enqueue("progress", 4)
            with anyio.fail_after(20):
                while True:
                    seen = await queue.get(job.id)
                    assert seen is not None
                    if seen.progress == 1.0:
                        break
                    await anyio.sleep(0.02)
            assert seen.status is JobStatus.RUNNING
            assert seen.progress_message == "step 4"
            assert (await queue.wait(job.id, timeout=30)).result == "done"

    run("trio", main)


def test_fail_raised_in_a_process_fails_the_job_without_retry(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("fail", handlers.fail, backoff=QUICK)
        ) as queue:
            job = await queue.enqueue("fail")
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert done.attempts == 1
        assert "Fail: no use retrying" in (done.error or "")

    run("trio", main)


def test_a_result_that_is_not_json_fails_the_job(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("bad", handlers.unserializable)
        ) as queue:
            job = await queue.enqueue("bad")
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert "is not JSON-serializable" in (done.error or "")

    run("trio", main)


# --- stopping: the process is killed -----------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_kills_a_busy_loop(tmp_path: Path, backend: str) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        spin = registry("spin", handlers.spin, timeout=1, max_attempts=1)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=spin) as queue:
            job = await queue.enqueue("spin", {"pid_file": str(pid_file)})
            pid = await running_pid(pid_file)
            done = await queue.wait(job.id, timeout=30)
            assert done.status is JobStatus.FAILED
            assert done.error == "timed out after 1 s (its worker process was killed)"
            assert is_gone(pid)

    run(backend, main)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory_limit", [None, "1GiB"], ids=["unlimited", "memory-limited"])
def test_a_cancel_kills_the_running_process(
    tmp_path: Path, backend: str, memory_limit: str | None
) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        spin = registry("spin", handlers.spin, memory_limit=memory_limit)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=spin) as queue:
            job = await queue.enqueue("spin", {"pid_file": str(pid_file)})
            pid = await running_pid(pid_file)
            assert await queue.cancel(job.id)
            done = await queue.wait(job.id, timeout=30)
            assert done.status is JobStatus.CANCELLED
            assert is_gone(pid)

    run(backend, main)


def test_the_end_of_shutdown_grace_kills_it_and_the_job_goes_back_to_pending(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    changes: list[conveyor.Change] = []

    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("spin", handlers.spin), shutdown_grace=0.2
        ) as queue:
            queue.subscribe(changes.extend)
            job = await queue.enqueue("spin", {"pid_file": str(pid_file)})
            pid = await running_pid(pid_file)
        assert is_gone(pid)
        last = [change for change in changes if change.job_id == job.id][-1]
        assert (last.event, last.status) == (Event.INTERRUPTED, JobStatus.PENDING)

    run("trio", main)


def test_the_idle_workers_end_with_the_queue(tmp_path: Path) -> None:
    async def main() -> None:
        async with conveyor.open_queue(
            tmp_path / "jobs.db", handlers=registry("echo", handlers.echo)
        ) as queue:
            job = await queue.enqueue("echo")
            pid = (await queue.wait(job.id, timeout=30)).result["pid"]
            assert not is_gone(pid)
        assert is_gone(pid)

    run("trio", main)


ORPHAN = """
import sys, anyio, conveyor, process_handlers
registry = conveyor.Registry()
registry.handler("spin", process=True)(process_handlers.spin)
async def main():
    async with conveyor.open_queue(sys.argv[1], handlers=registry) as queue:
        await queue.enqueue("spin", {"pid_file": sys.argv[2]})
        await anyio.sleep(3600)
anyio.run(main)
"""


def test_a_worker_whose_queue_process_died_exits_by_itself(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    env = {**os.environ, "PYTHONPATH": str(Path(handlers.__file__).parent)}
    queue_process = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(tmp_path / "jobs.db"), str(pid_file)], env=env
    )
    try:
        deadline = time.monotonic() + 30
        while written_pid(pid_file) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        worker = written_pid(pid_file)
        assert worker is not None
    finally:
        queue_process.send_signal(signal.SIGKILL)
        queue_process.wait()
    deadline = time.monotonic() + 5
    while not is_gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert is_gone(worker)


# --- dying on its own ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_process_exiting_on_its_own_is_a_failed_attempt_that_is_retried(
    tmp_path: Path, backend: str
) -> None:
    async def main() -> None:
        exits = registry("exit", handlers.exit_3, max_attempts=2, backoff=QUICK)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=exits) as queue:
            job = await queue.enqueue("exit", {})
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert done.attempts == 2
        assert "exited with code 3" in (done.error or "")

    run(backend, main)


def test_a_segfault_is_a_failed_attempt_naming_the_signal(tmp_path: Path) -> None:
    async def main() -> None:
        crashes = registry("crash", handlers.segfault, max_attempts=2, backoff=QUICK)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=crashes) as queue:
            job = await queue.enqueue("crash", {})
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert done.attempts == 2
        assert "killed by SIGSEGV" in (done.error or "")

    run("trio", main)


def test_a_new_process_replaces_one_that_died(tmp_path: Path) -> None:
    async def main() -> None:
        registry = conveyor.Registry()
        registry.handler("exit", process=True, max_attempts=1)(handlers.exit_3)
        registry.handler("echo", process=True)(handlers.echo)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=registry, workers=1) as q:
            died = await q.wait((await q.enqueue("exit", {})).id, timeout=30)
            after = await q.wait((await q.enqueue("echo")).id, timeout=30)
        assert died.status is JobStatus.FAILED
        assert after.status is JobStatus.COMPLETED

    run("trio", main)


# --- memory_limit ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_allocating_past_memory_limit_fails_naming_the_limit(tmp_path: Path, backend: str) -> None:
    pid_file = tmp_path / "pid"

    async def main() -> None:
        hog = registry("hog", handlers.hog, memory_limit="128MiB", max_attempts=1)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=hog) as queue:
            # It holds its memory for a minute: only the watcher, killing it, ends it in time.
            job = await queue.enqueue("hog", {"mib": 512, "hold": 60, "pid_file": str(pid_file)})
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert "memory_limit of 128.0 MiB: it reached" in (done.error or "")
        assert is_gone(int(pid_file.read_text()))

    run(backend, main)


@pytest.mark.skipif(sys.platform != "linux", reason="the peak is read from /proc")
def test_a_spike_past_memory_limit_freed_before_a_look_still_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No look while the job runs: only the peak read at its end can see the spike.
    monkeypatch.setattr(conveyor._process, "MEMORY_CHECK_INTERVAL", 3600.0)

    async def main() -> None:
        hog = registry("hog", handlers.hog, memory_limit="128MiB", max_attempts=1)
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=hog) as queue:
            job = await queue.enqueue("hog", {"mib": 256, "hold": 0, "free": True})
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.FAILED
        assert "memory_limit of 128.0 MiB" in (done.error or "")

    run("trio", main)


def test_a_job_within_its_memory_limit_completes(tmp_path: Path) -> None:
    async def main() -> None:
        hog = registry("hog", handlers.hog, memory_limit="256MiB")
        async with conveyor.open_queue(tmp_path / "jobs.db", handlers=hog) as queue:
            job = await queue.enqueue("hog", {"mib": 32, "hold": 0})
            done = await queue.wait(job.id, timeout=30)
        assert done.status is JobStatus.COMPLETED

    run("trio", main)


# --- registration ----------------------------------------------------------------------------
def make_closure() -> Callable[[object], None]:
    def inner(payload: object) -> None:
        return None

    return inner


async def async_handler(payload: object) -> None:
    return None


@pytest.mark.parametrize(
    ("function", "why"),
    [
        (lambda payload: payload, "lambda"),
        (make_closure(), "defined inside a function"),
        (async_handler, "is async"),
        (functools.partial(handlers.echo), "not a function"),
    ],
    ids=["lambda", "closure", "async", "partial"],
)
def test_a_handler_a_process_cannot_import_is_refused(function: Any, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        conveyor.Registry().handler("h", process=True)(function)


def test_memory_limit_without_process_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="memory_limit needs process=True"):
        conveyor.Registry().handler("h", memory_limit="512MiB")


def test_process_must_be_a_bool() -> None:
    with pytest.raises(InvalidArgument, match="process must be True or False"):
        conveyor.Registry().handler("h", process=1)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512MiB", 512 * 2**20),
        ("1GiB", 2**30),
        ("200MB", 200 * 10**6),
        ("64 MiB", 64 * 2**20),
        (2**30, 2**30),
    ],
)
def test_memory_limit_sizes(value: object, size: int) -> None:
    assert parse_memory_limit(value) == size


@pytest.mark.parametrize(
    "value",
    ["512", "512mb", "1.5GiB", "-1GiB", "512 MiB ", "lots", "", "1e9", 1.5, True, None, 512],
)
def test_memory_limit_refuses_anything_else_naming_it(value: object) -> None:
    with pytest.raises(InvalidArgument, match="memory_limit"):
        parse_memory_limit(value)
