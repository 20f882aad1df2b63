"""SQLite persistence: the schema, every SQL statement conveyor runs, and the file lock.

Everything here is synchronous and runs on whichever thread the store actor gives it; one
:class:`Writer` is used by one thread at a time. Reads go through separate read-only
connections (:func:`open_reader`), which WAL lets see a consistent snapshot without blocking
the writer.

The SQL only carries out what the life cycle table (:func:`conveyor._job.decide`) answers: the
statuses a statement matches and sets come from it. A pending job whose ``run_at`` is still in
the future is stored with ``scheduled = 1`` (its status stays ``pending``): it stays out of the
ready index until a claim promotes it, so that the claim query never wades through jobs that
are not due yet.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import itertools
import json
import logging
import math
import operator
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeVar

import attrs

from .._errors import DatabaseError, DatabaseInUse, JobNotFound, SchemaTooNew
from .._events import Change, Changes, Inserted
from .._job import (
    JSON,
    TERMINAL,
    Event,
    Job,
    JobStatus,
    decide,
    end_attempt,
    sources_of,
)
from .._limits import Limits
from .._schedule import Cadence, CatchUp, Schedule, due_ticks

logger = logging.getLogger("conveyor")

T = TypeVar("T")

SCHEMA_VERSION: Final = 6
APPLICATION_ID: Final = 0x434F4E56  # "CONV": marks the file as a conveyor database

Synchronous = Literal["normal", "full"]


def _sql_list(statuses: Iterable[JobStatus]) -> str:
    """Statuses as a SQL list, so statements take them from the transition table (DESIGN §2)."""
    return ", ".join(f"'{status.value}'" for status in sorted(statuses))


def _status_allows(event: Event) -> str:
    """A condition on ``status``: the statuses ``event`` may happen in, from the table.

    A single status is written ``status = '...'``: SQLite uses a partial index only for the
    very term of the index's WHERE clause, and ``IN`` with one value is not that term.
    """
    sources = sources_of(event)
    if len(sources) == 1:
        (status,) = sources
        return f"status = '{status.value}'"
    return f"status IN ({_sql_list(sources)})"


_JOBS_TABLE_V2: Final = """
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        name             TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        status           TEXT    NOT NULL
                         CHECK (status IN ('cancelled', 'completed', 'failed', 'pending',
                                           'running')),
        -- 1 while pending and not due yet: storage for the claim index, not a status.
        scheduled        INTEGER NOT NULL DEFAULT 0
                         CHECK (scheduled = 0 OR (scheduled = 1 AND status = 'pending')),
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
        idempotency_key  TEXT
    );
    -- Keys are unique, and the many jobs without one cost no index entry.
    CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
    -- The priority queue: ready jobs in claim order.
    CREATE INDEX jobs_ready ON jobs (priority, run_at, id)
        WHERE status = 'pending' AND scheduled = 0;
    -- Jobs not due yet, by when they become due.
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE scheduled = 1;
    -- Finished jobs by age: statistics over the last minute, and purge.
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    -- The dead-letter list, newest first.
    CREATE INDEX jobs_failed ON jobs (id) WHERE status = 'failed';
    CREATE INDEX jobs_name ON jobs (name, id);
"""

_JOBS_TABLE: Final = f"""
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        name             TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        status           TEXT    NOT NULL CHECK (status IN ({_sql_list(JobStatus)})),
        -- 1 while pending and not due yet: storage for the claim index, not a status.
        scheduled        INTEGER NOT NULL DEFAULT 0
                         CHECK (scheduled = 0 OR (scheduled = 1 AND status = 'pending')),
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
        idempotency_key  TEXT,
        -- The ids it runs after, as a JSON list (NULL: none), indexed by job_deps.
        after            TEXT,
        -- Its dependencies not completed yet: it is 'waiting' while this is above 0.
        blockers         INTEGER NOT NULL DEFAULT 0,
        -- A waiting job's delay, counted from when it is released (NULL: none).
        delay            REAL,
        -- The dependency whose failure or cancel cancelled it: requeuing that one brings it back.
        cancelled_by     INTEGER,
        schedule_key     TEXT
    );
    -- Keys are unique, and the many jobs without one cost no index entry.
    CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
    -- The priority queue: ready jobs in claim order.
    CREATE INDEX jobs_ready ON jobs (priority, run_at, id)
        WHERE status = 'pending' AND scheduled = 0;
    -- Jobs not due yet, by when they become due.
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE scheduled = 1;
    -- Finished jobs by age: statistics over the last minute, and purge.
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    -- The dead-letter list, newest first.
    CREATE INDEX jobs_failed ON jobs (id) WHERE status = 'failed';
    CREATE INDEX jobs_name ON jobs (name, id);
    CREATE INDEX jobs_cancelled_by ON jobs (cancelled_by) WHERE cancelled_by IS NOT NULL;
    -- Who waits for whom: a job's dependents, found when it ends.
    CREATE TABLE job_deps (
        dep_id INTEGER NOT NULL,
        job_id INTEGER NOT NULL,
        PRIMARY KEY (dep_id, job_id)
    ) WITHOUT ROWID;
    CREATE TABLE schedules (
        key          TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        payload      TEXT NOT NULL,
        every        REAL,
        cron         TEXT,
        timezone     TEXT NOT NULL,
        catch_up     TEXT NOT NULL CHECK (catch_up IN ('latest', 'all', 'none')),
        priority     INTEGER NOT NULL,
        max_attempts INTEGER,
        timeout      REAL,
        next_run_at  REAL NOT NULL,
        last_run_at  REAL,
        last_job_id  INTEGER,
        paused       INTEGER NOT NULL DEFAULT 0,
        CHECK ((every IS NULL) != (cron IS NULL))
    );
    CREATE INDEX schedules_next ON schedules (next_run_at) WHERE NOT paused;
"""

_V1_COLUMNS: Final = (
    "id, name, payload, priority, attempts, max_attempts, timeout, run_at, created_at, "
    "started_at, finished_at, result, error, progress, progress_message, cancel_requested, "
    "idempotency_key"
)

_V2_COLUMNS: Final = f"{_V1_COLUMNS}, status, scheduled"

_LIMITS: Final = """
    -- Jobs of one handler and key: at most key_concurrency of them run at once.
    ALTER TABLE jobs ADD COLUMN concurrency_key TEXT;
    CREATE INDEX jobs_running ON jobs (name, concurrency_key) WHERE status = 'running';
    -- What is stored about a handler beyond its jobs: whether it is paused.
    CREATE TABLE handler_state (
        name   TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0
    );
    -- Recent starts of rate-limited handlers: the windows their limits count in.
    CREATE TABLE starts (
        name TEXT NOT NULL,
        at   REAL NOT NULL
    );
    CREATE INDEX starts_by_name ON starts (name, at)
"""

_OWNERS: Final = """
    -- The processes open on the file. Each claims jobs as their owner and keeps its lease
    -- by its heartbeat, and by the lock it holds on a file of its own beside this one.
    CREATE TABLE owners (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        pid          INTEGER NOT NULL,
        host         TEXT    NOT NULL,
        started_at   REAL    NOT NULL,
        heartbeat_at REAL    NOT NULL,
        -- Seconds without a heartbeat after which its jobs are taken over (its own setting).
        lease        REAL    NOT NULL,
        handlers     TEXT    NOT NULL,
        doorbell     TEXT
    );
    -- The owner that claimed the job's latest attempt: the fencing token, with the attempt.
    ALTER TABLE jobs ADD COLUMN owner INTEGER;
    -- When a process with this handler last opened the file, and the handler's defaults:
    -- producers check names by them and give the jobs they enqueue these defaults.
    ALTER TABLE handler_state ADD COLUMN declared_at REAL;
    ALTER TABLE handler_state ADD COLUMN max_attempts INTEGER;
    ALTER TABLE handler_state ADD COLUMN timeout REAL
"""

_TRACES: Final = """
    -- The W3C trace context of the span it was enqueued in, as JSON (the otel extra).
    ALTER TABLE jobs ADD COLUMN trace_context TEXT
"""

_CREATE: Final = f"{_JOBS_TABLE};{_LIMITS};{_OWNERS};{_TRACES}"
"""A new file gets the latest schema at once."""

_UPGRADES: Final[dict[int, str]] = {
    # Version 1 kept not-yet-due jobs under a hidden status 'scheduled'; version 2 keeps them
    # 'pending' with a storage flag, and takes the CHECK's statuses from the enum.
    2: f"""
    DROP INDEX jobs_ready;
    DROP INDEX jobs_scheduled;
    DROP INDEX jobs_finished;
    DROP INDEX jobs_failed;
    DROP INDEX jobs_name;
    ALTER TABLE jobs RENAME TO jobs_v1;
    {_JOBS_TABLE_V2};
    INSERT INTO jobs ({_V1_COLUMNS}, status, scheduled)
        SELECT {_V1_COLUMNS},
               CASE status WHEN 'scheduled' THEN 'pending' ELSE status END,
               status = 'scheduled'
        FROM jobs_v1;
    -- Keep the id high-water mark, so that ids of purged jobs are never given again.
    DELETE FROM sqlite_sequence WHERE name = 'jobs';
    UPDATE sqlite_sequence SET name = 'jobs' WHERE name = 'jobs_v1';
    DROP TABLE jobs_v1
    """,
    # Version 3 adds the 'waiting' status (so the CHECK changes and the table is rebuilt),
    # dependencies and schedules.
    3: f"""
    DROP INDEX jobs_ready;
    DROP INDEX jobs_scheduled;
    DROP INDEX jobs_finished;
    DROP INDEX jobs_failed;
    DROP INDEX jobs_name;
    DROP INDEX jobs_key;
    ALTER TABLE jobs RENAME TO jobs_v2;
    {_JOBS_TABLE};
    INSERT INTO jobs ({_V2_COLUMNS}) SELECT {_V2_COLUMNS} FROM jobs_v2;
    DELETE FROM sqlite_sequence WHERE name = 'jobs';
    UPDATE sqlite_sequence SET name = 'jobs' WHERE name = 'jobs_v2';
    DROP TABLE jobs_v2
    """,
    # Version 4: concurrency keys, paused handlers and rate-limit windows.
    4: _LIMITS,
    # Version 5: owners, their leases, and declared handlers: many processes on one file.
    5: _OWNERS,
    # Version 6: the trace context of the span a job was enqueued in. (Only a column added: a
    # process of version 5 may keep the file open, and writes its version back on a ping,
    # which is why an added column that is already there is skipped.)
    6: _TRACES,
}
"""``version -> statements`` that bring a file of ``version - 1`` to ``version``."""

_COLUMNS: Final = (
    "id, name, payload, status, priority, attempts, max_attempts, run_at, created_at, "
    "started_at, finished_at, result, error, progress, progress_message, timeout, idempotency_key, "
    "after, schedule_key, concurrency_key, trace_context"
)

_PENDING: Final = JobStatus.PENDING.value
_RUNNING: Final = JobStatus.RUNNING.value

# --- The statements, by name. -------------------------------------------------------------------
INSERT_COLUMNS: Final = (
    "id",
    "name",
    "payload",
    "status",
    "scheduled",
    "priority",
    "max_attempts",
    "timeout",
    "run_at",
    "created_at",
    "idempotency_key",
    "after",
    "blockers",
    "delay",
    "schedule_key",
    "concurrency_key",
    "trace_context",
)
"""The columns an inserted job's row gives, in the order of :func:`q_insert`'s values."""
NULLABLE_INSERT_COLUMNS: Final = tuple(
    INSERT_COLUMNS.index(column)
    for column in (
        "timeout",
        "idempotency_key",
        "after",
        "delay",
        "schedule_key",
        "concurrency_key",
        "trace_context",
    )
)
"""The positions in :data:`INSERT_COLUMNS` of the columns that may be ``NULL``."""


MAX_BOUND: Final = 999
"""Values bound to one statement at most: SQLite's limit before 3.32 (32,766 since)."""


