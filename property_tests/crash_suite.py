"""The kill -9 suite: a loaded queue killed at random moments, restarted, then drained.

    python property_tests/crash_suite.py --cycles 200 [--seed N] [--disk-full] [--processes K]
                                         [--postgres URL] [--synchronous full]

runs it by hand (CI runs a few cycles of each kind through ``test_crash_suite.py``). Each
cycle starts a child process in which producers enqueue jobs and print each acknowledged id,
and handlers log their side effects to a file with fsync; the parent kills the child with
SIGKILL at a random moment and notes which jobs the database says were running then. At the
end a last child drains the queue, and the parent checks: no acknowledged job lost, none left
``running``, every job completed at least once, and only jobs that were running at a kill ran
more than once.

With ``--disk-full`` (root only) the database lives on a small tmpfs, and in a third of the
cycles the parent fills that disk while the child runs, then frees it (before or after the
kill): the child must live through the full disk (its calls fail, and producers try again)
and lose nothing it acknowledged.

With ``--processes K`` (K > 1), each cycle also runs K - 1 worker processes on the same file
(``crash_suite.py work DB``), and kills one of them at a random moment while the others run on:
the survivors must take over its running jobs (its lock is free at once; they look every
heartbeat) and lose nothing. Every process is then killed at the cycle's end, as before.

With ``--postgres URL`` (e.g. ``postgresql://postgres@127.0.0.1:5432/test``) the queue lives in
a fresh schema on that server instead of a SQLite file (dropped at the end if the run passed,
kept for a look if not); the kill -9 cycles and the checks are the same. There no lock tells
that a killed process is gone: its running jobs are taken over once its lease (two heartbeats)
lapses, by a later cycle's processes or the drain, and only those may run again.
``--processes K`` works the same way; ``--disk-full`` does not apply (the disk is the server's).

With ``--synchronous full`` every process opens the file at ``synchronous="full"`` (a job then
starts before the sync of the commit that claimed it, and is answered after it).

The same file is the child: ``crash_suite.py load DB``, ``crash_suite.py work DB`` and
``crash_suite.py drain DB`` (DB a file, or a ``postgresql://`` URL naming the schema).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Final, Literal

import attrs
import trio

import conveyor

PRODUCERS: Final = 8
WORKERS: Final = 8
DRAIN_TIMEOUT: Final = 300.0
HEARTBEAT: Final = 0.5

registry = conveyor.Registry()


def _log_path() -> str:
    return os.environ["CONVEYOR_CRASH_LOG"]


def _synchronous() -> Literal["normal", "full"]:
    """The children's ``synchronous``: the parent's ``--synchronous``."""
    return "full" if os.environ.get("CONVEYOR_CRASH_SYNCHRONOUS") == "full" else "normal"


def _append(line: str) -> None:
    fd = os.open(_log_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# Killed attempts count, so a job may be running at many kills: attempts must outlast them.
@registry.handler("work", max_attempts=1_000_000)
async def work(payload: dict[str, int]) -> int:
    job = conveyor.current_job()
    _append(f"start {job.id} {job.attempt}\n")
    await trio.sleep(random.uniform(0, 0.005))
    _append(f"done {job.id} {job.attempt}\n")
    return payload["n"]


async def load(db: str) -> None:
    async with conveyor.open_queue(
        db, handlers=registry, workers=WORKERS, heartbeat=HEARTBEAT, synchronous=_synchronous()
    ) as queue:

        async def produce(producer: int) -> None:
            for n in range(1_000_000):
                try:
                    job = await queue.enqueue("work", {"n": n, "producer": producer})
                except conveyor.DatabaseUnavailable:
                    await trio.sleep(0.01)  # the disk is full: not acknowledged, try again
                    continue
                sys.stdout.write(f"ack {job.id}\n")
                sys.stdout.flush()
                await trio.sleep(random.uniform(0, 0.004))

        async with trio.open_nursery() as nursery:
            for producer in range(PRODUCERS):
                nursery.start_soon(produce, producer)


async def run_handlers(db: str) -> None:
    async with conveyor.open_queue(
        db, handlers=registry, workers=WORKERS, heartbeat=HEARTBEAT, synchronous=_synchronous()
    ):
        await trio.sleep_forever()


async def drain(db: str) -> None:
    async with conveyor.open_queue(
        db, handlers=registry, workers=WORKERS, synchronous=_synchronous()
    ) as queue:
        while True:
            counts = (await queue.stats()).by_status
            if counts[conveyor.JobStatus.PENDING] + counts[conveyor.JobStatus.RUNNING] == 0:
                return
            await trio.sleep(0.05)


# --- the parent ---------------------------------------------------------------------------------
@attrs.define
class Report:
    cycles: int = 0
    acknowledged: set[int] = attrs.Factory(set)
    running_at_a_kill: set[int] = attrs.Factory(set)
    problems: list[str] = attrs.Factory(list)
    jobs: int = 0
    reruns: int = 0
    squeezes: int = 0
    workers_killed: int = 0
    seconds: float = 0.0
    database: str = ""
    """Where the queue lived: its file, or its PostgreSQL URL (with its schema)."""

    def summary(self) -> str:
        verdict = "PASS" if not self.problems else "FAIL"
        return (
            f"{verdict}: {self.cycles} kill cycles on {self.database} in {self.seconds:.0f} s, "
            f"{self.jobs} jobs, "
            f"{len(self.acknowledged)} acknowledged, {len(self.running_at_a_kill)} running at a "
            f"kill, {self.reruns} re-run, {self.squeezes} disk-full phases, "
            f"{self.workers_killed} worker processes killed beside running ones"
            + "".join(f"\n  {p}" for p in self.problems)
        )


Database = Path | str
"""A SQLite file, or the URL of a PostgreSQL schema."""


def _spawn(mode: str, db: Database, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, mode, str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CONVEYOR_CRASH_LOG": str(log)},
    )


def _kill_at_random(
    child: subprocess.Popen[str],
    rng: random.Random,
    squeeze: Path | None,
    report: Report,
    workers: list[subprocess.Popen[str]] | None = None,
    db: Database | None = None,
) -> set[int]:
    """Let ``child`` run a random while, SIGKILL it, and return the ids it acknowledged.

    With ``squeeze``, a disk to fill: fill it for a random while during the run, and free it
    before or after the kill. With ``workers`` (other processes on ``db``), kill one of them
    at a random moment while the rest run on, noting what was running then; the others are
    killed with ``child``.
    """
    workers = workers or []
    acked: set[int] = set()
    assert child.stdout is not None
    stdout = child.stdout

    def read() -> None:
        for line in stdout:
            if line.startswith("ack ") and line.endswith("\n"):
                acked.add(int(line.split()[1]))

    reader = threading.Thread(target=read)
    reader.start()
    if workers and db is not None:
        time.sleep(rng.uniform(0.3, 1.0))
        victim = workers.pop(rng.randrange(len(workers)))
        _kill(victim)
        _note_running(db, report)
        report.workers_killed += 1
    time.sleep(rng.uniform(0.05, 0.8))
    ballast = None
    if squeeze is not None:
        # Only once the child has the file open: opening on a full disk fails, as it should.
        deadline = time.monotonic() + 10
        while not acked and time.monotonic() < deadline:
            time.sleep(0.01)
        ballast = _fill(squeeze)
        time.sleep(rng.uniform(0.1, 0.5))
        if rng.random() < 0.5:
            ballast.unlink(missing_ok=True)
            ballast = None
            time.sleep(rng.uniform(0.05, 0.4))
        report.squeezes += 1
    for process in (child, *workers):
        if process.poll() is not None:
            report.problems.append(f"a child exited on its own with {process.returncode}")
        process.send_signal(signal.SIGKILL)
        process.wait()
    for worker in workers:
        _kill(worker)
    reader.join()
    stdout.close()
    if ballast is not None:
        ballast.unlink(missing_ok=True)
    return acked


def _kill(process: subprocess.Popen[str]) -> None:
    """SIGKILL a worker child (whose output nobody reads) and close its pipe."""
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _note_running(db: Database, report: Report) -> None:
    """Note the jobs running now (right after a kill): those may run again. (On PostgreSQL a
    killed process's jobs stay ``running`` until its lease lapses: noted at each kill while
    they wait.)"""
    running = _rows(db, "SELECT id, status FROM jobs WHERE status = 'running'")
    report.running_at_a_kill |= {job_id for job_id, _ in running}


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk`` with one file."""
    ballast = disk / "ballast"
    try:
        with open(ballast, "ab") as file:
            while True:
                file.write(b"\0" * 65536)
                file.flush()
    except OSError:
        pass  # full (or already full: then the file may not even exist)
    return ballast


