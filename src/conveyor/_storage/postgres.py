"""PostgreSQL: the queue on a server that many hosts share.

The life cycle, the writer's logic and the statements are SQLite's (:mod:`.sqlite`): this
module runs them on PostgreSQL. :class:`PgConnection` gives a psycopg connection the sqlite3
calls the writer and the readers make, and turns each statement into PostgreSQL's dialect once
(``?`` and ``:name`` parameters become psycopg's); the few statements that must differ are
written out in :data:`OVERRIDES`. :class:`PgWriter` overrides what is not SQL: connecting,
transactions, the owners' liveness, and how news reaches the other processes (``NOTIFY`` in
the committing transaction, heard by :class:`PgDoorbell`'s ``LISTEN``).

Writers are serialised as on SQLite: every write transaction begins by updating the one row of
``conveyor_meta``, whose lock it then holds until it commits. So the single-writer reasoning of
the store holds across hosts (a cancel and a claim are applied in one order), and each writer
learns from the row's write count whether another process wrote since its last transaction
(SQLite's ``data_version``). Readers use ``REPEATABLE READ`` snapshots and never wait.

Connections are psycopg 3's synchronous ones, each owned by one thread (DESIGN §9); the
notification connection is waited on by the event loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, Final

import anyio
import attrs
import psycopg
import psycopg.adapt
import psycopg.pq
import psycopg.sql

from .._doorbell import KINDS
from .._errors import DatabaseError, InvalidArgument, SchemaTooNew
from .._events import Change
from .._job import JobStatus
from . import sqlite
from .sqlite import Fault, Writer, _sql_list, q_insert, without_null_columns

logger = logging.getLogger("conveyor")

SCHEMA_VERSION: Final = 2
"""The version of the tables this conveyor writes in a PostgreSQL schema."""

CONNECTION_LOST: Final = (psycopg.OperationalError,)
"""The errors of a connection the server or the network dropped."""

DEFAULT_SCHEMA: Final = "conveyor"
LOCK_TIMEOUT: Final = "10s"
"""How long a write waits for another connection's transaction (SQLite's busy timeout)."""
IDLE_IN_TRANSACTION_TIMEOUT: Final = "5s"
"""The server ends a session whose transaction waits this long for its client: a host cut off
in the middle of a write transaction would otherwise hold the writers' lock (and stall every
other host) until its connection times out, which takes minutes. A conveyor transaction never
waits on its client for more than milliseconds."""

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,53}")
"""At most 54 characters: the notification channel, ``conveyor_<schema>``, must fit in
PostgreSQL's 63."""
_TABLES: Final = ("jobs", "job_deps", "schedules", "handler_state", "starts", "owners")

