"""SQLite persistence: the schema, every SQL statement conveyor runs, and the file lock.

Everything here is synchronous and runs on whichever thread the store actor gives it; one
:class:`Writer` is used by one thread at a time. Reads go through separate read-only
connections (:func:`open_reader`), which WAL lets see a consistent snapshot without blocking
the writer.

A pending job whose ``run_at`` is still in the future is stored with the status ``scheduled``
(public :attr:`JobStatus.PENDING`): it stays out of the ready index until a claim promotes it,
so that the claim query never wades through jobs that are not due yet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, Literal

import attrs

from .._errors import DatabaseError, DatabaseInUse, SchemaTooNew
from .._events import Change
from .._job import JSON, TERMINAL, Event, Job, JobStatus, sources_of

SCHEMA_VERSION: Final = 1
APPLICATION_ID: Final = 0x434F4E56  # "CONV": marks the file as a conveyor database

Synchronous = Literal["normal", "full"]

SCHEDULED: Final = "scheduled"

_MIGRATIONS: Final[dict[int, str]] = {
    1: """
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
    -- The priority queue: ready jobs in claim order.
    CREATE INDEX jobs_ready ON jobs (priority, run_at, id) WHERE status = 'pending';
    -- Jobs not due yet, by when they become due.
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE status = 'scheduled';
    -- Finished jobs by age: statistics over the last minute, and purge.
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    -- The dead-letter list, newest first.
    CREATE INDEX jobs_failed ON jobs (id) WHERE status = 'failed';
    CREATE INDEX jobs_name ON jobs (name, id);
    """,
}

_COLUMNS: Final = (
    "id, name, payload, status, priority, attempts, max_attempts, run_at, created_at, "
    "started_at, finished_at, result, error, progress, progress_message, timeout, idempotency_key"
)


def _sql_list(statuses: frozenset[JobStatus]) -> str:
    """Statuses as a SQL list, so statements take them from the transition table (DESIGN §2)."""
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


# --- The statements, by name. -------------------------------------------------------------------
Q_INSERT: Final = (
    "INSERT INTO jobs (id, name, payload, status, priority, max_attempts, timeout, run_at, "
    "created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
Q_BY_KEY: Final = f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?"
Q_BY_ID: Final = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"
Q_NAME_BY_ID: Final = "SELECT name FROM jobs WHERE id = ?"
Q_NEXT_ID: Final = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0), "
    "coalesce((SELECT max(id) FROM jobs), 0)) + 1"
)
Q_COUNT_PENDING: Final = "SELECT count(*) FROM jobs WHERE status IN ('pending', 'scheduled')"
Q_PROMOTE_DUE: Final = (
    "UPDATE jobs SET status = 'pending' WHERE status = 'scheduled' AND run_at <= ?"
)
Q_CLAIM: Final = f"""
    UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?,
                    progress = NULL, progress_message = NULL
    WHERE id IN (SELECT id FROM jobs WHERE status = 'pending'
                 ORDER BY priority, run_at, id LIMIT ?)
    RETURNING {_COLUMNS}
"""
Q_NEXT_DUE: Final = "SELECT min(run_at) FROM jobs WHERE status = 'scheduled'"
Q_OUTCOME_STATE: Final = (
    "SELECT status, attempts, max_attempts, cancel_requested, name, run_at, started_at "
    "FROM jobs WHERE id = ?"
)
Q_COMPLETE: Final = "UPDATE jobs SET status = 'completed', result = ?, finished_at = ? WHERE id = ?"
Q_COMPLETE_IF_RUNNING: Final = """
    UPDATE jobs SET status = 'completed', result = ?, finished_at = ?
    WHERE id = ? AND status = 'running' AND attempts = ? AND NOT cancel_requested
    RETURNING name, started_at