def _mount_small_disk(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], check=True)


def _rows(db: Database, query: str) -> list[tuple[int, str]]:
    """The rows ``query`` reads in the queue's database (none before it has its tables)."""
    if isinstance(db, str):
        from postgres_schemas import rows

        return rows(db, query)
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    try:
        # A process killed while it opened the file (or whose disk was full) leaves a file
        # without tables.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is None:
            return []
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def run(
    cycles: int,
    directory: Path,
    seed: int,
    *,
    disk_full: bool = False,
    processes: int = 1,
    postgres: str | None = None,
) -> Report:
    """Run the suite; with ``postgres`` (a server's URL), in the schema its ``?schema=`` names
    or else in a fresh one, named by the report's ``database`` (the caller drops it:
    :func:`postgres_schemas.drop_schema`)."""
    if postgres is not None and disk_full:
        raise ValueError("the disk-full phases fill a local disk: not with --postgres")
    rng = random.Random(seed)
    disk = directory / "disk" if disk_full else None
    if disk is not None:
        _mount_small_disk(disk)
    try:
        db: Database = (disk or directory) / "jobs.db"
        if postgres is not None:
            from postgres_schemas import fresh_schema, schema_url

            named = "schema=" in urllib.parse.urlsplit(postgres).query
            db = postgres if named else schema_url(postgres, fresh_schema("crash"))
        return _run(cycles, rng, directory, db, disk, processes)
    finally:
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _run(
    cycles: int,
    rng: random.Random,
    directory: Path,
    db: Database,
    disk: Path | None,
    processes: int,
) -> Report:
    log = directory / "side-effects.log"
    report = Report(database=str(db))
    began = time.monotonic()
    for _ in range(cycles):
        squeeze = disk if disk is not None and rng.random() < 1 / 3 else None
        workers = [_spawn("work", db, log) for _ in range(processes - 1)]
        report.acknowledged |= _kill_at_random(
            _spawn("load", db, log), rng, squeeze, report, workers, db
        )
        report.cycles += 1
        _note_running(db, report)
    drainer = _spawn("drain", db, log)
    drainer.communicate(timeout=DRAIN_TIMEOUT)
    if drainer.returncode != 0:
        report.problems.append(f"the drain exited with {drainer.returncode}")
    report.seconds = time.monotonic() - began
    _check(report, db, log)
    return report