@functools.lru_cache(maxsize=64)
def q_insert(columns: tuple[str, ...], rows: int = 1) -> str:
    """Inserts ``rows`` jobs, giving ``columns`` (the others take their defaults). One
    statement for many rows costs SQLite and the sqlite3 module about 40 % of what as many
    one-row statements do."""
    values = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO jobs ({', '.join(columns)}) VALUES {', '.join([values] * rows)}"


Q_INSERT_DEP: Final = "INSERT INTO job_deps (dep_id, job_id) VALUES (?, ?) ON CONFLICT DO NOTHING"
Q_HAS_DEPS: Final = "SELECT EXISTS (SELECT 1 FROM job_deps)"
Q_DEP_STATES: Final = "SELECT id, status, name FROM jobs WHERE id IN ({ids})"
Q_UNBLOCK: Final = f"""
    UPDATE jobs SET blockers = blockers - 1
    WHERE id IN (SELECT job_id FROM job_deps WHERE dep_id = ?) AND status = '{JobStatus.WAITING}'
"""
Q_RELEASE: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.WAITING, Event.RELEASED)}',
                    run_at = CASE WHEN delay IS NOT NULL THEN :now + delay
                                  WHEN run_at > :now THEN run_at ELSE :now END,
                    scheduled = CASE WHEN delay IS NULL AND run_at > :now THEN 1
                                     WHEN delay > 0 THEN 1 ELSE 0 END
    WHERE id IN (SELECT job_id FROM job_deps WHERE dep_id = :dep)
          AND status = '{JobStatus.WAITING}' AND blockers <= 0
    RETURNING id, name, run_at, scheduled
"""
"""Releases the waiting dependents of job ``:dep`` that wait for nothing else any more. (In
SQLite's UPDATE every expression reads the row as it was, so ``scheduled`` sees the old
``run_at``: both CASEs compute the same time.)"""
Q_CANCEL_DEPENDENTS: Final = f"""
    WITH RECURSIVE below(id) AS (
        SELECT job_id FROM job_deps WHERE dep_id = :dep
        UNION SELECT job_deps.job_id FROM job_deps JOIN below ON job_deps.dep_id = below.id
    )
    UPDATE jobs SET status = '{decide(JobStatus.WAITING, Event.CANCELLED)}',
                    finished_at = :now, error = :error, cancelled_by = :root
    WHERE id IN (SELECT id FROM below) AND status = '{JobStatus.WAITING}'
    RETURNING id, name
"""
"""Cancels every waiting job that depends on job ``:dep``, directly or through others."""
Q_REBLOCK: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.CANCELLED, Event.BLOCKED)}', finished_at = NULL,
                    error = NULL, cancelled_by = NULL
    WHERE cancelled_by = ? AND {_status_allows(Event.BLOCKED)}
    RETURNING id, name
"""
Q_FAILED_DEP_OF: Final = f"""
    SELECT jobs.id, jobs.status FROM job_deps JOIN jobs ON jobs.id = job_deps.dep_id
    WHERE job_deps.job_id = ?
          AND jobs.status IN ('{JobStatus.FAILED}', '{JobStatus.CANCELLED}')
    ORDER BY jobs.id LIMIT 1
"""
Q_RECOUNT_BLOCKERS: Final = f"""
    UPDATE jobs SET blockers = (
        SELECT count(*) FROM job_deps JOIN jobs AS dep ON dep.id = job_deps.dep_id
        WHERE job_deps.job_id = jobs.id AND dep.status != '{JobStatus.COMPLETED}'
    )
    WHERE id = ? RETURNING blockers
"""
"""Counts anew the unfinished dependencies of a job coming back from ``cancelled``: some may
have completed while it was cancelled, which was not counted then."""
Q_RESULTS: Final = "SELECT id, result FROM jobs WHERE id IN ({ids})"
Q_PURGE_DEPS: Final = (
    "DELETE FROM job_deps WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = job_deps.dep_id) "
    "OR NOT EXISTS (SELECT 1 FROM jobs WHERE id = job_deps.job_id)"
)
"""(``NOT EXISTS`` rather than ``NOT IN``: PostgreSQL plans the latter as a scan per row.)"""
_SCHEDULE_COLUMNS: Final = (
    "key, name, payload, every, cron, timezone, catch_up, priority, max_attempts, timeout, "
    "next_run_at, last_run_at, last_job_id, paused"
)
Q_UPSERT_SCHEDULE: Final = f"""
    INSERT INTO schedules ({_SCHEDULE_COLUMNS})
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0)
    ON CONFLICT (key) DO UPDATE SET
        name = excluded.name, payload = excluded.payload, every = excluded.every,
        cron = excluded.cron, timezone = excluded.timezone, catch_up = excluded.catch_up,
        priority = excluded.priority, max_attempts = excluded.max_attempts,
        timeout = excluded.timeout, next_run_at = excluded.next_run_at
    RETURNING {_SCHEDULE_COLUMNS}
"""
Q_DELETE_SCHEDULE: Final = "DELETE FROM schedules WHERE key = ?"
Q_DUE_SCHEDULES: Final = (
    f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE next_run_at <= ? AND NOT paused "
    "ORDER BY next_run_at, key"
)
Q_ADVANCE_SCHEDULE: Final = (
    "UPDATE schedules SET next_run_at = ?, last_run_at = coalesce(?, last_run_at), "
    "last_job_id = coalesce(?, last_job_id) WHERE key = ?"
)
Q_PAUSED: Final = "SELECT name FROM handler_state WHERE paused"
Q_SET_PAUSED: Final = """
    INSERT INTO handler_state (name, paused) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
"""
Q_RUNNING_BY_NAME: Final = (
    f"SELECT name, count(*) FROM jobs WHERE status = '{_RUNNING}' AND name IN ({{names}}) "
    "GROUP BY name"
)
Q_RUNNING_BY_KEY: Final = (
    f"SELECT count(*) FROM jobs WHERE status = '{_RUNNING}' AND name = ? AND concurrency_key = ?"
)
Q_FORGET_STARTS: Final = "DELETE FROM starts WHERE name = ? AND at <= ?"
Q_STARTS_IN_WINDOW: Final = "SELECT count(*), min(at) FROM starts WHERE name = ?"
Q_RECORD_START: Final = "INSERT INTO starts (name, at) VALUES (?, ?)"
Q_READY_IN_ORDER: Final = f"""
    SELECT id, name, concurrency_key FROM jobs
    WHERE {_status_allows(Event.STARTED)} AND scheduled = 0 AND +name IN ({{names}})
    ORDER BY priority, run_at, id
    LIMIT {{scan}}
"""
Q_CLAIM_IDS: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.PENDING, Event.STARTED)}',
                    attempts = attempts + 1, started_at = ?, owner = ?, progress = NULL,
                    progress_message = NULL
    WHERE id IN ({{ids}})
    RETURNING {_COLUMNS}
"""
CLAIM_SCAN_LIMIT: Final = 10_000
"""Ready jobs a claim with limits looks through at most: past them, the slots it could not
fill wait for the next claim."""
Q_NEXT_TICK: Final = "SELECT min(next_run_at) FROM schedules WHERE NOT paused"
Q_SCHEDULES: Final = f"SELECT {_SCHEDULE_COLUMNS} FROM schedules ORDER BY key"
Q_BY_KEY: Final = f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?"
Q_BY_ID: Final = f"SELECT {_COLUMNS} FROM jobs WHERE id = ?"
Q_NEXT_ID: Final = (
    "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0), "
    "coalesce((SELECT max(id) FROM jobs), 0)) + 1"
)
Q_COUNT_PENDING: Final = f"SELECT count(*) FROM jobs WHERE status = '{_PENDING}'"
Q_PROMOTE_DUE: Final = "UPDATE jobs SET scheduled = 0 WHERE scheduled = 1 AND run_at <= ?"
Q_NEXT_DUE: Final = "SELECT min(run_at) FROM jobs WHERE scheduled = 1"
Q_CLAIM: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.PENDING, Event.STARTED)}',
                    attempts = attempts + 1, started_at = ?, owner = ?, progress = NULL,
                    progress_message = NULL
    WHERE id IN (SELECT id FROM jobs
                 WHERE {_status_allows(Event.STARTED)} AND scheduled = 0
                       AND +name IN ({{names}})
                 ORDER BY priority, run_at, id LIMIT ?)
    RETURNING {_COLUMNS}
"""
"""Claims up to ``LIMIT`` of the best ready jobs of the handlers ``{names}`` for owner ``?``:
a process claims only jobs it has the handler of. (``+name`` keeps the planner on the ready
index, read in claim order, instead of the index by name and a sort of every match.)"""
Q_COMPLETE_ALL: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.RUNNING, Event.COMPLETED)}',
                    result = done.column3, finished_at = ?
    FROM (VALUES {{attempts}}) AS done
    WHERE jobs.id = done.column1 AND jobs.attempts = done.column2 AND jobs.owner = ?
          AND jobs.cancel_requested = 0 AND {_status_allows(Event.COMPLETED)}
    RETURNING jobs.id