# --- The tables. --------------------------------------------------------------------------------
_CREATE: Final = f"""
    CREATE TABLE conveyor_meta (
        one          INTEGER PRIMARY KEY CHECK (one = 1),
        version      INTEGER NOT NULL,
        -- Write transactions so far: a writer that finds it moved by more than its own
        -- transaction knows another process wrote.
        writes       BIGINT  NOT NULL,
        -- The next job id: ids of purged jobs are never given again.
        next_job_id  BIGINT  NOT NULL
    );
    INSERT INTO conveyor_meta VALUES (1, {SCHEMA_VERSION}, 0, 1);
    CREATE TABLE jobs (
        id               BIGINT PRIMARY KEY,
        name             TEXT NOT NULL,
        payload          TEXT NOT NULL,
        status           TEXT NOT NULL CHECK (status IN ({_sql_list(JobStatus)})),
        scheduled        INTEGER NOT NULL DEFAULT 0
                         CHECK (scheduled = 0 OR (scheduled = 1 AND status = 'pending')),
        priority         INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 10),
        attempts         BIGINT NOT NULL DEFAULT 0,
        max_attempts     BIGINT NOT NULL CHECK (max_attempts >= 1),
        timeout          DOUBLE PRECISION,
        run_at           DOUBLE PRECISION NOT NULL,
        created_at       DOUBLE PRECISION NOT NULL,
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        result           TEXT,
        error            TEXT,
        progress         DOUBLE PRECISION,
        progress_message TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        idempotency_key  TEXT,
        after            TEXT,
        blockers         BIGINT NOT NULL DEFAULT 0,
        delay            DOUBLE PRECISION,
        cancelled_by     BIGINT,
        schedule_key     TEXT,
        concurrency_key  TEXT,
        owner            BIGINT,
        trace_context    TEXT
    );
    CREATE UNIQUE INDEX jobs_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_ready ON jobs (priority, run_at, id)
        WHERE status = 'pending' AND scheduled = 0;
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE scheduled = 1;
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_failed ON jobs (id) WHERE status = 'failed';
    CREATE INDEX jobs_name ON jobs (name, id);
    CREATE INDEX jobs_cancelled_by ON jobs (cancelled_by) WHERE cancelled_by IS NOT NULL;
    CREATE INDEX jobs_running ON jobs (name, concurrency_key) WHERE status = 'running';
    CREATE INDEX jobs_owner ON jobs (owner) WHERE status = 'running';
    CREATE TABLE job_deps (
        dep_id BIGINT NOT NULL,
        job_id BIGINT NOT NULL,
        PRIMARY KEY (dep_id, job_id)
    );
    CREATE TABLE schedules (
        key          TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        payload      TEXT NOT NULL,
        every        DOUBLE PRECISION,
        cron         TEXT,
        timezone     TEXT NOT NULL,
        catch_up     TEXT NOT NULL CHECK (catch_up IN ('latest', 'all', 'none')),
        priority     INTEGER NOT NULL,
        max_attempts BIGINT,
        timeout      DOUBLE PRECISION,
        next_run_at  DOUBLE PRECISION NOT NULL,
        last_run_at  DOUBLE PRECISION,
        last_job_id  BIGINT,
        paused       INTEGER NOT NULL DEFAULT 0,
        CHECK ((every IS NULL) != (cron IS NULL))
    );
    CREATE INDEX schedules_next ON schedules (next_run_at) WHERE paused = 0;
    CREATE TABLE handler_state (
        name         TEXT PRIMARY KEY,
        paused       INTEGER NOT NULL DEFAULT 0,
        declared_at  DOUBLE PRECISION,
        max_attempts BIGINT,
        timeout      DOUBLE PRECISION
    );
    CREATE TABLE starts (
        name TEXT NOT NULL,
        at   DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX starts_by_name ON starts (name, at);
    CREATE TABLE owners (
        id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pid          INTEGER NOT NULL,
        host         TEXT NOT NULL,
        started_at   DOUBLE PRECISION NOT NULL,
        heartbeat_at DOUBLE PRECISION NOT NULL,
        lease        DOUBLE PRECISION NOT NULL,
        handlers     TEXT NOT NULL,
        doorbell     TEXT
    )
"""

_UPGRADES: Final[dict[int, str]] = {
    # Version 2: the trace context of the span a job was enqueued in (SQLite's version 6).
    2: "ALTER TABLE jobs ADD COLUMN IF NOT EXISTS trace_context TEXT",
}
"""``version -> statements`` that bring tables of ``version - 1`` to ``version``."""

# --- The statements that differ from SQLite's, by the SQLite statement they replace. ----------
Q_BEGIN: Final = (
    "BEGIN ISOLATION LEVEL READ COMMITTED; "
    "UPDATE conveyor_meta SET writes = writes + 1 "
    "RETURNING writes, next_job_id, pg_current_xact_id()::text"
)
"""Begins every write transaction (one round trip): the row's lock serialises writers until
the commit, and the count tells whether another process wrote since this one last did."""
Q_COUNTERS: Final = """
    SELECT (SELECT min(run_at) FROM jobs WHERE scheduled = 1),
           (SELECT min(next_run_at) FROM schedules WHERE paused = 0),
           EXISTS (SELECT 1 FROM job_deps),
           ARRAY(SELECT name FROM handler_state WHERE paused <> 0),
           EXISTS (SELECT 1 FROM owners WHERE id = %s)
"""
"""What the writer keeps of the tables (SQLite's reads of it, in one round trip), and whether
this process's owner row is still there."""
Q_META: Final = "SELECT version FROM conveyor_meta"
Q_SET_VERSION: Final = "UPDATE conveyor_meta SET version = %s"
Q_XACT_STATUS: Final = "SELECT pg_xact_status(%s::xid8)"
"""Whether a transaction committed: asked after its commit's answer was lost."""
Q_TABLES_IN_SCHEMA: Final = (
    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s"
)