"""
Q_CANCELLED_WHILE_RUNNING: Final = (
    "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = ? WHERE id = ?"
)
Q_RETRY: Final = "UPDATE jobs SET status = ?, run_at = ?, error = ?, started_at = NULL WHERE id = ?"
Q_FAIL: Final = "UPDATE jobs SET status = 'failed', error = ?, finished_at = ? WHERE id = ?"
Q_INTERRUPT: Final = (
    "UPDATE jobs SET status = 'pending', attempts = attempts - 1, started_at = NULL, "
    "progress = NULL, progress_message = NULL WHERE id = ?"
)
Q_PROGRESS: Final = (
    "UPDATE jobs SET progress = ?, progress_message = ? "
    "WHERE id = ? AND status = 'running' AND attempts = ?"
)
Q_CANCEL_STATE: Final = "SELECT status FROM jobs WHERE id = ?"
Q_CANCEL_PENDING: Final = (
    "UPDATE jobs SET status = 'cancelled', finished_at = ?, error = 'cancelled before it ran' "
    "WHERE id = ?"
)
Q_REQUEST_CANCEL: Final = "UPDATE jobs SET cancel_requested = 1 WHERE id = ?"
Q_REQUEUE: Final = f"""
    UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?, started_at = NULL,
                    finished_at = NULL, result = NULL, error = NULL, progress = NULL,
                    progress_message = NULL, cancel_requested = 0
    WHERE id = ? AND status IN ({_sql_list(sources_of(Event.REQUEUE))})
"""
Q_PURGE: Final = f"DELETE FROM jobs WHERE status IN ({_sql_list(TERMINAL)}) AND finished_at <= ?"
Q_RECOVER: Final = """
    UPDATE jobs SET
        status = CASE WHEN cancel_requested THEN 'cancelled'
                      WHEN attempts >= max_attempts THEN 'failed'
                      ELSE 'pending' END,
        finished_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN ?1 END,
        started_at = CASE WHEN cancel_requested OR attempts >= max_attempts THEN started_at END,
        error = 'attempt ' || attempts || ' of ' || max_attempts
                || ' was interrupted: the process running it stopped without finishing it'
    WHERE status = 'running'
"""
Q_COUNT_BY_STATUS_NAME: Final = "SELECT status, name, count(*) FROM jobs GROUP BY status, name"
Q_RECENT_FINISHED: Final = """
    SELECT status, count(*), avg(finished_at - started_at) FROM jobs
    WHERE finished_at >= ? AND status IN ('completed', 'failed') GROUP BY status
"""
Q_OLDEST_PENDING: Final = (
    "SELECT min(created_at) FROM jobs WHERE status IN ('pending', 'scheduled')"
)


def row_to_job(row: Sequence[Any]) -> Job:
    """A :class:`Job` from a row selected as ``_COLUMNS``."""
    status = row[3]
    return Job(
        id=row[0],
        name=row[1],
        payload=json.loads(row[2]),
        status=JobStatus.PENDING if status == SCHEDULED else JobStatus(status),
        priority=row[4],
        attempts=row[5],
        max_attempts=row[6],
        run_at=row[7],
        created_at=row[8],
        started_at=row[9],
        finished_at=row[10],
        result=None if row[11] is None else json.loads(row[11]),
        error=row[12],
        progress=row[13],
        progress_message=row[14],
        timeout=row[15],
        idempotency_key=row[16],
    )


@attrs.frozen
class NewJob:
    """A validated job ready to insert: payload already JSON text, times resolved."""

    name: str
    payload_json: str
    payload: JSON
    priority: int
    max_attempts: int
    timeout: float | None
    run_at: float
    idempotency_key: str | None


@attrs.define
class Undone:
    """Set by :meth:`Writer.savepoint` when its block failed and was undone."""

    error: Exception | None = None


class CancelResult:
    NOT_CANCELLABLE: Final = "not_cancellable"
    CANCELLED: Final = "cancelled"
    RUNNING: Final = "running"


def _lock_path(path: str) -> str:
    return f"{path}.lock"


def _acquire_lock(path: str) -> int:
    fd = os.open(_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"{path} is already open for writing by another conveyor queue (in this or another "
            f"process); conveyor allows one writer per file: close the other queue first, or "
            f"talk to it over its HTTP API"
        ) from None
    return fd


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def read_identity(conn: sqlite3.Connection) -> tuple[int, int]:
    """The file's SQLite application id and schema version (0 and 0 for a new file)."""
    application_id: int = conn.execute("PRAGMA application_id").fetchone()[0]
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return application_id, version


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    try:
        application_id, version = read_identity(conn)
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[
            0
        ]
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path} is not a usable SQLite database: {exc}") from None
    if application_id not in (0, APPLICATION_ID) or (version == 0 and tables > 0):
        raise DatabaseError(
            f"{path} is a SQLite database, but not a conveyor one; refusing to use it"
        )
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}, newer than this conveyor understands "
            f"({SCHEMA_VERSION}); upgrade conveyor to open it"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def open_reader(path: str) -> sqlite3.Connection:
    """A read-only connection to the database at ``path``."""
    try:
        conn = _connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
        conn.execute("PRAGMA query_only = 1")
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open {path} for reading: {exc}") from None
    return conn