"""
"""Completes many attempts in one statement: ``{attempts}`` is one ``(?, ?, ?)`` per attempt
(job id, attempt, result JSON), then the owner. Returns the ids of the jobs it completed: those
still running that attempt for that owner and not asked to cancel."""
COMPLETE_CHUNK: Final = 1000
"""Attempts completed per statement at most: 3,000 parameters, far below SQLite's limit."""
Q_ATTEMPT_STATE: Final = (
    "SELECT status, attempts, max_attempts, cancel_requested, owner FROM jobs WHERE id = ?"
)
Q_RUNNING_OF: Final = (
    "SELECT id, name, attempts, max_attempts, cancel_requested FROM jobs "
    f"WHERE status = '{_RUNNING}' AND owner IS NOT DISTINCT FROM ?"
)
"""The running jobs of an owner (``NULL``: claimed before owners were stored, version 4)."""
Q_CANCELS_OF: Final = (
    f"SELECT id FROM jobs WHERE status = '{_RUNNING}' AND owner = ? AND cancel_requested = 1"
)
Q_REGISTER: Final = (
    "INSERT INTO owners (pid, host, started_at, heartbeat_at, lease, handlers, doorbell) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id"
)
Q_OWNER_EXISTS: Final = "SELECT EXISTS (SELECT 1 FROM owners WHERE id = ?)"
Q_RUNNING_ABANDONED: Final = (
    "SELECT id, name, attempts, max_attempts, cancel_requested FROM jobs "
    f"WHERE status = '{_RUNNING}' AND owner IS NOT NULL "
    "AND owner NOT IN (SELECT id FROM owners)"
)
"""Running jobs whose owner is gone from the table: claimed by an owner as its row was being
taken over (a safety net: a writer checks its row before it claims)."""
Q_DOORBELLS: Final = "SELECT doorbell, handlers FROM owners WHERE id != ? AND doorbell IS NOT NULL"
Q_DECLARE: Final = """
    INSERT INTO handler_state (name, declared_at, max_attempts, timeout) VALUES (?, ?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET declared_at = excluded.declared_at,
                                     max_attempts = excluded.max_attempts,
                                     timeout = excluded.timeout
"""
Q_DECLARED: Final = (
    "SELECT name, max_attempts, timeout FROM handler_state WHERE declared_at IS NOT NULL"
)
Q_BEAT: Final = "UPDATE owners SET heartbeat_at = ? WHERE id = ?"
Q_OWNERS: Final = "SELECT id, pid, host, heartbeat_at, lease FROM owners ORDER BY id"
Q_DROP_OWNER: Final = "DELETE FROM owners WHERE id = ?"
Q_END_ATTEMPT: Final[dict[Event, str]] = {
    Event.COMPLETED: "UPDATE jobs SET status = ?, result = ?, finished_at = ? WHERE id = ?",
    Event.RETRIED: (
        "UPDATE jobs SET status = ?, scheduled = ?, run_at = ?, error = ?, started_at = NULL, "
        "priority = coalesce(?, priority) WHERE id = ?"
    ),
    Event.FAILED: "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
    Event.CANCELLED: "UPDATE jobs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
    Event.INTERRUPTED: (
        "UPDATE jobs SET status = ?, attempts = attempts - 1, started_at = NULL, "
        "progress = NULL, progress_message = NULL WHERE id = ?"
    ),
    Event.RECOVERED: "UPDATE jobs SET status = ?, error = ?, started_at = NULL WHERE id = ?",
}
"""How each event that ends an attempt is written; the status is :func:`decide`'s answer."""
Q_PROGRESS: Final = (
    "UPDATE jobs SET progress = ?, progress_message = ? "
    f"WHERE id = ? AND attempts = ? AND status = '{_RUNNING}' AND owner = ?"
)
Q_CANCEL_STATE: Final = "SELECT status, owner FROM jobs WHERE id = ?"
Q_CANCEL_QUEUED: Final = f"""
    UPDATE jobs SET status = '{decide(JobStatus.PENDING, Event.CANCELLED)}', scheduled = 0,
                    finished_at = ?, error = 'cancelled before it ran'
    WHERE id = ? RETURNING {_COLUMNS}
"""
Q_REQUEST_CANCEL: Final = "UPDATE jobs SET cancel_requested = 1 WHERE id = ?"
Q_REQUEUE: Final = f"""
    UPDATE jobs SET status = ?, scheduled = 0,
                    attempts = 0, run_at = ?, started_at = NULL, finished_at = NULL,
                    result = NULL, error = NULL, progress = NULL, progress_message = NULL,
                    cancel_requested = 0, cancelled_by = NULL
    WHERE id = ? AND {_status_allows(Event.REQUEUED)}
    RETURNING name
"""
Q_REQUEUE_STATE: Final = "SELECT status, blockers FROM jobs WHERE id = ?"
Q_IDS_BY_STATUS: Final = "SELECT id FROM jobs WHERE status IN ({statuses}) ORDER BY id"
Q_IDS_BY_STATUS_NAME: Final = (
    "SELECT id FROM jobs WHERE status IN ({statuses}) AND name = ? ORDER BY id"
)
Q_PURGE: Final = "DELETE FROM jobs WHERE status IN ({statuses}) AND finished_at <= ?"
_NO_WAITING_DEPENDENT: Final = """NOT EXISTS (
    SELECT 1 FROM job_deps JOIN jobs AS dependent ON dependent.id = job_deps.job_id
    WHERE job_deps.dep_id = purged.id AND dependent.status NOT IN ({statuses})
)"""
Q_PURGE_SOME: Final = f"""
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs AS purged WHERE status IN ({{statuses}}) AND finished_at <= ?
        AND {_NO_WAITING_DEPENDENT}
        ORDER BY finished_at LIMIT ?
    )
    RETURNING id, after
"""
"""At most ``LIMIT`` of the oldest of those jobs (a bounded DELETE, on both databases): a
purge in batches, each a short transaction on the jobs_finished index. A job that an
unfinished job runs after is kept: that job reads its result when it runs."""
Q_PURGE_DEPS_OF: Final = "DELETE FROM job_deps WHERE dep_id = ?"
Q_PURGE_DEP: Final = "DELETE FROM job_deps WHERE dep_id = ? AND job_id = ?"
"""The dependency rows of the jobs a bounded purge deleted, each found by its key (where
:data:`Q_PURGE_DEPS` scans the whole table): those where it was the dependency, and those of
the ids in its ``after``."""
Q_ANY_TO_PURGE: Final = f"""
    SELECT EXISTS (
        SELECT 1 FROM jobs AS purged WHERE status IN ({{statuses}}) AND finished_at <= ?
        AND {_NO_WAITING_DEPENDENT}
    )
"""
Q_TOUCH: Final = f"PRAGMA user_version = {SCHEMA_VERSION}"
"""Rewrites the header with what it holds: a real write (one WAL page), so that it proves the
database takes writes, as a write that changes nothing would not (it commits on a full disk)."""
Q_COUNT_BY_STATUS_NAME: Final = "SELECT status, name, count(*) FROM jobs GROUP BY status, name"
Q_RECENT_FINISHED: Final = f"""
    SELECT status, count(*),
           avg(CASE WHEN finished_at > started_at THEN finished_at - started_at ELSE 0 END)
    FROM jobs
    WHERE finished_at >= ? AND status IN ('{JobStatus.COMPLETED}', '{JobStatus.FAILED}')
    GROUP BY status
"""
"""Jobs finished since ``?``: how many, and their mean run time by the wall clock, each run
counted as 0 when the clock was stepped back during it."""
Q_OLDEST_PENDING: Final = f"SELECT min(created_at) FROM jobs WHERE status = '{_PENDING}'"
Q_MEAN_PENDING_RUN_AT: Final = f"SELECT avg(run_at) FROM jobs WHERE status = '{_PENDING}'"
Q_COUNT_FAILED_EARLY: Final = (
    f"SELECT count(*) FROM jobs WHERE status = '{JobStatus.FAILED}' AND attempts < max_attempts"
)
"""Failed jobs with attempts left: they raised ``Fail``, or their error was not retryable."""

RECOVERED_ERROR: Final = (
    "attempt {attempts} of {max_attempts} was interrupted: the process running it stopped "
    "without finishing it"
)
CANCELLED_ERROR: Final = "cancelled while running"


_STATUSES: Final = {status.value: status for status in JobStatus}


def _start_of_life(event: Event) -> tuple[JobStatus, str, bool]:
    status = decide(None, event)
    return status, status.value, status is JobStatus.PENDING


_ENQUEUED: Final = _start_of_life(Event.ENQUEUED)
_BLOCKED: Final = _start_of_life(Event.BLOCKED)
"""How an inserted job starts its life: ready (or scheduled), or waiting for others; with
the status's text, and whether it is pending (looked up once: an enum's ``value`` is not
cheap, and an insert asks for each job)."""


def _json(text: str) -> JSON:
    return None if text == "null" else json.loads(text)


def row_to_job(row: Sequence[Any]) -> Job:
    """A :class:`Job` from a row selected as ``_COLUMNS`` (which are in its field order:
    positional, a call costs ~0.4 µs less than with 21 keywords)."""
    result = row[11]
    return Job(
        row[0],
        row[1],
        _json(row[2]),
        _STATUSES[row[3]],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        None if result is None else _json(result),
        row[12],
        row[13],
        row[14],
        row[15],
        row[16],
        () if row[17] is None else tuple(json.loads(row[17])),
        row[18],
        row[19],
        row[20],
    )


@attrs.define
class NewJob:
    """A validated job ready to insert: payload already JSON text, times resolved.

    Not frozen, though nothing changes it once built: one is built per enqueued job, and a
    frozen class's ``__init__`` costs twice as much (1.3 against 0.6 µs for these fields).
    """

    name: str
    payload_json: str
    payload: JSON
    priority: int
    max_attempts: int
    timeout: float | None
    run_at: float
    idempotency_key: str | None
    after: tuple[int, ...] = ()
    """Ids of stored jobs it runs after."""
    after_steps: tuple[int, ...] = ()
    """Indices of earlier jobs of the same enqueue that it runs after (a workflow's steps)."""
    delay: float | None = None
    """The delay asked for, counted from its release if it has to wait."""
    schedule_key: str | None = None
    concurrency_key: str | None = None
    trace_context: str | None = None
    """The trace context of the enqueueing span (:func:`conveyor._tracing.current_context`)."""


@attrs.define
class Outcome:
    """How an attempt ended, as its runner saw it: what the pool reports to the store (not
    frozen, as :class:`NewJob`: one is built per attempt, and nothing changes it).

    ``job`` is the job as claimed (its ``attempts`` is the attempt's number, the fencing
    token); ``event`` is the runner's proposal, which :func:`end_attempt` settles against the
    stored state. ``retry_delay`` goes with ``retried``; ``progress`` is the handler's latest
    report, if it made one. ``duration`` is how long the attempt ran, measured by the runner on
    a monotonic clock (``None``: not measured; the wall clock's difference is used, clamped).
    """

    job: Job
    event: Event
    result_json: str | None = None
    error: str | None = None
    retry_delay: float = 0.0
    progress: tuple[float, str | None] | None = None
    duration: float | None = None
    retry_priority: int | None = None
    """The priority a retry runs at (``None``: unchanged)."""


@attrs.frozen
class LogNote:
    """A log record a write transaction makes, emitted once the transaction is committed (a
    batch rolled back and replayed makes its records again)."""

    level: int
    message: str
    args: tuple[object, ...]
    extra: dict[str, object]

    def emit(self) -> None:
        logger.log(self.level, self.message, *self.args, extra=self.extra)


def error_summary(error: str | None) -> str:
    """The one line of an attempt's error that says what happened (a traceback's last)."""
    lines = [line for line in (error or "").splitlines() if line.strip()]
    summary = lines[-1].strip() if lines else "no error text"
    return summary if len(summary) <= 200 else summary[:199] + "…"


@attrs.define
class Undone:
    """Set by :meth:`Writer.savepoint` when its block failed and was undone."""

    error: Exception | None = None


HandlerDefaults = tuple[int, float | None]
"""A handler's ``(max_attempts, timeout)``: what a job of it gets when its enqueue says not."""


class CancelResult:
    NOT_CANCELLABLE: Final = "not_cancellable"
    CANCELLED: Final = "cancelled"
    RUNNING: Final = "running"
    RUNNING_ELSEWHERE: Final = "running_elsewhere"
    """Running in another process: the cancel is requested, and that process told."""


def _final_job(
    job: Job,
    status: JobStatus,
    result_json: str | None,
    error: str | None,
    finished_at: float,
    progress: tuple[float, str | None] | None,
) -> Job:
    """The claimed ``job`` as the end of its attempt left it in the database."""
    fraction, message = progress if progress is not None else (job.progress, job.progress_message)
    return attrs.evolve(
        job,
        status=status,
        finished_at=finished_at,
        result=None if result_json is None else json.loads(result_json),
        error=error,
        progress=fraction,
        progress_message=message,
    )


def _lock_path(path: str) -> str:
    return f"{path}.lock"


def fenced_out(holder: int | None, owner: int | None) -> bool:
    """Whether an outcome from ``owner`` of an attempt that ``holder`` holds must be refused:
    with the attempt's number, the owner is the fencing token."""
    return holder != owner


def owner_lock_path(path: str, owner: int) -> str:
    """The file whose lock owner ``owner`` holds while its process lives."""
    return f"{path}.owner-{owner}.lock"


