"""Owners and their leases on one file, at the storage level (no event loop): who may take
whose running jobs, and whose outcomes count."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from conveyor import DatabaseInUse, Event, Job, JobStatus
from conveyor._storage import sqlite
from conveyor._storage.sqlite import (
    NewJob,
    Outcome,
    Writer,
    get_job,
    open_reader,
    owner_lock_path,
)

T = TypeVar("T")

NOW = 1_800_000_000.0
LEASE = 4.0
HANDLERS = {"noop": (1, None)}


def new_job() -> NewJob:
    return NewJob(
        name="noop",
        payload_json="null",
        payload=None,
        priority=5,
        max_attempts=1,
        timeout=None,
        run_at=NOW,
        idempotency_key=None,
    )


def owner(path: Path, now: float = NOW) -> Writer:
    writer = Writer(str(path))
    in_transaction(writer, lambda: writer.register(now, HANDLERS, lease=LEASE))
    return writer


def in_transaction(writer: Writer, work: Callable[[], T]) -> T:
    with writer.transaction():
        return work()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def first(path: Path) -> Iterator[Writer]:
    writer = owner(path)
    yield writer
    writer.close()


@pytest.fixture
def second(path: Path, first: Writer) -> Iterator[Writer]:
    writer = owner(path)
    yield writer
    writer.close()


def claim_one(writer: Writer, now: float = NOW) -> list[int]:
    return [job.id for job in in_transaction(writer, lambda: writer.claim(1, now))]


def read_job(writer: Writer, job_id: int) -> Job:
    reader = open_reader(writer.path)
    try:
        job = get_job(reader, job_id)
    finally:
        reader.close()
    assert job is not None
    return job


def status(writer: Writer, job_id: int) -> tuple[JobStatus, int]:
    job = read_job(writer, job_id)
    return job.status, job.attempts


def test_each_process_registers_as_its_own_owner(first: Writer, second: Writer) -> None:
    assert first.owner is not None
    assert second.owner is not None
    assert first.owner != second.owner


def test_a_live_owners_running_jobs_are_not_taken(first: Writer, second: Writer) -> None:
    in_transaction(first, lambda: first.insert([new_job()], NOW))
    (job_id,) = claim_one(first)
    assert in_transaction(second, lambda: second.rescue(NOW + 1)) == []
    assert status(second, job_id) == (JobStatus.RUNNING, 1)


def test_a_dead_owners_running_jobs_are_taken_at_once(path: Path, second: Writer) -> None:
    doomed = owner(path)
    in_transaction(doomed, lambda: doomed.insert([new_job()], NOW))
    (job_id,) = claim_one(doomed)
    doomed.close()  # as a crash leaves it: not retired, its lock released by the kernel
    changes = in_transaction(second, lambda: second.rescue(NOW))
    assert [(change.job_id, change.event) for change in changes] == [(job_id, Event.FAILED)]
    assert status(second, job_id) == (JobStatus.FAILED, 1)  # its only attempt counted
    assert not Path(owner_lock_path(str(path), doomed.owner or 0)).exists()


def test_a_silent_owner_is_taken_over_once_its_lease_lapses(first: Writer, second: Writer) -> None:
    in_transaction(first, lambda: first.insert([new_job()], NOW))
    (job_id,) = claim_one(first)
    assert in_transaction(second, lambda: second.rescue(NOW + LEASE - 0.5)) == []
    assert in_transaction(second, lambda: second.rescue(NOW + LEASE + 0.5))
    assert status(second, job_id)[0] is JobStatus.FAILED


def test_a_heartbeat_renews_the_lease(first: Writer, second: Writer) -> None:
    in_transaction(first, lambda: first.insert([new_job()], NOW))
    claim_one(first)
    assert in_transaction(first, lambda: first.beat(NOW + LEASE))
    assert in_transaction(second, lambda: second.rescue(NOW + LEASE + 0.5)) == []


def test_a_heartbeat_after_a_takeover_is_refused(first: Writer, second: Writer) -> None:
    in_transaction(second, lambda: second.rescue(NOW + LEASE + 1))
    assert not in_transaction(first, lambda: first.beat(NOW + LEASE + 2))


def test_an_outcome_from_an_owner_whose_jobs_were_taken_over_is_refused(
    first: Writer, second: Writer
) -> None:
    (stored,), _ = in_transaction(first, lambda: first.insert([new_job()], NOW))
    (claimed,) = in_transaction(first, lambda: first.claim(1, NOW))
    in_transaction(second, lambda: second.rescue(NOW + LEASE + 1))
    # Failed (its one attempt counted), requeued, and running the same attempt number again.
    assert in_transaction(second, lambda: second.requeue(stored.id, NOW + LEASE + 1))
    assert claim_one(second, NOW + LEASE + 1) == [stored.id]
    late = Outcome(claimed, Event.COMPLETED, result_json='"late"')
    assert in_transaction(first, lambda: first.end_attempts([late], NOW + LEASE + 2)) == []
    assert status(second, stored.id) == (JobStatus.RUNNING, 1)


def test_progress_from_an_owner_whose_jobs_were_taken_over_is_dropped(
    first: Writer, second: Writer
) -> None:
    (stored,), _ = in_transaction(first, lambda: first.insert([new_job()], NOW))
    claim_one(first)
    in_transaction(second, lambda: second.rescue(NOW + LEASE + 1))
    in_transaction(second, lambda: second.requeue(stored.id, NOW + LEASE + 1))
    claim_one(second, NOW + LEASE + 1)
    in_transaction(first, lambda: first.record_progress([(0.5, "late", stored.id, 1)]))
    assert read_job(second, stored.id).progress is None


def test_a_worker_claims_only_the_jobs_of_its_own_handlers(path: Path) -> None:
    worker = Writer(str(path))
    in_transaction(worker, lambda: worker.register(NOW, {"resize": (3, None)}, lease=LEASE))
    try:
        in_transaction(worker, lambda: worker.insert([new_job()], NOW))
        assert claim_one(worker) == []
    finally:
        worker.close()


def test_a_retired_owner_leaves_no_row_and_no_lock_file(path: Path, first: Writer) -> None:
    leaving = owner(path)
    in_transaction(leaving, leaving.retire)
    leaving.close()
    assert not Path(owner_lock_path(str(path), leaving.owner or 0)).exists()
    with sqlite3.connect(path) as conn:
        assert [row[0] for row in conn.execute("SELECT id FROM owners")] == [first.owner]


def test_a_file_created_by_another_process_while_this_one_waited_is_not_created_again(
    path: Path,
) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the other process is creating the file
    opened: list[Writer | BaseException] = []

    def open_writer() -> None:
        try:
            opened.append(Writer(str(path)))
        except BaseException as exc:
            opened.append(exc)

    waiting = threading.Thread(target=open_writer)
    waiting.start()
    time.sleep(0.3)  # it has read the file as empty, and waits for the write lock
    for statement in sqlite._CREATE.split(";"):
        if statement.strip():
            other.execute(statement)
    other.execute(f"PRAGMA application_id = {sqlite.APPLICATION_ID}")
    other.execute(f"PRAGMA user_version = {sqlite.SCHEMA_VERSION}")
    other.execute("COMMIT")
    other.close()
    waiting.join()
    (writer,) = opened
    assert isinstance(writer, Writer), writer
    writer.close()


@pytest.mark.parametrize("statement", ["Q_CLAIM", "Q_READY_IN_ORDER"])
def test_a_claim_reads_the_ready_index_in_order_whatever_the_names(
    first: Writer, statement: str
) -> None:
    """Without statistics (a file never analysed), the filter on handler names must not lead
    the planner to the index by name and a sort of every pending job of those names."""
    sql = getattr(sqlite, statement).format(names="?, ?", ids="?", scan=10)
    params = [1.0, 1, "a", "b", 8] if statement == "Q_CLAIM" else ["a", "b"]
    plan = " ".join(row[3] for row in first._conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "jobs_ready" in plan
    assert "TEMP B-TREE" not in plan


def test_a_file_on_a_network_file_system_is_refused(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "filesystem_of", lambda _: "nfs4")
    with pytest.raises(DatabaseInUse, match=r"network file system \(nfs4\)"):
        Writer(str(path))
    assert not path.exists()


def test_the_file_system_of_a_local_folder_is_read(path: Path) -> None:
    assert sqlite.filesystem_of(str(path)) not in (None, *sqlite.NETWORK_FILESYSTEMS)


def test_an_owner_finds_itself_taken_over_when_its_next_transaction_begins(
    first: Writer, second: Writer
) -> None:
    in_transaction(second, lambda: second.rescue(NOW + LEASE + 1))
    first.begin()
    try:
        assert first.lease_lost
    finally:
        first.rollback()


def test_running_jobs_of_an_owner_gone_from_the_table_are_taken_over(
    path: Path, first: Writer, second: Writer
) -> None:
    in_transaction(first, lambda: first.insert([new_job()], NOW))
    (job_id,) = claim_one(first)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM owners WHERE id = ?", (first.owner,))
    changes = in_transaction(second, lambda: second.rescue(NOW))
    assert [change.job_id for change in changes] == [job_id]


def test_each_owner_is_judged_by_its_own_lease(path: Path, first: Writer) -> None:
    patient = Writer(str(path))
    in_transaction(patient, lambda: patient.register(NOW, HANDLERS, lease=100 * LEASE))
    try:
        in_transaction(patient, lambda: patient.insert([new_job()], NOW))
        (job_id,) = claim_one(patient)
        assert in_transaction(first, lambda: first.rescue(NOW + 10 * LEASE)) == []
        assert status(first, job_id) == (JobStatus.RUNNING, 1)
    finally:
        patient.close()
