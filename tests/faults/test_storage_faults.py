"""Storage faults injected for real: a write that fails for a reason that can pass fails the
calls of that batch, never the queue, and loses nothing acknowledged; a file that cannot be used
stops the queue with one error naming it.

These run on trio with real time and the SQL thread, as in production: a full disk is a small
tmpfs mounted for the test (root only; skipped otherwise), a held lock is another connection.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import conveyor
from conveyor import DatabaseError, DatabaseUnavailable, JobStatus
from conveyor._storage import sqlite as storage

pytestmark = pytest.mark.slow


def mount_tmpfs(folder: Path, size: str) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB file system of its own."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder, "4m")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file; it frees them when deleted."""
    ballast = disk / "ballast"
    with open(ballast, "ab", buffering=0) as file:  # unbuffered: nothing left to flush at close
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass
    return ballast


def registry(
    release: trio.Event | None = None, running: trio.Event | None = None, count: int = 0
) -> conveyor.Registry:
    """``work`` returns its payload once ``release`` is set; ``running`` is set once ``count``
    attempts have started."""
    registry = conveyor.Registry()
    started: list[object] = []

    @registry.handler("work")
    async def work(payload: object) -> object:
        started.append(payload)
        if running is not None and len(started) == count:
            running.set()
        if release is not None:
            await release.wait()
        return payload

    return registry


def test_a_full_disk_fails_the_call_and_the_queue_goes_on_once_space_is_freed(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="conveyor")

    async def main() -> None:
        async with conveyor.open_queue(small_disk / "jobs.db", handlers=registry()) as queue:
            before = await queue.enqueue("work", 1)
            ballast = fill(small_disk)
            for _ in range(2):
                with pytest.raises(DatabaseUnavailable, match="full"):
                    await queue.enqueue("work", "x" * 20_000)
            ballast.unlink()
            after = await queue.enqueue("work", 2)
            for job in (before, after):
                assert (await queue.wait(job.id, timeout=10)).status is JobStatus.COMPLETED

    trio.run(main)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "full" in errors[0].getMessage()
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_outcomes_that_meet_a_full_disk_are_written_once_space_is_freed(
    small_disk: Path,
) -> None:
    async def main() -> None:
        release, running = trio.Event(), trio.Event()
        async with conveyor.open_queue(
            small_disk / "jobs.db", handlers=registry(release, running, count=4), workers=4
        ) as queue:
            jobs = [await queue.enqueue("work", n) for n in range(4)]
            with trio.fail_after(10):
                await running.wait()
            # A reader's open snapshot keeps the WAL from being reset by a checkpoint, so the
            # outcomes must grow it, and cannot.
            reader = sqlite3.connect(small_disk / "jobs.db", isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM jobs").fetchone()
            ballast = fill(small_disk)
            release.set()
            await trio.sleep(0.5)  # the outcomes are reported and cannot be written
            assert [(await queue.get(job.id)).status for job in jobs] == [JobStatus.RUNNING] * 4
            reader.close()
            ballast.unlink()
            for job in jobs:
                done = await queue.wait(job.id, timeout=10)
                assert (done.status, done.result) == (JobStatus.COMPLETED, job.payload)

    trio.run(main)


def test_a_lock_held_past_the_busy_timeout_fails_the_call_and_the_queue_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_MS", 200)
    caplog.set_level(logging.INFO, logger="conveyor")
    path = tmp_path / "jobs.db"

    async def main() -> None:
        async with conveyor.open_queue(path, handlers=registry()) as queue:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(DatabaseUnavailable, match="write lock"):
                await queue.enqueue("work", 1)
            other.rollback()
            other.close()
            job = await queue.enqueue("work", 2)
            assert (await queue.wait(job.id, timeout=10)).status is JobStatus.COMPLETED
            assert [j.payload for j in await queue.list()] == [2]

    trio.run(main)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_an_outside_insert_does_not_break_later_enqueues(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def main() -> None:
        async with conveyor.open_queue(path, handlers=registry()) as queue:
            first = await queue.enqueue("work", 1)
            other = sqlite3.connect(path, isolation_level=None)
            other.execute(
                "INSERT INTO jobs (name, payload, status, scheduled, priority, attempts, "
                "max_attempts, run_at, created_at) "
                "SELECT name, '3', 'cancelled', 0, priority, 0, max_attempts, run_at, created_at "
                "FROM jobs WHERE id = ?",
                (first.id,),
            )
            other.close()
            second = await queue.enqueue("work", 2)
            assert second.id == first.id + 2
            assert (await queue.wait(second.id, timeout=10)).status is JobStatus.COMPLETED

    trio.run(main)


def test_a_deleted_file_stops_the_queue_with_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def main() -> None:
        async with conveyor.open_queue(path, handlers=registry()) as queue:
            await queue.enqueue("work", 1)
            path.unlink()
            await queue.enqueue("work", 2)

    with pytest.raises(DatabaseError, match=f"{path} was deleted, moved or replaced"):
        trio.run(main)


async def open_and_enqueue(path: Path) -> None:
    async with conveyor.open_queue(path, handlers=registry()) as queue:
        await queue.enqueue("work", 1)


def test_opening_in_a_missing_folder_names_the_folder_as_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(DatabaseError, match="its folder does not exist") as raised:
        trio.run(open_and_enqueue, path)
    assert str(path) in str(raised.value)


def test_opening_on_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "1m")
    try:
        trio.run(open_and_enqueue, disk / "jobs.db")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(DatabaseError, match="read-only") as raised:
            trio.run(open_and_enqueue, disk / "jobs.db")
        assert str(disk / "jobs.db") in str(raised.value)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_opening_a_corrupt_file_says_it_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def fill_queue() -> None:
        async with conveyor.open_queue(
            path, handlers=registry(trio.Event()), shutdown_grace=0
        ) as queue:
            await queue.enqueue_many([conveyor.JobSpec("work", "x" * 500) for _ in range(500)])

    trio.run(fill_queue)
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 8] = b"\xab" * (4096 * 6)
    path.write_bytes(data)
    with pytest.raises(DatabaseError, match="corrupt") as raised:
        trio.run(open_and_enqueue, path)
    assert str(path) in str(raised.value)


def test_opening_a_file_that_is_not_a_database_says_so(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(DatabaseError, match="not a usable SQLite database"):
        trio.run(open_and_enqueue, path)


@pytest.mark.parametrize(
    ("code", "passes"),
    [
        (sqlite3.SQLITE_FULL, True),
        (sqlite3.SQLITE_BUSY, True),
        (sqlite3.SQLITE_IOERR, True),
        (sqlite3.SQLITE_READONLY, True),
        (sqlite3.SQLITE_CORRUPT, False),
        (sqlite3.SQLITE_NOTADB, False),
        (sqlite3.SQLITE_READONLY_DBMOVED, False),
    ],
)
def test_a_fault_passes_unless_the_file_is_unusable(code: int, passes: bool) -> None:
    error = sqlite3.OperationalError("simulated")
    error.sqlite_errorcode = code
    fault = storage.classify_fault(error, "jobs.db")
    assert fault is not None
    assert fault.passes is passes
    assert "jobs.db" in fault.what


def test_an_error_that_is_not_the_databases_is_not_a_fault() -> None:
    assert storage.classify_fault(TypeError("a bug"), "jobs.db") is None