def _hold_owner_lock(path: str, owner: int) -> int:
    """Create and lock owner ``owner``'s file (a fresh id: nobody else has it); its fd."""
    fd = os.open(owner_lock_path(path, owner), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def owner_process_alive(path: str, owner: int) -> bool:
    """Whether owner ``owner``'s process still holds its lock. The kernel releases a dead
    process's locks at once, so this is exact for a process that died; a process that is
    stopped or hung still holds its lock, and only its heartbeat tells. A lock file that is
    missing (a cleaner of temporary files removed it) tells nothing: the heartbeat decides."""
    try:
        fd = os.open(owner_lock_path(path, owner), os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if this took it
    return False


NETWORK_FILESYSTEMS: Final = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "afs", "ceph", "glusterfs", "fuse.sshfs"}
)
"""File systems whose locks SQLite cannot rely on between processes (or hosts)."""


def filesystem_of(path: str) -> str | None:
    """The type of the file system holding ``path`` (from ``/proc/mounts``; ``None`` where
    there is no such file)."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    target = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    best: tuple[int, str] | None = None
    for entry in entries:
        if len(entry) < 3:
            continue
        mount = entry[1].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and (best is None or len(mount) > best[0]):
            best = (len(mount), entry[2])
    return None if best is None else best[1]


def _refuse_network_filesystem(path: str) -> None:
    kind = filesystem_of(path)
    if kind in NETWORK_FILESYSTEMS:
        raise DatabaseInUse(
            f"{path} is on a network file system ({kind}), whose locks SQLite cannot rely on "
            "between processes: put the file on a local disk (or use PostgreSQL for many hosts)"
        )


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _open_error(path: str, error: sqlite3.Error) -> DatabaseError:
    fault = classify_fault(error, path)
    return DatabaseError(f"cannot open {path}: {error}" if fault is None else fault.what)


_OPEN_ADVICE: Final = {
    errno.ENOENT: "its folder does not exist: create it first",
    errno.ENOTDIR: "a part of its path is not a folder",
    errno.EACCES: "permission denied: check the folder's permissions",
    errno.EPERM: "permission denied: check the folder's permissions",
    errno.EROFS: "its file system is read-only: conveyor needs to write beside the file",
    errno.ENOSPC: "the disk is full: free some space",
}


def _acquire_lock(path: str) -> int:
    lock = _lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        advice = _OPEN_ADVICE.get(exc.errno or 0, "check the path and its folder")
        raise DatabaseError(
            f"cannot open {path}: {exc.strerror} (creating its lock file {lock}); {advice}"
        ) from None
    try:
        # Shared: queues of this version share the file. A conveyor before schema version 5
        # locks it exclusively (it allowed one process per file): the two exclude each other.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"{path} is open in a process running an older conveyor, which allows one process "
            f"per file: stop it (or upgrade it) first"
        ) from None
    return fd


_sync_data: Final = getattr(os, "fdatasync", os.fsync)
"""Sync a file's data (and the size that reads it back), as SQLite does where it can."""

WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
"""Bytes the WAL file keeps once a checkpoint has emptied it."""

BUSY_TIMEOUT_MS: Final = 5000
"""How long a connection that may wait waits for another one's lock before it gives up."""


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class WriterBusy(Exception):
    """Another connection holds the write lock, and this transaction was not to wait for it."""


class FileGone(Exception):
    """The path no longer names the file the writer opened (deleted, moved or replaced)."""


@attrs.frozen
class Fault:
    """Why a write failed: ``what`` happened and what to do, and whether it ``passes``
    (retrying later may succeed) or the file cannot be used any more."""

    passes: bool
    what: str
    in_doubt: bool = False
    """The batch may have been committed after all (its commit's answer was lost)."""


def classify_fault(error: BaseException, path: str) -> Fault | None:
    """The fault of the database behind ``error``; ``None`` if ``error`` is not one (a bug)."""
    if isinstance(error, FileGone):
        return Fault(False, f"{error} while the queue had it open")
    if isinstance(error, OSError):
        return Fault(True, f"cannot look at {path} ({error}): check the folder's permissions")
    if isinstance(error, MemoryError):
        return Fault(True, "SQLite ran out of memory")
    if not isinstance(error, sqlite3.Error):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    primary = -1 if code is None else code & 0xFF
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return Fault(False, f"{path} is corrupt ({error}): restore it from a backup")
    if code == sqlite3.SQLITE_READONLY_DBMOVED:
        return Fault(False, f"{path} was moved or replaced while the queue had it open")
    locked = (
        f"another connection held its write lock for more than {BUSY_TIMEOUT_MS / 1000:g} s "
        "(a backup tool, an open sqlite3 shell?): end that transaction"
    )
    advice = {
        sqlite3.SQLITE_FULL: "the disk holding it is full: free some space",
        sqlite3.SQLITE_BUSY: locked,
        sqlite3.SQLITE_LOCKED: locked,
        sqlite3.SQLITE_IOERR: "an I/O error: check the disk and the file system",
        sqlite3.SQLITE_READONLY: (
            "the file cannot be written: check its permissions and that its file system is "
            "mounted read-write"
        ),
        sqlite3.SQLITE_CANTOPEN: "a file beside it (-wal, -shm) cannot be opened: check the folder",
        sqlite3.SQLITE_NOMEM: "SQLite ran out of memory",
    }.get(primary, "check the file and its disk")
    return Fault(True, f"writing to {path} failed ({error}); {advice}")


def read_identity(conn: sqlite3.Connection) -> tuple[int, int]:
    """The file's SQLite application id and schema version (0 and 0 for a new file)."""
    application_id: int = conn.execute("PRAGMA application_id").fetchone()[0]
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return application_id, version