def _check(report: Report, db: Database, log: Path) -> None:
    stored = dict(_rows(db, "SELECT id, status FROM jobs"))
    report.jobs = len(stored)
    lost = report.acknowledged - stored.keys()
    if lost:
        report.problems.append(f"acknowledged but lost: {sorted(lost)[:20]}")
    running = [job_id for job_id, status in stored.items() if status == "running"]
    if running:
        report.problems.append(f"left running: {running[:20]}")
    starts: Counter[int] = Counter()
    done: set[int] = set()
    # No log at all: no handler ever started (then every stored job is reported below).
    for line in (log.read_text() if log.exists() else "").splitlines():
        match line.split():
            case ["start", job_id, _]:
                starts[int(job_id)] += 1
            case ["done", job_id, _]:
                done.add(int(job_id))
    unfinished = [job_id for job_id, status in stored.items() if status != "completed"]
    if unfinished:
        report.problems.append(f"not completed: {unfinished[:20]}")
    never_done = sorted(stored.keys() - done)
    if never_done:
        report.problems.append(f"completed without a finished run in the log: {never_done[:20]}")
    reruns = {job_id for job_id, count in starts.items() if count > 1}
    report.reruns = len(reruns)
    unexplained = reruns - report.running_at_a_kill
    if unexplained:
        report.problems.append(f"ran again though not running at a kill: {sorted(unexplained)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="kill cycles (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the files here")
    parser.add_argument(
        "--disk-full", action="store_true", help="fill the database's disk in some cycles (root)"
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="processes on the file per cycle (default 1)"
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=None,
        help="run the queue in a fresh schema on this PostgreSQL server instead of a file",
    )
    parser.add_argument(
        "--synchronous",
        choices=("normal", "full"),
        default="normal",
        help="open_queue's synchronous in every process (default normal)",
    )
    args = parser.parse_args()
    os.environ["CONVEYOR_CRASH_SYNCHRONOUS"] = args.synchronous
    if args.postgres is not None and args.disk_full:
        parser.error("--disk-full fills a local disk; it does not apply to --postgres")
    if args.postgres is not None and not args.postgres.startswith(("postgresql://", "postgres://")):
        parser.error(f"--postgres takes a postgresql:// URL, not {args.postgres!r}")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="conveyor-crash-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"seed {seed}, files in {directory}", flush=True)
    report = run(
        args.cycles,
        directory,
        seed,
        disk_full=args.disk_full,
        processes=args.processes,
        postgres=args.postgres,
    )
    print(report.summary())
    if args.postgres is not None:
        if report.problems:
            print(f"the schema is kept for a look: {report.database}")
        else:
            from postgres_schemas import drop_schema

            drop_schema(report.database)
    sys.exit(1 if report.problems else 0)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("load", "work", "drain"):
        modes = {"load": load, "work": run_handlers, "drain": drain}
        trio.run(modes[sys.argv[1]], sys.argv[2])
    else:
        main()
