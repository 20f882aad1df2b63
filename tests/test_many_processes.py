"""Many processes on one file: producers without handlers, worker processes, leases, fencing.

The worker processes are real (``conveyor worker`` on the handlers of ``owner_handlers.py``);
the producer is the test's own queue, opened without handlers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import attrs
import httpx
import pytest

import conveyor
from conveyor import JobStatus

from helpers import free_port, wait_until_answering

pytestmark = [pytest.mark.anyio, pytest.mark.trio_only, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def anyio_backend() -> str:
    """trio on the real clock: the other processes live in real time."""
    return "trio"


TESTS = Path(__file__).parent


@attrs.define
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.log.read_text()


def conveyor_worker(db: Path, handlers: str) -> list[str]:
    """The command line of ``conveyor worker`` on ``db`` running ``handlers``."""
    return [
        sys.executable,
        "-c",
        "import conveyor.service; conveyor.service.main()",
        "worker",
        "--db",
        str(db),
        "--handlers",
        handlers,
    ]


@contextmanager
def worker_process(db: Path, *, workers: int = 4, heartbeat: float = 2.0) -> Iterator[Worker]:
    """``conveyor worker`` on ``db`` running ``owner_handlers:registry``, ready when yielded
    (its stderr goes to a file beside ``db``); stopped with SIGTERM at the end."""
    log = db.parent / f"worker-{time.monotonic_ns()}.err"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                *conveyor_worker(db, "owner_handlers:registry"),
                "--workers",
                str(workers),
                "--shutdown-grace",
                "1",
                "--heartbeat",
                str(heartbeat),
            ],
            stderr=stderr,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
            cwd=TESTS,
        )
    worker = Worker(process, log)
    try:
        deadline = time.monotonic() + 60
        while "conveyor: worker on" not in worker.stderr():
            assert process.poll() is None, worker.stderr()
            assert time.monotonic() < deadline, worker.stderr()
            time.sleep(0.01)
        yield worker
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def ran(directory: Path) -> dict[int, Counter[tuple[int, int]]]:
    """Each worker process's attempts, by process id: how often each (job, attempt) ran."""
    runs: dict[int, Counter[tuple[int, int]]] = {}
    for log in directory.glob("ran-*.log"):
        pid = int(log.stem.removeprefix("ran-"))
        runs[pid] = Counter(tuple(map(int, line.split())) for line in log.read_text().splitlines())  # type: ignore[misc]
    return runs