OVERRIDES: Final[dict[str, str]] = {
    sqlite.Q_TOUCH: "UPDATE conveyor_meta SET writes = writes",
    sqlite.Q_PAUSED: "SELECT name FROM handler_state WHERE paused <> 0",
}
"""Statements SQLite's dialect cannot share: the header write, and integer flags (which SQLite
reads as booleans in place, where PostgreSQL needs a comparison)."""

_FLAG_TESTS: Final = {"WHERE NOT paused": "WHERE paused = 0", "AND NOT paused": "AND paused = 0"}

_NAMED_PARAMETER: Final = re.compile(r"(?<![:\w]):([a-z_]+)\b")
_UNARY_PLUS_NAME: Final = re.compile(r"\+name\b")


@functools.lru_cache(maxsize=1024)
def translate(statement: str) -> str:
    """``statement``, written for SQLite, in PostgreSQL's dialect as psycopg takes it."""
    if statement in OVERRIDES:
        return OVERRIDES[statement]
    if "%" in statement:
        raise AssertionError(f"a statement with % cannot be translated: {statement!r}")
    text = statement.replace("?", "%s")
    text = _NAMED_PARAMETER.sub(r"%(\1)s", text)
    # SQLite's hint to keep the planner on the ready index; PostgreSQL has no unary + on text.
    text = _UNARY_PLUS_NAME.sub("name", text)
    for sqlite_test, pg_test in _FLAG_TESTS.items():
        text = text.replace(sqlite_test, pg_test)
    return text


class _BoolAsInteger(psycopg.adapt.Dumper):
    """Python's booleans as the integers SQLite stores them as: the flag columns are integers
    on both, so that the statements are the same."""

    oid = psycopg.postgres.types["int2"].oid

    def dump(self, obj: Any) -> bytes:
        return b"1" if obj else b"0"


_ONE_ROW_INSERT: Final = re.compile(r"(INSERT INTO [^;]*? VALUES )(\((?:%s, )*%s\))([^;]*)", re.S)
FEW_ROWS: Final = 256
"""Rows inserted by one multi-row statement at most (at 16 parameters a row, far below the
protocol's 65,535); more go through psycopg's pipeline, faster for many."""


def _without_nul(parameters: Any) -> Any:
    """``parameters`` with NUL characters in texts replaced by U+FFFD: PostgreSQL's text
    cannot hold them, and an error message or a progress message may (names and keys are
    refused with NUL before they get here; JSON escapes it)."""
    if isinstance(parameters, dict):
        if any(isinstance(value, str) and "\x00" in value for value in parameters.values()):
            return {key: _replace_nul(value) for key, value in parameters.items()}
        return parameters
    if parameters is not None and any(
        isinstance(value, str) and "\x00" in value for value in parameters
    ):
        return [_replace_nul(value) for value in parameters]
    return parameters