_ADD_COLUMN: Final = re.compile(r"ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)", re.IGNORECASE)


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run the statements of ``script``, skipping an ``ADD COLUMN`` of a column already there
    (a process of the previous version may have written its version back meanwhile)."""
    for statement in script.split(";"):
        if not statement.strip():
            continue
        added = _ADD_COLUMN.search(statement)
        if added is not None and any(
            column[1] == added[2]
            for column in conn.execute(f"PRAGMA table_info({added[1]})").fetchall()
        ):
            continue
        conn.execute(statement)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    try:
        # One snapshot: another process may be creating the file meanwhile.
        conn.execute("BEGIN")
        try:
            application_id, version = read_identity(conn)
            tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            ).fetchone()[0]
        finally:
            conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_NOTADB:
            raise _open_error(path, exc) from None
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
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    # Another process may have created or upgraded the file while this one waited for the
    # write lock: what to do is decided again under it.
    _, version = read_identity(conn)
    if version >= SCHEMA_VERSION:
        conn.execute("ROLLBACK")
        _migrate(conn, path)
        return
    try:
        if version == 0:
            _run_script(conn, _CREATE)
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                _run_script(conn, _UPGRADES[target])
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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

    This is SQLite's; :class:`.postgres.PgWriter` runs the same logic and statements on
    PostgreSQL, overriding what differs (connection, transactions, owners' liveness, news).

    Methods run inside a transaction the caller opened with :meth:`begin`; they never commit.
    ``pending_count`` (pending jobs) and ``next_due`` are kept here, in step with every write,
    and reloaded from the file by :meth:`rollback`.

    The writer never checkpoints the WAL on its own (a checkpoint writes the database file and
    syncs it, which may take milliseconds): whoever drives it calls :meth:`checkpoint` where a
    pause is harmless.
    """

    faults: tuple[type[BaseException], ...] = (
        sqlite3.OperationalError,
        sqlite3.InternalError,
        MemoryError,
    )
    """Errors of the database itself (I/O, disk full, locked), not of one command."""
    errors: tuple[type[BaseException], ...] = (sqlite3.Error, FileGone)
    """Every error the database raises."""
    _wal_fd: int | None
    """The WAL, opened for :meth:`sync` (at ``synchronous="full"`` only)."""

    def __init__(self, path: str, *, synchronous: Synchronous = "normal") -> None:
        """Open (creating or upgrading) the database at ``path`` and take its shared lock.
        Other processes may write the file too; :meth:`register` makes this one an owner.

        Raises :class:`DatabaseInUse` if a process running an older conveyor holds the file,
        or the file is on a network file system, and :class:`DatabaseError` naming the file
        and what to do when it cannot be used.
        """
        self.path = path
        self.synchronous = synchronous
        _refuse_network_filesystem(path)
        self._lock_fd = _acquire_lock(path)
        self._init_state()
        try:
            try:
                self._conn = _connect(path)
            except sqlite3.Error as exc:
                raise _open_error(path, exc) from None
            try:
                _migrate(self._conn, path)
                self._conn.execute("PRAGMA journal_mode = WAL")
                # At "full" too: :meth:`sync` puts the commits on disk, off the event loop.
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._conn.execute("PRAGMA wal_autocheckpoint = 0")
                # After a checkpoint empties it, the WAL file is cut back to this size.
                self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
                self._conn.execute("PRAGMA busy_timeout = 0")
                self._identity = _file_identity(path)
                self._data_version = -1
                self._reload_counters()
                self._data_version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                # Read once the WAL is open (a read opens it): it stays while we have it open.
                self._wal_identity = _file_identity(f"{path}-wal")
                if synchronous == "full":
                    self._wal_fd = os.open(f"{path}-wal", os.O_RDONLY)
            except sqlite3.Error as exc:
                self._close_connection()
                raise _open_error(path, exc) from None
            except BaseException:
                self._close_connection()
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _init_state(self) -> None:
        """The state kept beside the connection, as it is before the first transaction."""
        self.owner: int | None = None
        """This process's owner id, once registered: the jobs it claims carry it."""
        self.names: tuple[str, ...] = ()
        """The handlers this process runs: it claims their jobs only."""
        self.handlers: dict[str, HandlerDefaults] = {}
        self._owner_fd: int | None = None
        self._retired = False
        self._claim_sql = ""
        self._doorbell: str | None = None
        self._doorbells: list[tuple[str, bool]] | None = None
        self.lease = math.inf
        """Seconds without a heartbeat after which others take this owner's jobs."""
        self.lease_lost = False
        """Another process took over this owner (its row is gone): found when a transaction
        begins after another process wrote; :meth:`reregister` makes it an owner again."""
        self._registered: tuple[int | None] | None = None
        """While a registration is not committed: the owner before it."""
        self._pending: int | None = None
        self.next_tick: float | None = None
        """The earliest next tick of a schedule (``None``: no schedule)."""
        self.paused: frozenset[str] = frozenset()
        """The handlers whose jobs are not claimed."""
        self.next_window: float | None = None
        """When a rate limit that held jobs back lets one start again."""
        self._has_deps = False
        self.next_due: float | None = None
        """When the earliest scheduled job becomes due (``None``: none is scheduled).

        Kept in step with every write, so claims look for due jobs only when some may
        be due. It may be early (a scheduled job was cancelled), never late.
        """
        self._known_next_id: int | None = None
        """The id the next insert gets, known once this connection inserted and as long as
        no other connection wrote (else read from the file: another process may insert)."""
        self._counters_stale = False
        self._wal_fd = None
        self.notes: list[LogNote] = []
        """The log records of the open transaction, for the store to emit after the commit."""

    def _schedule(self, run_at: float) -> None:
        if self.next_due is None or run_at < self.next_due:
            self.next_due = run_at

    def close(self) -> None:
        """Close the connection and release the file locks (and, once :meth:`retire` is
        committed, remove this owner's lock file). Without :meth:`retire`, as after a crash,
        another process finds the owner gone and rescues its running jobs."""
        try:
            with contextlib.suppress(sqlite3.Error):
                # Only a hint for the query planner: not worth failing a close over.
                self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._conn.execute("PRAGMA optimize")
            self._close_connection()
        finally:
            os.close(self._lock_fd)
            self._release_owner_lock(unlink=self._retired)

    def _close_connection(self) -> None:
        try:
            self._conn.close()
        finally:
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    def _hold_lock_of(self, owner: int) -> None:
        """Take the lock that tells others this process, owner ``owner``, is alive."""
        self._owner_fd = _hold_owner_lock(self.path, owner)

    def _owner_alive(self, owner: int) -> bool:
        """Whether owner ``owner``'s process still holds its lock (alive, as far as the lock
        tells)."""
        return owner_process_alive(self.path, owner)

    def _forget_lock_of(self, owner: int) -> None:
        """Remove what is left of the lock of owner ``owner``, taken over."""
        with contextlib.suppress(OSError):
            os.unlink(owner_lock_path(self.path, owner))

    def _release_owner_lock(self, *, unlink: bool) -> None:
        if self._owner_fd is None:
            return
        os.close(self._owner_fd)
        self._owner_fd = None
        if unlink and self.owner is not None:
            with contextlib.suppress(OSError):
                os.unlink(owner_lock_path(self.path, self.owner))

    # --- owners ------------------------------------------------------------------------------
    def register(
        self,
        now: float,
        handlers: Mapping[str, HandlerDefaults],
        doorbell: str | None = None,
        lease: float = math.inf,
    ) -> None:
        """Make this process an owner of the file that runs ``handlers`` (declared in the
        file with their defaults, for producers to check names against) and is woken at
        ``doorbell``, whose jobs others take over after ``lease`` seconds without a heartbeat,
        in the caller's transaction.

        Its lock is taken before the row is committed, so that no other process sees the
        owner without its lock; a rollback undoes both.
        """
        host = socket.gethostname()
        names = json.dumps(sorted(handlers))
        (owner,) = self._conn.execute(
            Q_REGISTER, (os.getpid(), host, now, now, lease, names, doorbell)
        ).fetchone()
        if self._registered is None:
            self._registered = (self.owner,)
        self._doorbell = doorbell
        self._doorbells = None
        self.lease = lease
        self.lease_lost = False
        self._release_owner_lock(unlink=True)
        self._hold_lock_of(owner)
        self.owner = owner
        self.handlers = dict(handlers)
        self.names = tuple(sorted(handlers))
        self._conn.executemany(Q_DECLARE, [(name, now, *handlers[name]) for name in self.names])
        marks = ", ".join("?" * len(self.names))
        self._claim_sql = Q_CLAIM.format(names=marks)

    def reregister(self, now: float) -> None:
        """Register again, as a new owner, after the lease was lost: the old id stays fenced
        out."""
        self.register(now, self.handlers, self._doorbell, self.lease)

    def beat(self, now: float) -> bool:
        """Renew this owner's lease; False if it was taken over (the row is gone)."""
        return self._conn.execute(Q_BEAT, (now, self.owner)).rowcount == 1

    def retire(self) -> None:
        """Remove this owner (a graceful stop), in the caller's transaction: its running
        jobs are back to ``pending`` already."""
        self._conn.execute(Q_DROP_OWNER, (self.owner,))
        self._retired = True

    def rescue(self, now: float) -> list[Change]:
        """End the attempts of the owners that are gone, as :meth:`recover_running` does at
        open, and remove them: those whose process died (its lock is free) or whose lease
        lapsed (no heartbeat for as long as its own lease: stopped, hung, or on a file system
        whose locks do not tell); and the running jobs of owners no longer in the table. The
        changes."""
        changes: list[Change] = self._recover(
            self._conn.execute(Q_RUNNING_ABANDONED).fetchall(), now
        )
        for owner, pid, host, heartbeat_at, lease in self._conn.execute(Q_OWNERS).fetchall():
            if owner == self.owner:
                continue
            alive = self._owner_alive(owner)
            if alive and heartbeat_at > now - lease:
                continue
            rows = self._conn.execute(Q_RUNNING_OF, (owner,)).fetchall()
            changes += self._recover(rows, now)
            self._conn.execute(Q_DROP_OWNER, (owner,))
            self._forget_lock_of(owner)
            why = (
                f"its lease lapsed (no heartbeat for {now - heartbeat_at:.1f} s)"
                if alive
                else "its process ended"
            )
            log = logger.warning if rows else logger.info
            log(
                "conveyor took over owner %d (process %d on %s): %s; its %d running jobs "
                "were interrupted (back to pending, or failed if it was their last attempt)",
                owner,
                pid,
                host,
                why,
                len(rows),
            )
        return changes

    def announce(self, rings: set[str]) -> list[tuple[str, bool]]:
        """Make the news ``rings`` (kinds of :mod:`.._doorbell`) reach the other processes
        once the transaction commits: the doorbells to ring after the commit."""
        return self.doorbells()

    def classify(self, error: BaseException) -> Fault | None:
        """What ``error``, raised by a write, says of the database (``None``: not a fault of
        the database itself)."""
        return classify_fault(error, self.path)

    def doorbells(self) -> list[tuple[str, bool]]:
        """The doorbells of the other owners, each with whether that owner runs handlers:
        read again only after another process wrote (an owner comes or goes only so)."""
        if self._doorbells is None:
            rows = self._conn.execute(Q_DOORBELLS, (self.owner,))
            self._doorbells = [(doorbell, handlers != "[]") for doorbell, handlers in rows]
        return self._doorbells

    def cancels_requested(self) -> list[int]:
        """The jobs this owner runs whose cancel was requested (by any process)."""
        return [row[0] for row in self._conn.execute(Q_CANCELS_OF, (self.owner,))]

    # --- transactions ----------------------------------------------------------------------
    def begin(self, *, wait: bool = True) -> None:
        """Open a write transaction. If another connection holds the write lock, wait up to
        :data:`BUSY_TIMEOUT_MS` for it, or, with ``wait=False``, raise :class:`WriterBusy` at
        once (nothing was done).

        Raises :class:`FileGone` if the path no longer names the file opened: in WAL mode
        SQLite would go on committing to the unlinked file, and every write would be lost.
        """
        if _file_identity(self.path) != self._identity:
            raise FileGone(f"{self.path} was deleted, moved or replaced")
        if _file_identity(f"{self.path}-wal") != self._wal_identity:
            # Its open handle still holds the frames: copy them into the file while it can.
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(FULL)")
            raise FileGone(f"{self.path}-wal was deleted, moved or replaced")
        if not wait:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                    raise WriterBusy(str(exc)) from None
                raise
        else:
            self._begin_waiting()
        # Another process's commit may have changed what the counters count.
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if self._counters_stale or version != self._data_version:
            self._data_version = version
            self._reload_counters()
            self._doorbells = None
            if self.owner is not None and not self.lease_lost:
                # Another process wrote: it may have taken this owner over.
                exists = self._conn.execute(Q_OWNER_EXISTS, (self.owner,)).fetchone()[0]
                self.lease_lost = not exists

    def _begin_waiting(self) -> None:
        """``BEGIN IMMEDIATE``, waiting up to :data:`BUSY_TIMEOUT_MS` for another connection's
        lock. It tries again after short sleeps (0.05 ms, doubling to 0.5 ms) rather than
        SQLite's own busy handler, which sleeps up to 100 ms at a time: the other writers are
        conveyor processes whose transactions last about a millisecond."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.00005
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.0005)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction around the block (waiting for another connection's lock):
        committed if the block returns, rolled back if it raises."""
        self.begin()
        try:
            yield
        except BaseException:
            self.rollback()
            raise
        self.commit()
        if self.syncs_after_commit:
            self.sync()

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, as far as readers allow."""
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def commit(self) -> None:
        """Commit the open transaction. With :attr:`syncs_after_commit`, it is on disk only
        after a later :meth:`sync`."""
        self._conn.execute("COMMIT")
        self._registered = None

    @property
    def syncs_after_commit(self) -> bool:
        """Whether a commit returns before it is on disk (``synchronous="full"``): whoever
        commits calls :meth:`sync` before telling anyone it is done."""
        return self._wal_fd is not None

    def sync(self) -> None:
        """Put every commit so far on disk: sync the WAL, which is what SQLite's own
        ``synchronous = FULL`` does inside each commit, holding its caller until the disk
        answers. Raises :class:`OSError` if the disk fails."""
        assert self._wal_fd is not None, "sync() is for synchronous='full'"
        _sync_data(self._wal_fd)

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[Undone]:
        """Run the block's writes in a savepoint; if it raises, undo them and keep the error.

        The error is kept in the yielded :class:`Undone` instead of raised, except when the
        database itself fails (I/O, disk full, locked): that propagates, for the whole
        transaction to be rolled back.
        """
        undone = Undone()
        counters = (self._pending, self.next_due, self._known_next_id)
        noted = len(self.notes)
        self._conn.execute("SAVEPOINT command")
        try:
            yield undone
        except self.faults:
            raise
        except Exception as exc:
            self._conn.execute("ROLLBACK TO command")
            self._conn.execute("RELEASE command")
            self._pending, self.next_due, self._known_next_id = counters
            del self.notes[noted:]
            undone.error = exc
        else:
            self._conn.execute("RELEASE command")

    def rollback(self) -> None:
        """Undo the open transaction, and the counters with it (reloaded now, or by the next
        :meth:`begin` if the database cannot be read at the moment)."""
        self._counters_stale = True
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        if self._registered is not None:
            # The registration is undone: this process is the owner it was before (if any).
            self._release_owner_lock(unlink=True)
            (self.owner,) = self._registered
            self._registered = None
            self.lease_lost = self.owner is not None
        with contextlib.suppress(*self.errors):
            self._reload_counters()

    @property
    def pending_count(self) -> int:
        """How many jobs are pending (counted when first needed after another process
        wrote: a count over the whole table)."""
        if self._pending is None:
            self._pending = self._conn.execute(Q_COUNT_PENDING).fetchone()[0]
        return self._pending

    def _add_pending(self, delta: int) -> None:
        if self._pending is not None:
            self._pending += delta

    def _reload_counters(self) -> None:
        self._pending = None
        self._known_next_id = None
        self.next_due = self._conn.execute(Q_NEXT_DUE).fetchone()[0]
        self.next_tick = self._conn.execute(Q_NEXT_TICK).fetchone()[0]
        self._has_deps = bool(self._conn.execute(Q_HAS_DEPS).fetchone()[0])
        self.paused = frozenset(row[0] for row in self._conn.execute(Q_PAUSED))
        self._counters_stale = False

    def next_wakeup_after(self, now: float) -> float | None:
        """The earliest of :attr:`next_due`, :attr:`next_tick` and :attr:`next_window` after
        ``now``: when the timer must wake next (``None``: nothing is ahead)."""
        times = [
            t
            for t in (self.next_due, self.next_tick, self.next_window)
            if t is not None and t > now
        ]
        return min(times) if times else None

    # --- writes ----------------------------------------------------------------------------
    def recover_running(self, now: float) -> list[Change]:
        """End the attempts left ``running`` by processes that are gone: those of the owners
        :meth:`rescue` finds gone, and those claimed before owners were stored (no process of
        that conveyor can be open beside this one). The changes.

        Each is settled by the life cycle table as ``recovered``: back to ``pending`` with the
        attempt counted (keeping its place in line), ``failed`` when it was the last attempt,
        ``cancelled`` when a cancel was requested.
        """
        orphans = self._conn.execute(Q_RUNNING_OF, (None,)).fetchall()
        return self._recover(orphans, now) + self.rescue(now)

    def _recover(self, rows: Sequence[Any], now: float) -> list[Change]:
        """Settle the attempts of ``rows`` (as :data:`Q_RUNNING_OF` selects them) as
        ``recovered``; the changes."""
        changes = []
        for job_id, name, attempts, max_attempts, cancel_requested in rows:
            event = end_attempt(
                Event.RECOVERED,
                attempts=attempts,
                max_attempts=max_attempts,
                cancel_requested=bool(cancel_requested),
            )
            error = RECOVERED_ERROR.format(attempts=attempts, max_attempts=max_attempts)
            status = self._write_end(
                event, job_id, now, result_json=None, error=error, retry_delay=0.0
            )
            changes.append(Change(event, job_id, name, status))
            changes += self._after_end(job_id, name, status, now)
        return changes

    def find_by_key(self, key: str) -> Job | None:
        row = self._conn.execute(Q_BY_KEY, (key,)).fetchone()
        return None if row is None else row_to_job(row)

    def _ids_used(self, last_id: int) -> None:
        """Ids up to ``last_id`` were given (SQLite's ``AUTOINCREMENT`` keeps the mark in the
        file too)."""
        self._known_next_id = last_id + 1

    def next_id(self) -> int:
        """The id the next inserted job gets (inside the transaction: nobody else can insert
        until it commits)."""
        if self._known_next_id is None:
            self._known_next_id = self._conn.execute(Q_NEXT_ID).fetchone()[0]
        return self._known_next_id

    def insert(
        self, jobs: Sequence[NewJob], now: float, first_id: int | None = None
    ) -> tuple[list[Job], Changes]:
        """Insert ``jobs`` (keys already checked to be free) with ids from ``first_id`` on;
        return them as stored, and the changes: each stored job, and the jobs cancelled
        because one they run after had already failed or been cancelled.

        A job runs after the stored jobs of its ``after`` and the jobs of this insert its
        ``after_steps`` point at. It is ``waiting`` while any of them has not completed.
        Raises :class:`JobNotFound` (before writing anything) if an ``after`` id is unknown.
        """
        if first_id is None:
            first_id = self.next_id()
        stored = {dep for new in jobs for dep in new.after}
        states = self._states_of(stored) if stored else {}
        rows = []
        deps = []
        created = []
        pending = 0
        due: float | None = None
        for job_id, new in enumerate(jobs, first_id):
            if new.after or new.after_steps:
                # Two steps answered by one job (a shared idempotency key) are one dependency.
                after = tuple(
                    dict.fromkeys((*new.after, *(first_id + step for step in new.after_steps)))
                )
                blockers = sum(
                    1
                    for dep in after
                    if dep >= first_id or states[dep][0] is not JobStatus.COMPLETED
                )
            else:
                after, blockers = (), 0
            status, status_text, ready = _BLOCKED if blockers else _ENQUEUED
            scheduled = ready and new.run_at > now
            if scheduled and (due is None or new.run_at < due):
                due = new.run_at
            pending += ready
            rows.append(
                (
                    job_id,
                    new.name,
                    new.payload_json,
                    status_text,
                    int(scheduled),
                    new.priority,
                    new.max_attempts,
                    new.timeout,
                    new.run_at,
                    now,
                    new.idempotency_key,
                    json.dumps(after) if after else None,
                    blockers,
                    new.delay,
                    new.schedule_key,
                    new.concurrency_key,
                    new.trace_context,
                )
            )
            if after:
                deps += [(dep, job_id) for dep in after]
            # Positional, in Job's field order: 15 keywords cost ~0.4 µs a job more to match.
            created.append(
                Job(
                    job_id,
                    new.name,
                    new.payload,
                    status,
                    new.priority,
                    0,  # attempts
                    new.max_attempts,
                    new.run_at,
                    now,  # created_at
                    None,  # started_at
                    None,  # finished_at
                    None,  # result
                    None,  # error
                    None,  # progress
                    None,  # progress_message
                    new.timeout,
                    new.idempotency_key,
                    after,
                    new.schedule_key,
                    new.concurrency_key,
                    new.trace_context,
                )
            )
        changes = Changes()
        changes += Inserted(created)  # made into changes only if a listener reads them
        if due is not None:
            self._schedule(due)
        self._insert_rows(rows)
        self._ids_used(first_id + len(jobs) - 1)
        self._add_pending(pending)
        if deps:
            self._conn.executemany(Q_INSERT_DEP, deps)
            self._has_deps = True
            cancelled: set[int] = set()
            for dep, (status, name) in sorted(states.items()):
                if status in (JobStatus.FAILED, JobStatus.CANCELLED):
                    ended = self._cancel_dependents(dep, name, status, now)
                    cancelled.update(change.job_id for change in ended)
                    changes += ended
            if cancelled:
                # Answer with the jobs as this transaction leaves them.
                created = [
                    _read_job(self._conn, job.id) if job.id in cancelled else job for job in created
                ]
        return created, changes

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (of :data:`INSERT_COLUMNS`), as many a statement as may be bound."""
        columns, rows = without_null_columns(rows)
        per = MAX_BOUND // len(columns)
        whole = len(rows) - len(rows) % per
        if whole:
            statement = q_insert(columns, per)
            for start in range(0, whole, per):
                values = list(itertools.chain.from_iterable(rows[start : start + per]))
                self._conn.execute(statement, values)
        if whole < len(rows):
            self._conn.executemany(q_insert(columns), rows[whole:])

    def _states_of(self, ids: Iterable[int]) -> dict[int, tuple[JobStatus, str]]:
        """The status and name of each job of ``ids``; :class:`JobNotFound` if one is unknown."""
        wanted = sorted(ids)
        states: dict[int, tuple[JobStatus, str]] = {}
        for start in range(0, len(wanted), COMPLETE_CHUNK):
            chunk = wanted[start : start + COMPLETE_CHUNK]
            statement = Q_DEP_STATES.format(ids=", ".join("?" * len(chunk)))
            for job_id, status, name in self._conn.execute(statement, chunk):
                states[job_id] = (_STATUSES[status], name)
        missing = [job_id for job_id in wanted if job_id not in states]
        if missing:
            raise JobNotFound(
                f"after names jobs that do not exist: {', '.join(map(str, missing[:10]))}"
            )
        return states

    def dependency_results(self, jobs: Sequence[Job]) -> dict[int, dict[int, JSON]]:
        """For each of ``jobs`` that runs after others: each dependency's id and result."""
        wanted = {dep for job in jobs for dep in job.after}
        if not wanted:
            return {}
        results: dict[int, JSON] = {}
        ids = sorted(wanted)
        for start in range(0, len(ids), COMPLETE_CHUNK):
            chunk = ids[start : start + COMPLETE_CHUNK]
            statement = Q_RESULTS.format(ids=", ".join("?" * len(chunk)))
            for job_id, result in self._conn.execute(statement, chunk):
                results[job_id] = None if result is None else _json(result)
        return {job.id: {dep: results.get(dep) for dep in job.after} for job in jobs if job.after}

    def _after_end(self, job_id: int, name: str, status: JobStatus, now: float) -> list[Change]:
        """What a job ending in ``status`` does to the jobs that run after it: releases them
        when it completed, cancels them (transitively) when it failed or was cancelled."""
        if not self._has_deps:
            return []
        if status is JobStatus.COMPLETED:
            return self._release_dependents(job_id, now)
        if status in (JobStatus.FAILED, JobStatus.CANCELLED):
            return self._cancel_dependents(job_id, name, status, now)
        return []

    def _release_dependents(self, job_id: int, now: float) -> list[Change]:
        self._conn.execute(Q_UNBLOCK, (job_id,))
        changes = []
        for dependent, name, run_at, scheduled in self._conn.execute(
            Q_RELEASE, {"now": now, "dep": job_id}
        ).fetchall():
            if scheduled:
                self._schedule(run_at)
            self._add_pending(1)
            changes.append(Change(Event.RELEASED, dependent, name, JobStatus.PENDING))
        return changes

    def _cancel_dependents(
        self, job_id: int, name: str, status: JobStatus, now: float
    ) -> list[Change]:
        root = self._conn.execute("SELECT cancelled_by FROM jobs WHERE id = ?", (job_id,))
        cause = root.fetchone()
        error = f"cancelled: it runs after job {job_id} ({name!r}), which ended {status}"
        rows = self._conn.execute(
            Q_CANCEL_DEPENDENTS,
            {
                "dep": job_id,
                "now": now,
                "error": error,
                "root": job_id if cause is None or cause[0] is None else cause[0],
            },
        ).fetchall()
        return [
            Change(Event.CANCELLED, dependent, dependent_name, JobStatus.CANCELLED)
            for dependent, dependent_name in rows
        ]

    def claim(
        self, limit: int, now: float, limits: Mapping[str, Limits] | None = None
    ) -> list[Job]:
        """Start an attempt of up to ``limit`` of the best due jobs; return them in claim order.

        Jobs of paused handlers are left alone; so are jobs ``limits`` (by handler name) holds
        back, which keep their place while the jobs after them are claimed. When a rate limit
        holds jobs back, :attr:`next_window` says when it lets one start again.
        """
        if self.next_due is not None and self.next_due <= now:
            self._conn.execute(Q_PROMOTE_DUE, (now,))
            self.next_due = self._conn.execute(Q_NEXT_DUE).fetchone()[0]
        if not self.names:
            return []
        limited = {name: lim for name, lim in (limits or {}).items() if lim.limits_claims}
        if limited:
            rows = self._claim_within_limits(limit, now, limited)
        elif self.paused:
            claimable = [name for name in self.names if name not in self.paused]
            statement = Q_CLAIM.format(names=", ".join("?" * len(claimable)))
            params = (now, self.owner, *claimable, limit)
            rows = self._conn.execute(statement, params).fetchall() if claimable else []
        else:
            params = (now, self.owner, *self.names, limit)
            rows = self._conn.execute(self._claim_sql, params).fetchall()
        self._add_pending(-len(rows))
        jobs = [row_to_job(row) for row in rows]
        jobs.sort(key=lambda job: (job.priority, job.run_at, job.id))
        return jobs

    def _claim_within_limits(
        self, limit: int, now: float, limits: Mapping[str, Limits]
    ) -> list[Any]:
        """The claim's rows when limits or pauses apply: the ready jobs are read in claim
        order and taken while their handler's (and key's) room lasts."""
        room = self._room(now, limits)
        by_key: dict[tuple[str, str], int] = {}
        picked: list[int] = []
        started: list[tuple[str, float]] = []
        claimable = [name for name in self.names if name not in self.paused]
        if not claimable:
            return []
        statement = Q_READY_IN_ORDER.format(
            names=", ".join("?" * len(claimable)), scan=CLAIM_SCAN_LIMIT
        )
        ready = self._conn.execute(statement, claimable)
        for scanned, (job_id, name, key) in enumerate(ready):
            if len(picked) == limit or scanned == CLAIM_SCAN_LIMIT:
                break
            if room.get(name, 1) <= 0:
                continue
            lim = limits.get(name)
            if lim is not None and lim.key_concurrency is not None and key is not None:
                if (name, key) not in by_key:
                    by_key[name, key] = self._conn.execute(
                        Q_RUNNING_BY_KEY, (name, key)
                    ).fetchone()[0]
                if by_key[name, key] >= lim.key_concurrency:
                    continue
                by_key[name, key] += 1
            if name in room:
                room[name] -= 1
            if lim is not None and lim.rate is not None:
                started.append((name, now))
            picked.append(job_id)
        ready.close()
        if started:
            self._conn.executemany(Q_RECORD_START, started)
            self._note_windows_filled({name for name, _ in started}, room, limits)
        if not picked:
            return []
        statement = Q_CLAIM_IDS.format(ids=", ".join("?" * len(picked)))
        return self._conn.execute(statement, [now, self.owner, *picked]).fetchall()

    def _note_windows_filled(
        self, names: set[str], room: Mapping[str, float], limits: Mapping[str, Limits]
    ) -> None:
        """The rate windows of ``names`` this claim's own starts filled: :attr:`next_window`
        says when the first of them opens again, for the jobs they hold back."""
        for name in names:
            rate = limits[name].rate
            if rate is None or room.get(name, 1) > 0:
                continue
            _, oldest = self._conn.execute(Q_STARTS_IN_WINDOW, (name,)).fetchone()
            opens = oldest + rate[1]
            if self.next_window is None or opens < self.next_window:
                self.next_window = opens

    def _room(self, now: float, limits: Mapping[str, Limits]) -> dict[str, float]:
        """How many more jobs of each limited handler may start now."""
        names = sorted(limits)
        running = (
            dict(
                self._conn.execute(
                    Q_RUNNING_BY_NAME.format(names=", ".join("?" * len(names))), names
                ).fetchall()
            )
            if names
            else {}
        )
        room: dict[str, float] = {}
        self.next_window = None
        for name, lim in limits.items():
            room[name] = math.inf
            if lim.concurrency is not None:
                room[name] = lim.concurrency - running.get(name, 0)
            if lim.rate is not None:
                count, window = lim.rate
                self._conn.execute(Q_FORGET_STARTS, (name, now - window))
                recent, oldest = self._conn.execute(Q_STARTS_IN_WINDOW, (name,)).fetchone()
                room[name] = min(room[name], count - recent)
                if count - recent <= 0:
                    opens = oldest + window
                    if self.next_window is None or opens < self.next_window:
                        self.next_window = opens
        return room

    def set_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume handler ``name``; whether that changed anything."""
        if (name in self.paused) == paused:
            return False
        self._conn.execute(Q_SET_PAUSED, (name, paused))
        self.paused = self.paused | {name} if paused else self.paused - {name}
        return True

    def record_progress(self, reports: Sequence[tuple[float, str | None, int, int]]) -> None:
        """Write ``(fraction, message, job id, attempt)`` reports of attempts this owner still
        runs."""
        self._conn.executemany(Q_PROGRESS, [(*report, self.owner) for report in reports])

    def end_attempts(self, outcomes: Sequence[Outcome], now: float) -> list[Change]:
        """Record how each attempt of ``outcomes`` ended; the changes, in order.

        An outcome of an attempt that is no longer running (a stale one: the job was
        recovered, or it is another attempt now) changes nothing and is logged. Plain
        completions, the common case, are written by one statement for the whole batch.
        """
        plain = [o for o in outcomes if o.event is Event.COMPLETED and o.progress is None]
        done = self._complete_all(plain, now) if plain else set()
        changes = [_completed(outcome, now) for outcome in plain if outcome.job.id in done]
        for outcome in outcomes:
            if outcome.job.id not in done:
                change = self._end_attempt(outcome, now)
                if change is not None:
                    changes.append(change)
        if self._has_deps:
            for change in list(changes):
                changes += self._after_end(change.job_id, change.name, change.status, now)
        return changes

    def _complete_all(self, outcomes: Sequence[Outcome], now: float) -> set[int]:
        """Complete the attempts of ``outcomes`` that are still running and not asked to
        cancel; their job ids."""
        done: set[int] = set()
        for start in range(0, len(outcomes), COMPLETE_CHUNK):
            chunk = outcomes[start : start + COMPLETE_CHUNK]
            params: list[object] = [now]
            for outcome in chunk:
                params += (outcome.job.id, outcome.job.attempts, outcome.result_json)
            params.append(self.owner)
            statement = Q_COMPLETE_ALL.format(attempts=", ".join(["(?, ?, ?)"] * len(chunk)))
            done.update(row[0] for row in self._conn.execute(statement, params))
        return done

    def _end_attempt(self, outcome: Outcome, now: float) -> Change | None:
        job = outcome.job
        state = self._conn.execute(Q_ATTEMPT_STATE, (job.id,)).fetchone()
        if state is None or state[0] != _RUNNING or state[1] != job.attempts:
            logger.info(
                "ignored a stale outcome (%s) of job %d attempt %d: the job is no longer "
                "running that attempt",
                outcome.event,
                job.id,
                job.attempts,
            )
            return None
        _, attempts, max_attempts, cancel_requested, owner = state
        if fenced_out(owner, self.owner):
            logger.warning(
                "refused the outcome (%s) of job %d attempt %d: owner %s lost its lease and "
                "the job was taken over by owner %s",
                outcome.event,
                job.id,
                job.attempts,
                self.owner,
                owner,
            )
            return None
        event = end_attempt(
            outcome.event,
            attempts=attempts,
            max_attempts=max_attempts,
            cancel_requested=bool(cancel_requested),
        )
        if outcome.progress is not None:
            self.record_progress([(*outcome.progress, job.id, job.attempts)])
        error = CANCELLED_ERROR if event is Event.CANCELLED else outcome.error
        result_json = outcome.result_json if event is Event.COMPLETED else None
        status = self._write_end(
            event,
            job.id,
            now,
            result_json=result_json,
            error=error,
            retry_delay=outcome.retry_delay,
            retry_priority=outcome.retry_priority,
        )
        self._note_end(job, event, attempts, max_attempts, error, outcome.retry_delay)
        duration = _attempt_duration(outcome, now)
        # A completion keeps the error of the failure before it, as the row does.
        stored_error = job.error if event is Event.COMPLETED else error
        final = (
            functools.partial(
                _final_job, job, status, result_json, stored_error, now, outcome.progress
            )
            if status.is_terminal
            else None
        )
        return Change(event, job.id, job.name, status, duration, None, final)

    def _note_end(
        self,
        job: Job,
        event: Event,
        attempt: int,
        max_attempts: int,
        error: str | None,
        retry_delay: float,
    ) -> None:
        """Note what an operator wants to know of an attempt's end: a failure that will be
        retried (INFO), a job that failed for good (WARNING), a running job cancelled (INFO)."""
        extra: dict[str, object] = {
            "conveyor_job": job.id,
            "conveyor_handler": job.name,
            "conveyor_attempt": attempt,
            "conveyor_event": str(event),
        }
        if event is Event.RETRIED:
            self.notes.append(
                LogNote(
                    logging.INFO,
                    "job %d (%s) attempt %d of %d failed: %s; it runs again in %.2f s",
                    (job.id, job.name, attempt, max_attempts, error_summary(error), retry_delay),
                    extra,
                )
            )
        elif event is Event.FAILED:
            self.notes.append(
                LogNote(
                    logging.WARNING,
                    "job %d (%s) failed for good at attempt %d of %d, dead-lettered: %s",
                    (job.id, job.name, attempt, max_attempts, error_summary(error)),
                    extra,
                )
            )
        elif event is Event.CANCELLED:
            self.notes.append(
                LogNote(
                    logging.INFO,
                    "job %d (%s) was cancelled while running attempt %d",
                    (job.id, job.name, attempt),
                    extra,
                )
            )

    def _write_end(
        self,
        event: Event,
        job_id: int,
        now: float,
        *,
        result_json: str | None,
        error: str | None,
        retry_delay: float,
        retry_priority: int | None = None,
    ) -> JobStatus:
        """Write the end of a running attempt as ``event``; the job's new status."""
        status = decide(JobStatus.RUNNING, event)
        statement = Q_END_ATTEMPT[event]
        if event is Event.COMPLETED:
            self._conn.execute(statement, (status, result_json, now, job_id))
        elif event is Event.RETRIED:
            run_at = now + retry_delay
            scheduled = retry_delay > 0
            if scheduled:
                self._schedule(run_at)
            self._conn.execute(
                statement, (status, scheduled, run_at, error, retry_priority, job_id)
            )
        elif event in (Event.FAILED, Event.CANCELLED):
            self._conn.execute(statement, (status, error, now, job_id))
        elif event is Event.INTERRUPTED:
            self._conn.execute(statement, (status, job_id))
        else:
            self._conn.execute(statement, (status, error, job_id))
        if status is JobStatus.PENDING:
            self._add_pending(1)
        return status

    def cancel(self, job_id: int, now: float) -> tuple[str, list[Change]]:
        """Cancel job ``job_id``: a :class:`CancelResult` value, and the changes if it ended
        (the jobs that run after it are cancelled with it).

        A pending or waiting job is cancelled at once. For a running one the cancel is only
        requested here: the attempt's end, whatever the handler did, is then settled as
        ``cancelled``.
        """
        row = self._conn.execute(Q_CANCEL_STATE, (job_id,)).fetchone()
        if row is None:
            return CancelResult.NOT_CANCELLABLE, []
        status = JobStatus(row[0])
        if status is JobStatus.RUNNING and row[1] != self.owner:
            self._conn.execute(Q_REQUEST_CANCEL, (job_id,))
            return CancelResult.RUNNING_ELSEWHERE, []
        if status in (JobStatus.PENDING, JobStatus.WAITING):
            job = row_to_job(self._conn.execute(Q_CANCEL_QUEUED, (now, job_id)).fetchone())
            if status is JobStatus.PENDING:
                self._add_pending(-1)
            change = Change(Event.CANCELLED, job_id, job.name, job.status, final=lambda: job)
            return CancelResult.CANCELLED, [
                change,
                *self._after_end(job_id, job.name, job.status, now),
            ]
        if status is JobStatus.RUNNING:
            self._conn.execute(Q_REQUEST_CANCEL, (job_id,))
            return CancelResult.RUNNING, []
        return CancelResult.NOT_CANCELLABLE, []

    def requeue(self, job_id: int, now: float) -> list[Change]:
        """Move a ``failed`` or ``cancelled`` job back to ``pending`` (``waiting`` if jobs it
        runs after have not completed) with its attempts reset, and the jobs its end cancelled
        back to ``waiting``; the changes (none: it was in another status, or a job it runs
        after failed or was cancelled, which is the one to requeue)."""
        state = self._conn.execute(Q_REQUEUE_STATE, (job_id,)).fetchone()
        if state is None or _STATUSES[state[0]] not in sources_of(Event.REQUEUED):
            return []
        blockers = state[1]
        if self._has_deps:
            if self._conn.execute(Q_FAILED_DEP_OF, (job_id,)).fetchone():
                return []
            (blockers,) = self._conn.execute(Q_RECOUNT_BLOCKERS, (job_id,)).fetchone()
        event = Event.BLOCKED if blockers > 0 else Event.REQUEUED
        status = decide(_STATUSES[state[0]], event)
        (name,) = self._conn.execute(Q_REQUEUE, (status, now, job_id)).fetchone()
        if status is JobStatus.PENDING:
            self._add_pending(1)
        changes = [Change(event, job_id, name, status)]
        if self._has_deps:
            changes += self._reblock_dependents(job_id, now)
        return changes

    def _reblock_dependents(self, job_id: int, now: float) -> list[Change]:
        """Bring the jobs that job ``job_id``'s end cancelled back to ``waiting``; those that
        also run after another failed or cancelled job are cancelled again, by that one."""
        # In id order: which other job cancels a dependent again must not depend on the
        # order a database returns rows in.
        rows = sorted(self._conn.execute(Q_REBLOCK, (job_id,)).fetchall())
        changes = [Change(Event.BLOCKED, dep, name, JobStatus.WAITING) for dep, name in rows]
        for dependent, _ in rows:
            self._conn.execute(Q_RECOUNT_BLOCKERS, (dependent,))
        for dependent, _ in rows:
            other = self._conn.execute(Q_FAILED_DEP_OF, (dependent,)).fetchone()
            if other is not None:
                (other_name,) = self._conn.execute(
                    "SELECT name FROM jobs WHERE id = ?", (other[0],)
                ).fetchone()
                changes += self._cancel_dependents(other[0], other_name, _STATUSES[other[1]], now)
        return changes

    def queued_ids(self, statuses: Iterable[JobStatus], name: str | None) -> list[int]:
        """Ids of the jobs in ``statuses`` (of handler ``name`` only, if given), oldest first."""
        listed = _sql_list(statuses)
        if name is None:
            rows = self._conn.execute(Q_IDS_BY_STATUS.format(statuses=listed))
        else:
            rows = self._conn.execute(Q_IDS_BY_STATUS_NAME.format(statuses=listed), (name,))
        return [row[0] for row in rows]

    def purge(
        self,
        finished_before: float,
        statuses: Iterable[JobStatus] = TERMINAL,
        *,
        limit: int | None = None,
    ) -> int:
        """Delete jobs of ``statuses`` (terminal ones) that finished before
        ``finished_before`` (at most ``limit`` of them, the oldest first, if given), and
        their dependency rows; how many."""
        if limit is not None:
            return self._purge_some(finished_before, statuses, limit)
        query = Q_PURGE.format(statuses=_sql_list(statuses))
        purged: int = self._conn.execute(query, (finished_before,)).rowcount
        if purged and self._has_deps:
            self._conn.execute(Q_PURGE_DEPS)
        return purged

    def _purge_some(self, finished_before: float, statuses: Iterable[JobStatus], limit: int) -> int:
        query = Q_PURGE_SOME.format(statuses=_sql_list(statuses))
        rows = self._conn.execute(query, (finished_before, limit)).fetchall()
        if rows and self._has_deps:
            self._conn.executemany(Q_PURGE_DEPS_OF, [(job_id,) for job_id, _ in rows])
            edges = [
                (dep_id, job_id) for job_id, after in rows if after for dep_id in json.loads(after)
            ]
            if edges:
                self._conn.executemany(Q_PURGE_DEP, edges)
        return len(rows)

    # --- schedules ---------------------------------------------------------------------------
    def upsert_schedule(self, schedule: Schedule) -> Schedule:
        """Store ``schedule`` under its key, replacing the one there; as stored."""
        row = self._conn.execute(
            Q_UPSERT_SCHEDULE,
            (
                schedule.key,
                schedule.name,
                encode_payload(schedule.payload),
                schedule.every,
                schedule.cron,
                schedule.timezone,
                schedule.catch_up,
                schedule.priority,
                schedule.max_attempts,
                schedule.timeout,
                schedule.next_run_at,
            ),
        ).fetchone()
        if self.next_tick is None or schedule.next_run_at < self.next_tick:
            self.next_tick = schedule.next_run_at
        return row_to_schedule(row)

    def delete_schedule(self, key: str) -> bool:
        deleted = self._conn.execute(Q_DELETE_SCHEDULE, (key,)).rowcount > 0
        if deleted:
            self.next_tick = self._conn.execute(Q_NEXT_TICK).fetchone()[0]
        return deleted

    def fire_schedules(self, now: float) -> list[Change]:
        """Enqueue the due ticks of every schedule and move each to its next tick, in the
        caller's transaction (so a tick yields its job exactly once); the changes."""
        changes: list[Change] = []
        for row in self._conn.execute(Q_DUE_SCHEDULES, (now,)).fetchall():
            schedule = row_to_schedule(row)
            cadence = Cadence(schedule.every, schedule.cron, schedule.timezone)
            ticks, next_run_at = due_ticks(cadence, schedule.next_run_at, now, schedule.catch_up)
            last_job_id = None
            for tick in ticks:
                key = f"schedule:{schedule.key}:{tick:.3f}"
                if self.find_by_key(key) is not None:
                    continue  # enqueued already (by hand, with this very key)
                (job,), inserted = self.insert([_tick_job(schedule, tick, key)], now)
                changes += inserted
                last_job_id = job.id
            self._conn.execute(
                Q_ADVANCE_SCHEDULE,
                (next_run_at, ticks[-1] if ticks else None, last_job_id, schedule.key),
            )
        self.next_tick = self._conn.execute(Q_NEXT_TICK).fetchone()[0]
        return changes

    def touch(self) -> None:
        """A write that changes nothing, to prove the database takes writes."""
        self._conn.execute(Q_TOUCH)


