"""Many hosts on one PostgreSQL queue, with real faults.

Each worker host is a network namespace made here (``ip netns``) with a veth pair to the root
namespace, where a ``socat`` relay on the pair's address leads to the server; in it runs a real
``conveyor worker`` process. The producer is the test's own queue. Faults: every process of a
host killed, a host's link cut for longer than its lease and restored, the server restarted.
Needs root, ``ip``, ``socat`` and PostgreSQL; skips saying which is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import conveyor
from conveyor import JobStatus

from helpers import POSTGRES_URL, fresh_schema
from netns import Host, missing_tools, network_host, run, start_worker

pytestmark = [pytest.mark.anyio, pytest.mark.trio_only, pytest.mark.slow, pytest.mark.timeout(300)]

HEARTBEAT = 0.5


@pytest.fixture
def anyio_backend() -> str:
    """trio on the real clock: the hosts live in real time."""
    return "trio"


@pytest.fixture
def schema() -> Iterator[str]:
    reason = missing_tools()
    if reason is not None:
        pytest.skip(reason)
    with fresh_schema("hosts") as name:
        yield name


@pytest.fixture
def hosts(schema: str, tmp_path: Path) -> Iterator[list[Host]]:
    """Three worker hosts, not started yet."""
    with network_host(1) as a, network_host(2) as b, network_host(3) as c:
        yield [a, b, c]


def ran(directory: Path) -> dict[int, list[tuple[int, int]]]:
    """Each worker process's attempts, by process id: (job id, attempt) in order."""
    runs: dict[int, list[tuple[int, int]]] = {}
    for log in directory.glob("ran-*.log"):
        pid = int(log.stem.removeprefix("ran-"))
        lines = log.read_text().splitlines()
        runs[pid] = [(int(job), int(attempt)) for job, attempt in map(str.split, lines)]
    return runs


async def wait_for(condition: object, timeout: float = 60.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_a_killed_hosts_running_jobs_are_taken_over_within_two_heartbeats(
    schema: str, hosts: list[Host], tmp_path: Path
) -> None:
    url = f"{POSTGRES_URL}?schema={schema}"
    async with conveyor.open_queue(url, heartbeat=HEARTBEAT, known_handlers=["record"]) as queue:
        for host in hosts:
            start_worker(host, schema, tmp_path, heartbeat=HEARTBEAT)
        specs = [conveyor.JobSpec("record", {"dir": str(tmp_path), "seconds": 0.3})] * 120
        jobs = await queue.enqueue_many(specs)
        doomed = hosts[0]
        assert doomed.worker is not None
        # The worker runs as a child of `ip netns exec`: it has the same process id (exec).
        await wait_for(lambda: doomed.worker is not None and doomed.worker.pid in ran(tmp_path))
        doomed.worker.send_signal(signal.SIGKILL)
        doomed.worker.wait()
        killed = time.time()
        done = await queue.wait_all([job.id for job in jobs], timeout=120)
    assert {job.status for job in done} == {JobStatus.COMPLETED}
    interrupted = [job for job in done if job.attempts == 2]
    assert interrupted, "the killed host was running nothing"
    assert all("was interrupted" in (job.error or "") for job in interrupted)
    assert all(job.result != {"pid": doomed.worker.pid} for job in interrupted)
    taken_over_after = max(job.started_at or 0 for job in interrupted) - killed
    print(f"the killed host's jobs started again {taken_over_after:.2f} s after the kill")
    # Its lease (two heartbeats) lapses, and another host notices at its next heartbeat.
    assert taken_over_after <= 3 * HEARTBEAT + 1.0
    for job in done:
        runs = [pid for pid, attempts in ran(tmp_path).items() if (job.id, 1) in attempts]
        assert len(runs) <= 1  # no attempt ran twice


async def test_a_cut_off_hosts_jobs_run_elsewhere_and_its_late_outcomes_are_refused(
    schema: str, hosts: list[Host], tmp_path: Path
) -> None:
    url = f"{POSTGRES_URL}?schema={schema}"
    cut_off, *others = hosts
    async with conveyor.open_queue(url, heartbeat=HEARTBEAT, known_handlers=["record"]) as queue:
        start_worker(cut_off, schema, tmp_path, heartbeat=HEARTBEAT)
        assert cut_off.worker is not None
        job = await queue.enqueue("record", {"dir": str(tmp_path), "seconds": 3})
        await wait_for(lambda: ran(tmp_path))
        # Cut off while its attempt of 3 s runs; the others start after, however slowly.
        cut_off.cut()
        for other in others:
            start_worker(other, schema, tmp_path, heartbeat=HEARTBEAT)
        done = await queue.wait(job.id, timeout=60)
        await anyio.sleep(4 * HEARTBEAT)  # longer than its lease, and its attempt has ended
        cut_off.restore()
        await wait_for(lambda: "lost its lease" in cut_off.stderr(), timeout=60)
        await anyio.sleep(1)
        after = await queue.get(job.id)
    log = cut_off.stderr()
    assert done.status is JobStatus.COMPLETED
    assert done.attempts == 2
    assert done.result != {"pid": cut_off.worker.pid}
    assert after == done  # the late outcome changed nothing
    assert f"outcome (completed) of job {job.id} attempt 1" in log  # refused as stale


def local_cluster() -> tuple[str, str] | None:
    """The version and name of the Debian cluster serving port 5432, if there is one."""
    if shutil.which("pg_lsclusters") is None:
        return None
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for line in listed.splitlines():
        version, name, port, *_ = line.split()
        if port == "5432":
            return version, name
    return None


def restart_server(cluster: tuple[str, str]) -> None:
    run("pg_ctlcluster", *cluster, "restart")


async def test_a_server_restart_mid_drain_loses_nothing_acknowledged(
    schema: str, hosts: list[Host], tmp_path: Path
) -> None:
    cluster = local_cluster()
    if cluster is None:
        pytest.skip("no local Debian cluster on port 5432 to restart (pg_lsclusters)")
    url = f"{POSTGRES_URL}?schema={schema}"
    acknowledged: list[int] = []
    async with conveyor.open_queue(url, heartbeat=HEARTBEAT, known_handlers=["record"]) as queue:
        for host in hosts:
            start_worker(host, schema, tmp_path, heartbeat=HEARTBEAT)
        specs = [conveyor.JobSpec("record", {"dir": str(tmp_path), "seconds": 0.05})] * 300
        acknowledged += [job.id for job in await queue.enqueue_many(specs)]
        await wait_for(lambda: sum(map(len, ran(tmp_path).values())) >= 50)

        async def enqueue_meanwhile() -> None:
            for _ in range(100):
                with contextlib.suppress(conveyor.DatabaseError):
                    job = await queue.enqueue("record", {"dir": str(tmp_path)})
                    acknowledged.append(job.id)
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(enqueue_meanwhile)
            await anyio.to_thread.run_sync(restart_server, cluster)
        done = await _wait_through_faults(queue, acknowledged)
    assert len(done) == len(acknowledged)
    assert {job.status for job in done} == {JobStatus.COMPLETED}
    for host in hosts:
        assert host.worker is not None
        assert host.worker.poll() is None, host.stderr()  # every host lived through it


async def _wait_through_faults(queue: conveyor.Queue, ids: list[int]) -> list[conveyor.Job]:
    """Every job of ``ids`` once finished; a read failing while the server comes back is
    tried again."""
    deadline = time.monotonic() + 120
    while True:
        try:
            return await queue.wait_all(ids, timeout=max(deadline - time.monotonic(), 1))
        except conveyor.DatabaseError:
            if time.monotonic() > deadline:
                raise
            await anyio.sleep(0.5)