def _replace_nul(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


class PgConnection:
    """A psycopg connection with the calls of a sqlite3 one that conveyor makes, each
    statement translated (:func:`translate`), and ``replacing`` some outright (a reader's
    ``BEGIN`` opens a snapshot)."""

    def __init__(self, raw: psycopg.Connection[Any], replacing: dict[str, str] | None = None):
        self.raw = raw
        self._replacing = replacing or {}

    def _sql(self, statement: str) -> str:
        replaced = self._replacing.get(statement)
        return replaced if replaced is not None else translate(statement)

    def execute(self, statement: str, parameters: Any = None) -> psycopg.Cursor[Any]:
        return self.raw.execute(self._sql(statement), _without_nul(parameters))

    def executemany(self, statement: str, rows: Iterable[Any]) -> psycopg.Cursor[Any]:
        """Run ``statement`` once per row of ``rows``: a few rows of an ``INSERT ... VALUES``
        as one statement of many rows (one round trip, where psycopg's pipeline costs more for
        the few rows of a batch); more rows, or another statement, through the pipeline."""
        sql = self._sql(statement)
        rows = [_without_nul(row) for row in rows]
        single = _ONE_ROW_INSERT.fullmatch(sql)
        cursor = self.raw.cursor()
        if single is None or not rows or len(rows) > FEW_ROWS:
            cursor.executemany(sql, rows)
            return cursor
        head, values, tail = single.groups()
        cursor.execute(
            f"{head}{', '.join([values] * len(rows))}{tail}", [v for row in rows for v in row]
        )
        return cursor

    @property
    def broken(self) -> bool:
        """The connection is lost (closed, or the server or the network dropped it)."""
        return self.raw.closed or self.raw.broken

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def close(self) -> None:
        self.raw.close()


# --- Where the queue lives. ---------------------------------------------------------------
def is_postgres(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return target.startswith(("postgresql://", "postgres://"))


@attrs.frozen
class Target:
    """A PostgreSQL database (``conninfo``, as psycopg takes it) and the schema the queue's
    tables live in. ``shown`` names it in messages, without a password."""

    conninfo: str
    schema: str
    shown: str

    @property
    def channel(self) -> str:
        """The ``NOTIFY`` channel of the processes on this queue."""
        return f"conveyor_{self.schema}"


def parse_target(url: str, schema: str | None = None) -> Target:
    """The database and schema of ``url`` (``postgresql://user@host:port/db?schema=name``);
    ``schema`` wins over the URL's. Raises :class:`InvalidArgument` for a bad schema name."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    from_url = [value for key, value in query if key == "schema"]
    kept = urllib.parse.urlencode([(key, value) for key, value in query if key != "schema"])
    chosen = schema or (from_url[-1] if from_url else DEFAULT_SCHEMA)
    if not isinstance(chosen, str) or not _SCHEMA_NAME.fullmatch(chosen):
        raise InvalidArgument(
            f"a PostgreSQL schema name for conveyor is lowercase letters, digits and _ (not "
            f"starting with a digit, at most 54), not {chosen!r}"
        )
    conninfo = urllib.parse.urlunsplit(parts._replace(query=kept))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    shown = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return Target(conninfo, chosen, f"{shown} (schema {chosen})")


def connect(target: Target) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are begun explicitly, as on SQLite),
    working in the queue's schema. Raises :class:`DatabaseError` naming the server."""
    try:
        raw = psycopg.connect(
            target.conninfo,
            autocommit=True,
            connect_timeout=10,
            application_name=f"conveyor {target.schema}",
            # A server or network gone silent is found in about 11 s rather than minutes.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
        )
    except psycopg.Error as exc:
        raise DatabaseError(f"cannot connect to {target.shown}: {exc}".strip()) from None
    raw.adapters.register_dumper(bool, _BoolAsInteger)
    raw.execute(
        psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(target.schema))
    )
    raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
    raw.execute(f"SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}'")
    return raw


def migrate(raw: psycopg.Connection[Any], target: Target) -> None:
    """Create the queue's tables in its schema, or check those there: one process at a time
    (an advisory lock on the schema's name), so that hosts starting together agree."""
    schema = target.schema
    raw.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"conveyor:{schema}",))
    try:
        raw.execute(
            psycopg.sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(psycopg.sql.Identifier(schema))
        )
        tables = {row[0] for row in raw.execute(Q_TABLES_IN_SCHEMA, (schema,))}
        if "conveyor_meta" in tables:
            (version,) = raw.execute(Q_META).fetchone() or (0,)
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{target.shown} has conveyor schema version {version}, newer than this "
                    f"conveyor understands ({SCHEMA_VERSION}); upgrade conveyor to open it"
                )
            if version < SCHEMA_VERSION:
                with raw.transaction():
                    for target_version in range(version + 1, SCHEMA_VERSION + 1):
                        raw.execute(_UPGRADES[target_version])
                    raw.execute(Q_SET_VERSION, (SCHEMA_VERSION,))
                logger.info(
                    "conveyor upgraded its tables in %s to version %d", target.shown, SCHEMA_VERSION
                )
            return
        taken = sorted(tables.intersection(_TABLES))
        if taken:
            raise DatabaseError(
                f"{target.shown} already has tables that are not conveyor's "
                f"({', '.join(taken)}): choose another schema with ?schema=name"
            )
        with raw.transaction():
            for statement in _CREATE.split(";"):
                if statement.strip():
                    raw.execute(statement)
        logger.info("conveyor created its tables in %s", target.shown)
    finally:
        raw.execute("SELECT pg_advisory_unlock(hashtext(%s))", (f"conveyor:{schema}",))