def without_null_columns(
    rows: list[tuple[Any, ...]],
) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
    """The columns and values of ``rows`` (of :data:`INSERT_COLUMNS`) without the columns that
    are ``NULL`` in every row: their default is ``NULL`` anyway, and binding a ``None`` costs
    the sqlite3 module an adapter lookup (about 3,000 instructions), more than the rest of a
    row's binding. Every value bound is of an exact built-in type for the same reason (a
    ``str`` enum or a ``bool`` is looked up too)."""
    absent = {i for i in NULLABLE_INSERT_COLUMNS if all(row[i] is None for row in rows)}
    if not absent:
        return INSERT_COLUMNS, rows
    kept = [index for index in range(len(INSERT_COLUMNS)) if index not in absent]
    project = operator.itemgetter(*kept)
    return tuple(INSERT_COLUMNS[index] for index in kept), [project(row) for row in rows]


def _completed(outcome: Outcome, now: float) -> Change:
    job = outcome.job
    return Change(
        Event.COMPLETED,
        job.id,
        job.name,
        JobStatus.COMPLETED,
        _attempt_duration(outcome, now),
        None,
        functools.partial(
            _final_job, job, JobStatus.COMPLETED, outcome.result_json, job.error, now, None
        ),
    )


def _attempt_duration(outcome: Outcome, now: float) -> float | None:
    """How long the attempt of ``outcome`` ran: as its runner measured it, else by the wall
    clock (never negative: the clock may have been stepped back during the run)."""
    if outcome.duration is not None:
        return outcome.duration
    started_at = outcome.job.started_at
    return None if started_at is None else max(now - started_at, 0.0)