class Writer:
    """The one connection that writes, with the state only the writer may keep.

    Methods run inside a transaction the caller opened with :meth:`begin`; they never commit.
    ``pending_count`` (pending and scheduled jobs) is kept here, in step with every write.
    """

    def __init__(self, path: str, *, synchronous: Synchronous = "normal") -> None:
        self.path = path
        self._lock_fd = _acquire_lock(path)
        try:
            try:
                self._conn = _connect(path)
            except sqlite3.Error as exc:
                raise DatabaseError(f"cannot open {path}: {exc}") from None
            try:
                _migrate(self._conn, path)
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._reload_counters()

    def _reload_counters(self) -> None:
        self._next_id: int = self._conn.execute(Q_NEXT_ID).fetchone()[0]
        self.pending_count: int = self._conn.execute(Q_COUNT_PENDING).fetchone()[0]
        self.next_due: float | None = self._conn.execute(Q_NEXT_DUE).fetchone()[0]
        """When the earliest scheduled job becomes due (``None``: none is scheduled).

        Kept in step with every write, so claims look for due jobs only when some may be due.
        It may be early (a scheduled job was cancelled), never late.
        """

    def _schedule(self, run_at: float) -> None:
        if self.next_due is None or run_at < self.next_due:
            self.next_due = run_at

    def close(self) -> None:
        """Close the connection and release the file lock."""
        try:
            self._conn.execute("PRAGMA optimize")
            self._conn.close()
        finally:
            os.close(self._lock_fd)

    # --- transactions ----------------------------------------------------------------------
    def begin(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[Undone]:
        """Run the block's writes in a savepoint; if it raises, undo them and keep the error.

        The error is kept in the yielded :class:`Undone` instead of raised, except when the
        database itself fails (I/O, disk full, locked): that propagates, for the whole
        transaction to be rolled back.
        """
        undone = Undone()
        counters = (self._next_id, self.pending_count, self.next_due)
        self._conn.execute("SAVEPOINT command")
        try:
            yield undone
        except (sqlite3.OperationalError, sqlite3.InternalError, MemoryError):
            raise
        except Exception as exc:
            self._conn.execute("ROLLBACK TO command")
            self._conn.execute("RELEASE command")
            self._next_id, self.pending_count, self.next_due = counters
            undone.error = exc
        else:
            self._conn.execute("RELEASE command")

    def rollback(self) -> None:
        """Undo the open transaction, and the counters with it."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._reload_counters()

    # --- writes ----------------------------------------------------------------------------
    def recover_running(self, now: float) -> int:
        """Return jobs left ``running`` by a process that died; the attempt stays counted.

        A job with attempts left goes back to ``pending`` (keeping its place in line); one whose
        last attempt was interrupted becomes ``failed``; one whose cancel was requested becomes
        ``cancelled``. Returns how many jobs were recovered.
        """
        recovered = self._conn.execute(Q_RECOVER, (now,)).rowcount
        self.pending_count = self._conn.execute(Q_COUNT_PENDING).fetchone()[0]
        return recovered

    def name_of(self, job_id: int) -> str:
        """The handler name of an existing job."""
        name: str = self._conn.execute(Q_NAME_BY_ID, (job_id,)).fetchone()[0]
        return name

    def find_by_key(self, key: str) -> Job | None:
        row = self._conn.execute(Q_BY_KEY, (key,)).fetchone()
        return None if row is None else row_to_job(row)

    def insert(self, jobs: Iterable[NewJob], now: float) -> list[Job]:
        """Insert ``jobs`` (keys already checked to be free) and return them as stored."""
        rows = []
        created = []
        for new in jobs:
            job_id = self._next_id
            self._next_id += 1
            due = new.run_at <= now
            if not due:
                self._schedule(new.run_at)
            rows.append(
                (
                    job_id,
                    new.name,
                    new.payload_json,
                    "pending" if due else SCHEDULED,
                    new.priority,
                    new.max_attempts,
                    new.timeout,
                    new.run_at,
                    now,
                    new.idempotency_key,
                )
            )
            created.append(
                Job(
                    id=job_id,
                    name=new.name,
                    payload=new.payload,
                    status=JobStatus.PENDING,
                    priority=new.priority,
                    attempts=0,
                    max_attempts=new.max_attempts,
                    run_at=new.run_at,
                    created_at=now,
                    timeout=new.timeout,
                    idempotency_key=new.idempotency_key,
                )
            )
        self._conn.executemany(Q_INSERT, rows)
        self.pending_count += len(rows)
        return created

    def claim(self, limit: int, now: float) -> list[Job]:
        """Mark up to ``limit`` of the best due jobs ``running`` and return them in claim order."""
        if self.next_due is not None and self.next_due <= now:
            self._conn.execute(Q_PROMOTE_DUE, (now,))
            self.next_due = self._conn.execute(Q_NEXT_DUE).fetchone()[0]
        rows = self._conn.execute(Q_CLAIM, (now, limit)).fetchall()
        self.pending_count -= len(rows)
        jobs = [row_to_job(row) for row in rows]
        jobs.sort(key=lambda job: (job.priority, job.run_at, job.id))
        return jobs

    def record_progress(
        self, job_id: int, attempt: int, fraction: float, message: str | None
    ) -> None:
        self._conn.execute(Q_PROGRESS, (fraction, message, job_id, attempt))

    def record_outcome(
        self,
        job_id: int,
        attempt: int,
        now: float,
        *,
        kind: Literal["completed", "failed", "cancelled", "interrupted"],
        result_json: str | None = None,
        error: str | None = None,
        retry_delay: float | None = None,
        progress: tuple[float, str | None] | None = None,
    ) -> Change | None:
        """Record how attempt ``attempt`` of job ``job_id`` ended.

        ``failed`` with a ``retry_delay`` retries when attempts are left, else fails the job.
        A cancel requested while the job ran wins over any outcome. Returns ``None`` for a stale
        outcome (the job is no longer running that attempt), which changes nothing.
        """
        if kind == "completed" and progress is None:
            # The common case in one statement; anything unusual takes the general path below.
            done = self._conn.execute(
                Q_COMPLETE_IF_RUNNING, (result_json, now, job_id, attempt)
            ).fetchone()
            if done is not None:
                name, started_at = done
                return Change("completed", job_id, name, max(now - started_at, 0.0))
        state = self._conn.execute(Q_OUTCOME_STATE, (job_id,)).fetchone()
        if state is None or state[0] != "running" or state[1] != attempt:
            return None
        _, attempts, max_attempts, cancel_requested, name, _, started_at = state
        duration = None if started_at is None else max(now - started_at, 0.0)
        if progress is not None:
            self.record_progress(job_id, attempt, *progress)
        if cancel_requested or kind == "cancelled":
            self._conn.execute(Q_CANCELLED_WHILE_RUNNING, (now, "cancelled while running", job_id))
            return Change("cancelled", job_id, name, duration)
        if kind == "completed":
            self._conn.execute(Q_COMPLETE, (result_json, now, job_id))
            return Change("completed", job_id, name, duration)
        if kind == "interrupted":
            self._conn.execute(Q_INTERRUPT, (job_id,))
            self.pending_count += 1
            return Change("interrupted", job_id, name, duration)
        if retry_delay is not None and attempts < max_attempts:
            run_at = now + retry_delay
            status = "pending" if retry_delay <= 0 else SCHEDULED
            if status == SCHEDULED:
                self._schedule(run_at)
            self._conn.execute(Q_RETRY, (status, run_at, error, job_id))
            self.pending_count += 1
            return Change("retried", job_id, name, duration)
        self._conn.execute(Q_FAIL, (error, now, job_id))
        return Change("failed", job_id, name, duration)

    def cancel(self, job_id: int, now: float) -> str:
        """Cancel job ``job_id``: one of the :class:`CancelResult` values."""
        row = self._conn.execute(Q_CANCEL_STATE, (job_id,)).fetchone()
        if row is None:
            return CancelResult.NOT_CANCELLABLE
        status = row[0]
        if status in ("pending", SCHEDULED):
            self._conn.execute(Q_CANCEL_PENDING, (now, job_id))
            self.pending_count -= 1
            return CancelResult.CANCELLED
        if status == "running":
            self._conn.execute(Q_REQUEST_CANCEL, (job_id,))
            return CancelResult.RUNNING
        return CancelResult.NOT_CANCELLABLE

    def requeue(self, job_id: int, now: float) -> bool:
        """Move a ``failed`` or ``cancelled`` job back to ``pending`` with its attempts reset."""
        changed = self._conn.execute(Q_REQUEUE, (now, job_id)).rowcount
        self.pending_count += changed
        return changed == 1

    def purge(self, finished_before: float) -> int:
        """Delete terminal jobs that finished before ``finished_before``; how many."""
        return self._conn.execute(Q_PURGE, (finished_before,)).rowcount

    def touch(self) -> None:
        """A write that changes nothing, to prove the database takes writes."""
        self._conn.execute("UPDATE sqlite_sequence SET seq = seq WHERE 0")


# --- reads, on any connection -----------------------------------------------------------------
def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(Q_BY_ID, (job_id,)).fetchone()
    return None if row is None else row_to_job(row)


def list_jobs(
    conn: sqlite3.Connection,
    *,
    status: JobStatus | None,
    name: str | None,
    limit: int,
    before: int | None,
) -> list[Job]:
    """Jobs newest first, filtered by ``status`` and ``name``, with ids below ``before``."""
    clauses = []
    params: list[Any] = []
    if status is JobStatus.PENDING:
        clauses.append("status IN ('pending', 'scheduled')")
    elif status is not None:
        clauses.append("status = ?")
        params.append(status.value)
    if name is not None:
        clauses.append("name = ?")
        params.append(name)
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    params.append(limit)
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?", params
    ).fetchall()
    return [row_to_job(row) for row in rows]


@attrs.frozen
class Counts:
    """Raw counts behind :class:`conveyor.Stats`."""

    by_status_name: dict[tuple[JobStatus, str], int]
    recent: dict[JobStatus, tuple[int, float | None]]
    oldest_pending_created_at: float | None

    def by_status(self) -> dict[JobStatus, int]:
        """Every status, with how many jobs are in it."""
        totals = dict.fromkeys(JobStatus, 0)
        for (status, _), count in self.by_status_name.items():
            totals[status] += count
        return totals

    def by_name(self) -> dict[str, dict[JobStatus, int]]:
        """For each handler name, every status with how many of its jobs are in it."""
        totals: dict[str, dict[JobStatus, int]] = {}
        for (status, name), count in self.by_status_name.items():
            totals.setdefault(name, dict.fromkeys(JobStatus, 0))[status] += count
        return totals


def read_counts(conn: sqlite3.Connection, since: float) -> Counts:
    """Counts by status and name, and the jobs finished since ``since``, in one snapshot."""
    conn.execute("BEGIN")
    try:
        by_status_name: dict[tuple[JobStatus, str], int] = {}
        for status, name, count in conn.execute(Q_COUNT_BY_STATUS_NAME):
            key = (JobStatus.PENDING if status == SCHEDULED else JobStatus(status), name)
            by_status_name[key] = by_status_name.get(key, 0) + count
        recent = {
            JobStatus(status): (count, avg)
            for status, count, avg in conn.execute(Q_RECENT_FINISHED, (since,))
        }
        oldest = conn.execute(Q_OLDEST_PENDING).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    return Counts(by_status_name, recent, oldest)