async def an_attempt_ran(directory: Path) -> bool:
    return bool(ran(directory))


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll ``condition`` (what another process does, which nothing here is told of)."""
    with anyio.fail_after(timeout):
        while not await condition():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_worker_process_runs_what_a_queue_here_enqueues(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with worker_process(db):
        async with conveyor.open_queue(db) as producer:
            job = await producer.enqueue("record", {"dir": str(tmp_path)})
            done = await producer.wait(job.id, timeout=60)
    assert done.status is JobStatus.COMPLETED
    (pid,) = ran(tmp_path)
    assert done.result == {"pid": pid}


async def test_two_workers_and_a_producer_run_every_job_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with worker_process(db), worker_process(db):
        async with conveyor.open_queue(db) as producer:
            specs = [conveyor.JobSpec("record", {"dir": str(tmp_path)}) for _ in range(10_000)]
            jobs = await producer.enqueue_many(specs)
            done = await producer.wait_all([job.id for job in jobs], timeout=240)
    assert {job.status for job in done} == {JobStatus.COMPLETED}
    runs = ran(tmp_path)
    assert len(runs) == 2, f"one worker ran everything: {runs.keys()}"
    attempts = Counter[tuple[int, int]]()
    for counted in runs.values():
        attempts.update(counted)
    assert attempts == Counter({(job.id, 1): 1 for job in jobs})
    per_process = {pid: sum(counted.values()) for pid, counted in runs.items()}
    print(f"jobs per worker process: {per_process}")


async def test_a_producer_cancels_a_job_running_in_a_worker_process(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with worker_process(db):
        async with conveyor.open_queue(db) as producer:
            job = await producer.enqueue("record", {"dir": str(tmp_path), "seconds": 600})

            async def running() -> bool:
                found = await producer.get(job.id)
                return found is not None and found.status is JobStatus.RUNNING

            await wait_until(running)
            assert await producer.cancel(job.id)
            done = await producer.wait(job.id, timeout=60)
    assert done.status is JobStatus.CANCELLED
    assert done.error == "cancelled while running"


async def test_a_killed_workers_running_jobs_are_taken_over_by_the_other(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    with worker_process(db, heartbeat=0.5) as doomed:
        async with conveyor.open_queue(db, heartbeat=0.5) as producer:
            specs = [
                conveyor.JobSpec("record", {"dir": str(tmp_path), "seconds": 0.2})
                for _ in range(40)
            ]
            jobs = await producer.enqueue_many(specs)

            await wait_until(lambda: an_attempt_ran(tmp_path))
            with worker_process(db, heartbeat=0.5):
                doomed.process.kill()
                doomed.process.wait()
                killed = time.monotonic()
                done = await producer.wait_all([job.id for job in jobs], timeout=120)
                print(f"all done {time.monotonic() - killed:.2f} s after the kill")
    assert {job.status for job in done} == {JobStatus.COMPLETED}
    interrupted = [job for job in done if job.attempts == 2]
    assert interrupted, "the killed worker was running nothing"
    assert all("was interrupted" in (job.error or "") for job in interrupted)
    survivor = next(pid for pid in ran(tmp_path) if pid != doomed.pid)
    assert all(job.result == {"pid": survivor} for job in interrupted)


async def test_a_stopped_workers_late_outcome_is_refused_after_a_takeover(
    tmp_path: Path,
) -> None:
    db = tmp_path / "jobs.db"
    with worker_process(db, heartbeat=0.5) as stopped:
        async with conveyor.open_queue(db, heartbeat=0.5) as producer:
            job = await producer.enqueue("record", {"dir": str(tmp_path), "seconds": 2})

            await wait_until(lambda: an_attempt_ran(tmp_path))
            os.kill(stopped.pid, signal.SIGSTOP)
            with worker_process(db, heartbeat=0.5) as rescuer:
                done = await producer.wait(job.id, timeout=120)
                os.kill(stopped.pid, signal.SIGCONT)
                # The stopped worker wakes, its attempt ends, and its outcome is refused.
                await anyio.sleep(3)
                after = await producer.get(job.id)
            stopped.process.terminate()
            stopped.process.wait(timeout=30)
            log = stopped.stderr()
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 2
    assert done.result == {"pid": rescuer.pid}
    assert after == done
    assert "lost its lease" in log
    assert f"outcome (completed) of job {job.id} attempt 1" in log  # refused as stale


def test_the_web_example_enqueues_from_two_uvicorn_workers_into_a_worker_process(
    tmp_path: Path,
) -> None:
    """examples/web as its docstring runs it: ``uvicorn app:app --workers 2`` beside
    ``conveyor worker``, on one file."""
    web = TESTS.parent / "examples" / "web"
    port = free_port()
    env = {**os.environ, "CONVEYOR_DB": str(tmp_path / "signups.db")}
    logs = tmp_path / "uvicorn.err"
    with logs.open("wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--workers", "2", "--port", str(port)],
            cwd=web,
            env=env,
            stderr=err,
        )
    worker_log = tmp_path / "worker.err"
    with worker_log.open("wb") as err:
        worker = subprocess.Popen(
            conveyor_worker(Path(env["CONVEYOR_DB"]), "jobs:registry"),
            cwd=web,
            env=env,
            stderr=err,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering(f"{url}/jobs/1", server, logs)
        answers = []
        for n in range(20):
            with httpx.Client(timeout=30) as client:  # a new connection each: both processes
                reply = client.post(f"{url}/signups", json={"email": f"user{n}@example.com"})
                assert reply.status_code == 202, reply.text
                answers.append(reply.json())
        for answer in answers:
            job = httpx.get(f"{url}/jobs/{answer['job']}", params={"wait": 30}, timeout=60).json()
            assert job["status"] == "completed", (job, worker_log.read_text())
            assert job["result"].startswith("welcome mail sent to user")
        print(f"web processes that enqueued: {sorted({a['web_process'] for a in answers})}")
    finally:
        for process in (server, worker):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert worker.returncode == 0, worker_log.read_text()
