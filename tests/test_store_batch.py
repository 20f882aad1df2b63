"""The store's synchronous core: ``prepare_batch``, ``commit_batch`` and the ``Writer``, with no
event loop."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from conveyor import Event, Job, JobStatus, QueueFull
from conveyor._actors.messages import Cancel, Enqueue, Purge, Reply, Report
from conveyor._actors.store import (
    INLINE_ROWS,
    Claims,
    Effects,
    commit_batch,
    prepare_batch,
    rows_written,
)
from conveyor._job import TERMINAL
from conveyor._storage import sqlite as sqlite_storage
from conveyor._storage.sqlite import NewJob, Outcome, Writer, WriterBusy, get_job

NOW = 1_800_000_000.0


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Writer]:
    writer = Writer(str(tmp_path / "jobs.db"))
    writer.begin()
    writer.register(NOW, {"noop": (3, None)})
    writer.commit()
    yield writer
    writer.close()


def new_job(priority: int = 5, run_at: float = NOW, key: str | None = None) -> NewJob:
    return NewJob(
        name="noop",
        payload_json="null",
        payload=None,
        priority=priority,
        max_attempts=3,
        timeout=None,
        run_at=run_at,
        idempotency_key=key,
    )


def apply_batch(
    writer: Writer,
    commands: list[Any],
    now: float,
    max_pending: float,
    claims: Claims,
    **options: Any,
) -> Effects:
    """Apply and commit ``commands`` as the store does."""
    effects = prepare_batch(writer, commands, now, max_pending, claims, **options)
    commit_batch(writer)
    return effects


def apply(writer: Writer, *commands: Any, claims: Claims | None = None) -> Effects:
    return apply_batch(writer, list(commands), NOW, float("inf"), claims or Claims())


def enqueue(writer: Writer, *jobs: NewJob) -> list[Job]:
    reply: Reply[list[Job]] = Reply()
    effects = apply(writer, Enqueue(list(jobs), reply))
    ((_, stored),) = effects.replies
    return stored  # type: ignore[return-value]


def claim(writer: Writer, slots: int) -> list[Job]:
    return apply(writer, Report([], [], slots)).claimed


def status_of(writer: Writer, job_id: int) -> tuple[str, int]:
    row = writer._conn.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,))
    return row.fetchone()  # type: ignore[no-any-return]


def test_a_report_claims_only_for_the_slots_it_frees(writer: Writer) -> None:
    enqueue(writer, *[new_job() for _ in range(5)])
    effects = apply(writer, Report([], [], 2))
    assert [job.id for job in effects.claimed] == [1, 2]
    assert effects.claims.wanted == 0


def test_claims_take_the_best_ready_jobs_first(writer: Writer) -> None:
    enqueue(writer, new_job(priority=9), new_job(priority=1), new_job(priority=5))
    assert [job.priority for job in claim(writer, 3)] == [1, 5, 9]


def test_a_claim_no_job_can_fill_stands_until_a_job_is_enqueued(writer: Writer) -> None:
    effects = apply(writer, Report([], [], 3))
    assert effects.claimed == []
    assert effects.claims == Claims(wanted=3, may_be_ready=False)
    reply: Reply[list[Job]] = Reply()
    effects = apply(writer, Enqueue([new_job()], reply), claims=effects.claims)
    assert [job.id for job in effects.claimed] == [1]
    assert effects.claims.wanted == 2


def test_a_job_not_due_yet_is_not_claimed(writer: Writer) -> None:
    enqueue(writer, new_job(run_at=NOW + 60))
    assert claim(writer, 1) == []


def test_a_release_forgets_the_slots_the_store_owed(writer: Writer) -> None:
    effects = apply(writer, Report([], [], 3))
    effects = apply(writer, Report([], [], 0, release=True), claims=effects.claims)
    assert effects.claims.wanted == 0
    assert effects.released


def test_plain_completions_are_written_by_one_statement(writer: Writer) -> None:
    enqueue(writer, *[new_job() for _ in range(4)])
    running = claim(writer, 4)
    statements: list[str] = []
    writer._conn.set_trace_callback(statements.append)
    outcomes = [Outcome(job, Event.COMPLETED, "7") for job in running]
    changes = apply(writer, Report(outcomes, [], 0)).changes
    writer._conn.set_trace_callback(None)
    assert [change.event for change in changes] == [Event.COMPLETED] * 4
    assert sum("UPDATE" in statement for statement in statements) == 1
    assert all(status_of(writer, job.id) == ("completed", 1) for job in running)


def test_the_change_that_ends_an_attempt_carries_the_finished_job(writer: Writer) -> None:
    enqueue(writer, new_job())
    (running,) = claim(writer, 1)
    (change,) = apply(writer, Report([Outcome(running, Event.COMPLETED, '{"a":1}')], [], 0)).changes
    job = change.job()
    assert job is not None
    assert (job.status, job.result, job.finished_at) == (JobStatus.COMPLETED, {"a": 1}, NOW)


def test_an_outcome_of_another_attempt_changes_nothing(writer: Writer) -> None:
    enqueue(writer, new_job())
    (running,) = claim(writer, 1)
    stale = attrs.evolve(running, attempts=running.attempts + 1)
    changes = apply(writer, Report([Outcome(stale, Event.COMPLETED, "1")], [], 0)).changes
    assert changes == []
    assert status_of(writer, running.id) == ("running", 1)


def test_an_attempt_asked_to_cancel_ends_cancelled_whatever_it_returned(writer: Writer) -> None:
    enqueue(writer, new_job())
    (running,) = claim(writer, 1)
    reply: Reply[bool] = Reply()
    assert apply(writer, Cancel(running.id, reply)).cancel_running == [running.id]
    (change,) = apply(writer, Report([Outcome(running, Event.COMPLETED, "1")], [], 0)).changes
    assert change.event is Event.CANCELLED
    assert status_of(writer, running.id) == ("cancelled", 1)


def test_a_retry_without_delay_makes_the_job_ready_at_once(writer: Writer) -> None:
    enqueue(writer, new_job())
    (running,) = claim(writer, 1)
    outcome = Outcome(running, Event.RETRIED, error="boom", retry_delay=0.0)
    effects = apply(writer, Report([outcome], [], 1), claims=Claims(0, may_be_ready=False))
    assert [job.id for job in effects.claimed] == [running.id]


def test_a_command_that_fails_is_answered_alone_and_the_rest_commit(
    writer: Writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: Writer, finished_before: float, statuses: object) -> int:
        raise ValueError("refused")

    monkeypatch.setattr(Writer, "purge", refuse)
    first: Reply[list[Job]] = Reply()
    purge: Reply[int] = Reply()
    last: Reply[list[Job]] = Reply()
    effects = apply(
        writer, Enqueue([new_job()], first), Purge(0, TERMINAL, purge), Enqueue([new_job()], last)
    )
    assert [reply for reply, _ in effects.replies] == [first, last]
    ((failed, error),) = effects.failures
    assert failed is purge
    assert "refused" in str(error)
    assert writer._conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2


def test_a_full_queue_refuses_the_enqueue_and_writes_nothing(writer: Writer) -> None:
    reply: Reply[list[Job]] = Reply()
    effects = apply_batch(writer, [Enqueue([new_job(), new_job()], reply)], NOW, 1, Claims())
    ((_, error),) = effects.failures
    assert isinstance(error, QueueFull)
    assert writer._conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_a_row_inserted_from_outside_does_not_break_the_next_enqueue(writer: Writer) -> None:
    enqueue(writer, new_job())
    outside = sqlite3.connect(writer.path)
    outside.execute(
        "INSERT INTO jobs (name, payload, status, priority, max_attempts, run_at, created_at) "
        "VALUES ('noop', 'null', 'pending', 5, 3, 0, 0)"
    )
    outside.commit()
    outside.close()
    assert [job.id for job in enqueue(writer, new_job())] == [3]


def outside_lock(writer: Writer) -> sqlite3.Connection:
    """Another connection to the writer's file holding the write lock (an admin's session)."""
    other = sqlite3.connect(writer.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_batch_not_to_wait_raises_writer_busy_when_another_connection_writes(
    writer: Writer,
) -> None:
    other = outside_lock(writer)
    try:
        with pytest.raises(WriterBusy):
            apply_batch(
                writer, [Report([], [], 1)], NOW, float("inf"), Claims(), wait_for_lock=False
            )
        assert not writer._conn.in_transaction
    finally:
        other.close()


def test_a_batch_that_may_wait_goes_on_once_the_lock_is_free(writer: Writer) -> None:
    other = outside_lock(writer)
    threading.Timer(0.2, other.rollback).start()
    try:
        (job,) = enqueue(writer, new_job())
    finally:
        other.close()
    assert status_of(writer, job.id) == ("pending", 0)


def test_the_writer_leaves_wal_checkpoints_to_its_driver(writer: Writer) -> None:
    assert writer._conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
    enqueue(writer, *[new_job() for _ in range(100)])
    writer.checkpoint()
    busy, frames, copied = writer._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert (busy, frames) == (0, copied)


def test_rows_written_counts_what_a_batch_touches() -> None:
    reply: Reply[Any] = Reply()
    commands = [
        Enqueue([new_job(), new_job()], reply),
        Report([], [], 3),
        Cancel(1, reply),
    ]
    assert rows_written(commands, Claims(wanted=4)) == 2 + 3 + 1 + 4
    assert rows_written([Purge(0.0, TERMINAL, reply)], Claims()) > INLINE_ROWS


def test_an_insert_of_many_jobs_stores_each_as_given(writer: Writer) -> None:
    # More rows than one statement binds, some with the optional fields and most without.
    jobs = [
        attrs.evolve(
            new_job(priority=1 + n % 10, run_at=NOW + n % 3, key=f"k{n}" if n % 7 == 0 else None),
            payload_json=f'{{"n":{n}}}',
            payload={"n": n},
            timeout=2.5 if n % 5 == 0 else None,
            concurrency_key="c" if n % 11 == 0 else None,
            schedule_key="s" if n % 13 == 0 else None,
            trace_context="t" if n % 17 == 0 else None,
        )
        for n in range(150)
    ]
    stored = enqueue(writer, *jobs)
    assert [job.payload for job in stored] == [{"n": n} for n in range(150)]
    read = [get_job(writer._conn, job.id) for job in stored]
    assert read == stored
    # Not part of a Job's equality:
    assert [job.trace_context for job in read] == [job.trace_context for job in stored]
    assert [job.trace_context for job in stored] == [new.trace_context for new in jobs]


def test_the_columns_read_are_in_the_order_of_jobs_fields() -> None:
    # row_to_job passes a row's values positionally.
    columns = tuple(column.strip() for column in sqlite_storage._COLUMNS.split(","))
    assert columns == tuple(field.name for field in attrs.fields(Job))


def test_ids_follow_inserts_of_another_connection(writer: Writer, tmp_path: Path) -> None:
    other = Writer(str(tmp_path / "jobs.db"))
    try:
        (first,) = enqueue(writer, new_job())
        (second,) = enqueue(other, new_job())
        (third,) = enqueue(writer, new_job())
    finally:
        other.close()
    assert [first.id, second.id, third.id] == [1, 2, 3]


def test_an_undone_insert_gives_its_ids_again(writer: Writer) -> None:
    enqueue(writer, new_job())
    writer.begin()
    writer.insert([new_job()], NOW)
    writer.rollback()
    assert [job.id for job in enqueue(writer, new_job())] == [2]


def test_a_writer_at_full_commits_without_syncing_and_sync_syncs_the_wal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jobs.db"
    writer = Writer(str(path), synchronous="full")
    synced: list[int] = []
    monkeypatch.setattr(sqlite_storage, "_sync_data", lambda fd: synced.append(os.fstat(fd).st_ino))
    try:
        assert writer.syncs_after_commit
        writer.begin()
        writer.commit()
        assert synced == []
        writer.sync()
        assert synced == [os.stat(f"{path}-wal").st_ino]
    finally:
        writer.close()


def test_a_writer_at_full_syncs_a_transaction_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = Writer(str(tmp_path / "jobs.db"), synchronous="full")
    synced: list[int] = []
    monkeypatch.setattr(sqlite_storage, "_sync_data", synced.append)
    try:
        with writer.transaction():
            writer.register(NOW, {"noop": (3, None)})
        assert len(synced) == 1
    finally:
        writer.close()


def test_a_writer_at_normal_leaves_syncing_to_sqlite(writer: Writer) -> None:
    assert not writer.syncs_after_commit
