"""Durability: jobs survive restarts and kill -9; processes share a file; foreign files."""

from __future__ import annotations

import fcntl
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import conveyor
from conveyor._storage.sqlite import SCHEMA_VERSION, Writer

from helpers import QueueOpener

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("crash_child.py")


def spawn(mode: str, db: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), mode, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def noop_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> object:
        return payload

    return registry


async def test_jobs_survive_closing_and_reopening(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(noop_registry()) as queue:
        job = await queue.enqueue("noop", {"keep": True}, delay=3600, priority=2)
    async with open_test_queue(noop_registry()) as queue:
        again = await queue.get(job.id)
    assert again == job


async def test_ids_are_never_reused_after_a_purge(open_test_queue: QueueOpener) -> None:
    async with open_test_queue(noop_registry()) as queue:
        job = await queue.enqueue("noop")
        await queue.wait(job.id, timeout=10)
        await queue.purge(older_than=0)
    async with open_test_queue(noop_registry()) as queue:
        assert (await queue.enqueue("noop", delay=60)).id > job.id


async def test_a_producer_beside_a_worker_in_one_process_shares_the_file(
    open_test_queue: QueueOpener,
) -> None:
    async with open_test_queue(noop_registry()), open_test_queue(None) as producer:
        job = await producer.enqueue("noop")
        with anyio.fail_after(30):
            done = await producer.wait(job.id)
        assert done.status is conveyor.JobStatus.COMPLETED


async def test_a_file_held_by_an_older_conveyor_is_refused(db_path: Path) -> None:
    # A conveyor before schema version 5 locks the lock file exclusively.
    with open(f"{db_path}.lock", "w") as lock:  # noqa: ASYNC230 (a local file, at once)
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(conveyor.DatabaseInUse, match="older conveyor"):
            async with conveyor.open_queue(db_path, handlers=noop_registry()):
                pass


async def test_a_file_that_is_not_sqlite_is_refused(db_path: Path) -> None:
    await anyio.Path(db_path).write_bytes(b"this is not a database" * 100)
    with pytest.raises(conveyor.DatabaseError, match="not a usable SQLite database"):
        async with conveyor.open_queue(db_path, handlers=noop_registry()):
            pass


async def test_a_foreign_sqlite_database_is_refused_untouched(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(conveyor.DatabaseError, match="not a conveyor one"):
        async with conveyor.open_queue(db_path, handlers=noop_registry()):
            pass
    with sqlite3.connect(db_path) as conn:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master")]
    assert tables == ["customers"]


async def test_a_database_from_a_newer_schema_is_refused(db_path: Path) -> None:
    async with conveyor.open_queue(db_path, handlers=noop_registry()):
        pass
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(conveyor.SchemaTooNew, match="schema version 99"):
        async with conveyor.open_queue(db_path, handlers=noop_registry()):
            pass


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_kill_9_while_enqueueing_loses_no_acknowledged_job(db_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    acked: set[int] = set()
    for _ in range(3):
        child = spawn("produce", db_path)
        assert child.stdout is not None
        deadline = time.monotonic() + rng.uniform(0.2, 0.8)
        while time.monotonic() < deadline or not acked:
            line = child.stdout.readline()
            if line.startswith("ack "):
                acked.add(int(line.split()[1]))
        child.send_signal(signal.SIGKILL)
        rest, _ = child.communicate()
        acked.update(int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack "))
    with sqlite3.connect(db_path) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert len(acked) > 100
    assert acked <= stored


@pytest.mark.slow
def test_a_job_that_kills_its_process_every_time_ends_failed(db_path: Path) -> None:
    runs = []
    for _ in range(5):
        out, _ = spawn("killer", db_path).communicate(timeout=60)
        runs.append(out.strip())
        if out.strip():
            break
    assert runs == ["", "", "", "status failed"]


_SCHEMA_V1 = """
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        name             TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        status           TEXT    NOT NULL CHECK (status IN ('pending', 'scheduled', 'running',
                                                        'completed', 'failed', 'cancelled')),
        priority         INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        timeout          REAL,
        run_at           REAL    NOT NULL,
        created_at       REAL    NOT NULL,
        started_at       REAL,
        finished_at      REAL,
        result           TEXT,
        error            TEXT,
        progress         REAL,
        progress_message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT UNIQUE
    );
    CREATE INDEX jobs_ready ON jobs (priority, run_at, id) WHERE status = 'pending';
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE status = 'scheduled';
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_failed ON jobs (id) WHERE status = 'failed';
    CREATE INDEX jobs_name ON jobs (name, id);
    INSERT INTO jobs (id, name, payload, status, priority, max_attempts, run_at, created_at)
        VALUES (1, 'noop', '1', 'pending', 5, 3, 0, 0),
               (2, 'noop', '2', 'scheduled', 5, 3, 4e9, 0),
               (3, 'noop', '3', 'completed', 5, 3, 0, 0);
    UPDATE sqlite_sequence SET seq = 10 WHERE name = 'jobs';
    PRAGMA application_id = 1129270870;
    PRAGMA user_version = 1
"""
"""A file as conveyor 0.1 (schema version 1) left it: a job scheduled for later had the status
'scheduled', and ids up to 10 were given (4 to 10 since purged)."""


def test_a_version_1_file_is_upgraded_keeping_its_jobs_and_ids(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.executescript(_SCHEMA_V1)
    conn.close()
    Writer(str(db_path)).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT id, status, scheduled FROM jobs ORDER BY id").fetchall() == [
        (1, "pending", 0),
        (2, "pending", 1),
        (3, "completed", 0),
    ]
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone() == (10,)
    conn.close()