def open_reader(target: Target) -> PgConnection:
    """A connection for reads: each read that needs one consistent view (SQLite's ``BEGIN``
    of a read) gets a ``REPEATABLE READ`` snapshot."""
    return PgConnection(
        connect(target), {"BEGIN": "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"}
    )


# --- The writer. ----------------------------------------------------------------------------
class CommitInDoubt(Exception):
    """A commit's answer was lost, and the server could not be asked whether it went through."""


class PgWriter(Writer):
    """The store's connection to PostgreSQL: :class:`.sqlite.Writer`'s logic and statements.

    A lost connection (the server restarting, the network cut) fails the batch in flight
    with a fault that passes; the next transaction connects again. Whether another process
    took this one over meanwhile is found as on SQLite: its owner row is gone.

    Owners are judged by their lease alone (no lock tells here whether a process on another
    host lives): a process stopped without a word loses its running jobs to the others once
    its heartbeat is older than its lease. Heartbeats are stamped with each host's clock, so
    hosts must keep their clocks in step (NTP) to well within a lease.
    """

    faults = (psycopg.OperationalError, psycopg.InternalError, MemoryError)
    errors = (psycopg.Error,)

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` in one call: the connection sends a few as one statement and more
        through psycopg's pipeline (SQLite's statements of 999 values would each be a round
        trip)."""
        columns, rows = without_null_columns(rows)
        self._conn.executemany(q_insert(columns), rows)

    def __init__(self, target: Target) -> None:
        self.path = target.shown
        self.synchronous = "full"
        self.target = target
        self._init_state()
        self._writes = -1
        self._owner_row = True
        self._news: str | None = None
        self._next_id = 1
        self._ids_given = False
        self._xid = ""
        self._calm_until = 0.0
        self._conn: PgConnection = self._connect()  # type: ignore[assignment]

    def _connect(self) -> PgConnection:
        raw = connect(self.target)
        try:
            migrate(raw, self.target)
            conn = PgConnection(raw)
            self._conn = conn
            self._reload_counters()
        except psycopg.Error as exc:
            raw.close()
            raise DatabaseError(f"cannot use {self.target.shown}: {exc}") from None
        except BaseException:
            raw.close()
            raise
        return conn

    @property
    def _pg(self) -> PgConnection:
        return self._conn

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self._pg.close()

    def begin(self, *, wait: bool = True) -> None:
        if self._pg.raw.closed or self._pg.raw.broken:
            self._connect()
            self._counters_stale = True
            self._calm_for_a_lease("it connected to the server again")
        started = time.monotonic()
        try:
            cursor = self._pg.raw.execute(Q_BEGIN)
            cursor.nextset()
            row = cursor.fetchone()
        except psycopg.Error:
            self.rollback()  # a lock wait that timed out leaves the transaction failed
            raise
        if (waited := time.monotonic() - started) > self.lease / 4:
            self._calm_for_a_lease(f"a write waited {waited:.1f} s for the database")
        assert row is not None
        others_wrote = row[0] != self._writes + 1
        self._writes, self._next_id, self._xid = row
        self._news = None
        self._ids_given = False
        if self._counters_stale or others_wrote:
            self._reload_counters()
            self._doorbells = None
            if self.owner is not None and not self.lease_lost:
                self.lease_lost = not self._owner_row

    def _reload_counters(self) -> None:
        row = self._pg.raw.execute(Q_COUNTERS, (self.owner,)).fetchone()
        assert row is not None
        self._pending = None
        self.next_due, self.next_tick, self._has_deps, paused, self._owner_row = row
        self.paused = frozenset(paused)
        self._counters_stale = False

    def commit(self) -> None:
        """Commit, with what was kept for the end (the next job id, the news) sent in the
        same round trip; the news is delivered only if it commits."""
        ending: list[psycopg.sql.Composable] = []
        if self._ids_given:
            ending.append(
                psycopg.sql.SQL("UPDATE conveyor_meta SET next_job_id = {}").format(
                    psycopg.sql.Literal(self._next_id)
                )
            )
        if self._news is not None:
            ending.append(
                psycopg.sql.SQL("NOTIFY {}, {}").format(
                    psycopg.sql.Identifier(self.target.channel), psycopg.sql.Literal(self._news)
                )
            )
        ending.append(psycopg.sql.SQL("COMMIT"))
        try:
            self._pg.raw.execute(psycopg.sql.SQL("; ").join(ending))
        except psycopg.OperationalError as exc:
            if not self._committed_after_all(exc):
                raise
        self._news = None
        self._ids_given = False
        self._registered = None

    def rollback(self) -> None:
        self._news = None
        self._ids_given = False
        if not self._pg.raw.closed and not self._pg.raw.broken:
            try:
                if self._pg.in_transaction:
                    self._pg.raw.execute("ROLLBACK")
            except psycopg.OperationalError:
                self._pg.raw.close()  # connected again by the next begin
        if self._pg.raw.closed or self._pg.raw.broken:
            self._counters_stale = True
            if self._registered is not None:
                (self.owner,) = self._registered
                self._registered = None
                self.lease_lost = self.owner is not None
            return
        super().rollback()

    def _committed_after_all(self, error: psycopg.OperationalError) -> bool:
        """Whether the transaction whose commit's answer was lost committed, asked on a new
        connection. Raises ``error`` if it did not, and :class:`CommitInDoubt` if the server
        cannot tell (then this process stops its attempts and registers anew: the jobs the
        batch may have claimed for it are taken over once the old owner's lease lapses)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                with contextlib.closing(connect(self.target)) as probe:
                    row = probe.execute(Q_XACT_STATUS, (self._xid,)).fetchone()
            except (psycopg.Error, DatabaseError):
                time.sleep(0.2)
                continue
            status = None if row is None else row[0]
            if status == "committed":
                logger.info("conveyor's commit on %s went through, its answer was lost", self.path)
                return True
            if status == "aborted":
                return False
            time.sleep(0.05)  # in progress: the server has not yet seen the connection go
        self.lease_lost = True
        raise CommitInDoubt(
            f"the commit on {self.path} may or may not have gone through ({error})"
        ) from error

    def _calm_for_a_lease(self, why: str) -> None:
        """Take over no other owner for a lease from now: every heartbeat was held up with
        this process's writes (a lock wait, a server gone), so all look late."""
        calm = min(self.lease, 3600.0)
        self._calm_until = time.monotonic() + calm
        logger.info(
            "conveyor takes over no other owner of %s for %.0f s: %s, so the others' "
            "heartbeats may look late",
            self.path,
            calm,
            why,
            extra={"conveyor_event": "takeovers_held_back", "conveyor_seconds": calm},
        )

    def rescue(self, now: float) -> list[Change]:
        if time.monotonic() < self._calm_until:
            return []
        return super().rescue(now)

    def checkpoint(self) -> None:
        """Nothing to do: the server checkpoints its own write-ahead log."""

    def touch(self) -> None:
        self._conn.execute(sqlite.Q_TOUCH)

    def next_id(self) -> int:
        """Read with the transaction's first statement (nobody else inserts until it
        commits)."""
        return self._next_id

    def _ids_used(self, last_id: int) -> None:
        """Kept, and written with the commit."""
        self._next_id = max(self._next_id, last_id + 1)
        self._ids_given = True

    def _hold_lock_of(self, owner: int) -> None:
        """Nothing to hold: owners on PostgreSQL are judged by their lease alone."""

    def _owner_alive(self, owner: int) -> bool:
        return True  # as far as anything but the lease can tell

    def _forget_lock_of(self, owner: int) -> None:
        """Nothing was held."""

    def announce(self, rings: set[str]) -> list[tuple[str, bool]]:
        """``NOTIFY`` the queue's channel with the commit: PostgreSQL delivers it to every
        listening process once (and only if) the transaction commits."""
        self._news = f"{self.owner}:{''.join(sorted(rings))}"
        return []

    def classify(self, error: BaseException) -> Fault | None:
        if isinstance(error, CommitInDoubt):
            return Fault(True, str(error), in_doubt=True)
        if isinstance(error, psycopg.OperationalError | psycopg.InternalError | DatabaseError):
            return Fault(True, f"PostgreSQL at {self.path} cannot be written ({error})".strip())
        if isinstance(error, MemoryError):
            return Fault(True, "conveyor ran out of memory")
        return None


# --- News from the other processes. ----------------------------------------------------------
class PgDoorbell:
    """What the other processes on the queue ``NOTIFY`` (the kinds of :mod:`.._doorbell`),
    heard on a connection of its own that ``LISTEN``\\ s, waited on by the event loop.

    Its own notifications are ignored (``me`` tells its current owner id). While the
    connection is down it connects again every few seconds; meanwhile the heartbeat, which
    looks for ready jobs and cancels anyway, is the slow poll that carries the news.
    """

    RECONNECT_AFTER: Final = 2.0

    def __init__(self, target: Target, me: Callable[[], int | None]) -> None:
        self.name: str | None = target.channel
        self._target = target
        self._me = me
        self._conn: psycopg.Connection[Any] | None = None

    def ring(self, doorbells: Iterable[str], kinds: str) -> None:
        """Nothing to ring: the news went with the commit (:meth:`PgWriter.announce`)."""

    async def listen(self, on_ring: Callable[[set[str]], None]) -> None:
        while True:
            try:
                conn = await anyio.to_thread.run_sync(self._listening)
                await self._hear(conn, on_ring)
            except (psycopg.Error, DatabaseError, OSError) as exc:
                logger.warning(
                    "conveyor lost its notification connection to %s (%s); listening again "
                    "in %.0f s, heartbeats carry the news meanwhile",
                    self._target.shown,
                    exc,
                    self.RECONNECT_AFTER,
                )
                self.close()
                await anyio.sleep(self.RECONNECT_AFTER)

    def _listening(self) -> psycopg.Connection[Any]:
        conn = connect(self._target)
        conn.execute(
            psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._target.channel))
        )
        self._conn = conn
        return conn

    async def _hear(
        self, conn: psycopg.Connection[Any], on_ring: Callable[[set[str]], None]
    ) -> None:
        pgconn = conn.pgconn
        while True:
            await anyio.wait_readable(pgconn.socket)
            pgconn.consume_input()
            if pgconn.status != psycopg.pq.ConnStatus.OK:
                raise psycopg.OperationalError("the connection was closed")
            kinds: set[str] = set()
            while (note := pgconn.notifies()) is not None:
                sender, _, rung = note.extra.decode(errors="replace").partition(":")
                if sender != str(self._me()):
                    kinds.update(kind for kind in rung if kind in KINDS)
            if kinds:
                on_ring(kinds)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()