def _read_job(conn: sqlite3.Connection, job_id: int) -> Job:
    job = get_job(conn, job_id)
    assert job is not None
    return job


def encode_payload(payload: JSON) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _tick_job(schedule: Schedule, tick: float, key: str) -> NewJob:
    assert schedule.max_attempts is not None
    return NewJob(
        name=schedule.name,
        payload_json=encode_payload(schedule.payload),
        payload=schedule.payload,
        priority=schedule.priority,
        max_attempts=schedule.max_attempts,
        timeout=schedule.timeout,
        run_at=tick,
        idempotency_key=key,
        schedule_key=schedule.key,
    )


def row_to_schedule(row: Sequence[Any]) -> Schedule:
    """A :class:`Schedule` from a row selected as ``_SCHEDULE_COLUMNS``."""
    catch_up: CatchUp = row[6]
    return Schedule(
        key=row[0],
        name=row[1],
        payload=_json(row[2]),
        every=row[3],
        cron=row[4],
        timezone=row[5],
        catch_up=catch_up,
        priority=row[7],
        max_attempts=row[8],
        timeout=row[9],
        next_run_at=row[10],
        last_run_at=row[11],
        last_job_id=row[12],
        paused=bool(row[13]),
    )


# --- reads, on any connection -----------------------------------------------------------------
def get_job(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(Q_BY_ID, (job_id,)).fetchone()
    return None if row is None else row_to_job(row)


Q_DEPENDENTS: Final = "SELECT job_id FROM job_deps WHERE dep_id = ? ORDER BY job_id"


def _in_snapshot(conn: sqlite3.Connection, read: Callable[[], T]) -> T:
    """``read()`` in one read transaction, so that its statements see one state of the file
    (the read connection is in autocommit mode)."""
    conn.execute("BEGIN")
    try:
        return read()
    finally:
        conn.execute("COMMIT")


def get_jobs(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, Job]:
    """The stored jobs of ``ids``, by id, in one snapshot (purged or unknown ones left out)."""
    wanted = sorted(set(ids))

    def each() -> dict[int, Job]:
        found = (get_job(conn, job_id) for job_id in wanted)
        return {job.id: job for job in found if job is not None}

    return _in_snapshot(conn, each) if wanted else {}


def workflow_of(conn: sqlite3.Connection, job_id: int, limit: int) -> tuple[list[Job], bool] | None:
    """The jobs reachable from ``job_id`` by following ``after`` both ways (the jobs it runs
    after and those that run after it, transitively), breadth first, at most ``limit``, by id;
    and whether more were reachable. ``None`` if the job does not exist."""

    def walk() -> tuple[list[Job], bool] | None:
        root = get_job(conn, job_id)
        if root is None:
            return None
        found = {root.id: root}
        seen = {root.id}
        frontier = [root]
        while frontier:
            following = []
            for job in frontier:
                dependents = [row[0] for row in conn.execute(Q_DEPENDENTS, (job.id,))]
                for neighbour in (*job.after, *dependents):
                    if neighbour in seen:
                        continue
                    seen.add(neighbour)
                    other = get_job(conn, neighbour)
                    if other is None:
                        continue  # purged: its id stays in the after of those it led to
                    if len(found) == limit:
                        return sorted(found.values(), key=lambda j: j.id), True
                    found[other.id] = other
                    following.append(other)
            frontier = following
        return sorted(found.values(), key=lambda j: j.id), False

    return _in_snapshot(conn, walk)


def any_to_purge(
    conn: sqlite3.Connection, finished_before: float, statuses: Iterable[JobStatus] = TERMINAL
) -> bool:
    """Whether a job of ``statuses`` finished before ``finished_before``: a read that spares
    the writer a purge with nothing to delete."""
    query = Q_ANY_TO_PURGE.format(statuses=_sql_list(statuses))
    return bool(conn.execute(query, (finished_before,)).fetchone()[0])


def statuses_of(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, JobStatus]:
    """The status of each job of ``ids`` that exists."""
    statuses: dict[int, JobStatus] = {}
    for start in range(0, len(ids), COMPLETE_CHUNK):
        chunk = ids[start : start + COMPLETE_CHUNK]
        rows = conn.execute(
            f"SELECT id, status FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
        )
        statuses.update((job_id, _STATUSES[status]) for job_id, status in rows)
    return statuses


def declared_handlers(conn: sqlite3.Connection) -> dict[str, HandlerDefaults]:
    """The handlers that processes declared in the file, with their defaults."""
    return {
        name: (max_attempts, timeout) for name, max_attempts, timeout in conn.execute(Q_DECLARED)
    }


def mean_pending_run_at(conn: sqlite3.Connection) -> float | None:
    """The mean time the pending jobs are (or were) due at; ``None`` when none is pending."""
    mean: float | None = conn.execute(Q_MEAN_PENDING_RUN_AT).fetchone()[0]
    return mean


def count_failed_early(conn: sqlite3.Connection) -> int:
    """How many failed jobs failed before their attempts were spent."""
    count: int = conn.execute(Q_COUNT_FAILED_EARLY).fetchone()[0]
    return count


def paused_handlers(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute(Q_PAUSED)}


def list_schedules(conn: sqlite3.Connection) -> list[Schedule]:
    return [row_to_schedule(row) for row in conn.execute(Q_SCHEDULES)]


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
    if status is not None:
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
            by_status_name[JobStatus(status), name] = count
        recent = {
            JobStatus(status): (count, avg)
            for status, count, avg in conn.execute(Q_RECENT_FINISHED, (since,))
        }
        oldest = conn.execute(Q_OLDEST_PENDING).fetchone()[0]
    finally:
        conn.execute("COMMIT")
    return Counts(by_status_name, recent, oldest)
