"""PostgreSQL: the dialect the statements are translated to, where the queue lives (URL and
schema), and what only a shared server does: news by NOTIFY between processes, and one schema
beside an application's tables. The core behaviour tests run on PostgreSQL too (conftest)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

import conveyor
from conveyor._storage import sqlite
from conveyor._storage.postgres import (
    DEFAULT_SCHEMA,
    OVERRIDES,
    parse_target,
    translate,
)

from helpers import POSTGRES_URL, Gate, fresh_schema

URL = "postgresql://app:secret@db.example:5433/jobs"


def test_parameters_become_psycopgs() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c = ?") == (
        "SELECT a FROM t WHERE b = %s AND c = %s"
    )
    assert translate("UPDATE t SET a = :now WHERE id = :dep") == (
        "UPDATE t SET a = %(now)s WHERE id = %(dep)s"
    )


def test_sqlites_planner_hint_is_dropped() -> None:
    assert translate("SELECT id FROM jobs WHERE +name IN (?)") == (
        "SELECT id FROM jobs WHERE name IN (%s)"
    )


def test_integer_flags_are_compared() -> None:
    assert "paused = 0" in translate(sqlite.Q_NEXT_TICK)
    assert "NOT paused" not in translate(sqlite.Q_DUE_SCHEDULES)


def test_a_statement_sqlite_cannot_share_is_written_out() -> None:
    assert translate(sqlite.Q_TOUCH) == OVERRIDES[sqlite.Q_TOUCH]
    assert "PRAGMA" not in translate(sqlite.Q_TOUCH)


def test_every_statement_translates_without_sqlite_parameters_left() -> None:
    statements = [
        value
        for name, value in vars(sqlite).items()
        if name.startswith("Q_") and isinstance(value, str) and "{" not in value
    ]
    assert len(statements) > 40
    for statement in statements:
        text = translate(statement)
        assert "?" not in text, statement
        assert "PRAGMA" not in text, statement


def test_the_schema_comes_from_the_url() -> None:
    target = parse_target(f"{URL}?schema=billing_jobs&sslmode=disable")
    assert target.schema == "billing_jobs"
    assert "schema=" not in target.conninfo
    assert "sslmode=disable" in target.conninfo
    assert target.channel == "conveyor_billing_jobs"


def test_the_schema_defaults_to_conveyors_own() -> None:
    assert parse_target(URL).schema == DEFAULT_SCHEMA


def test_a_schema_given_as_an_option_wins() -> None:
    assert parse_target(f"{URL}?schema=a", schema="b").schema == "b"


@pytest.mark.parametrize("schema", ["Jobs", "1jobs", "jobs;drop", "", "x" * 64])
def test_a_bad_schema_name_is_refused(schema: str) -> None:
    with pytest.raises(conveyor.InvalidArgument, match="schema name"):
        parse_target(f"{URL}?schema={schema}" if schema else URL, schema=schema or "Bad")


def test_messages_name_the_server_without_the_password() -> None:
    shown = parse_target(URL).shown
    assert "secret" not in shown
    assert shown == "postgresql://app@db.example:5433/jobs (schema conveyor)"


# --- On a server. ----------------------------------------------------------------------------
@pytest.fixture
def schema_url() -> Iterator[str]:
    with fresh_schema("test_pg") as schema:
        yield f"{POSTGRES_URL}?schema={schema}"


pytestmark_async = pytest.mark.anyio


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """trio with its real clock (a mock one jumps while the server answers), and asyncio."""
    return str(request.param)


def registry_of(**handlers: Any) -> conveyor.Registry:
    registry = conveyor.Registry()
    for name, handler in handlers.items():
        registry.handler(name)(handler)
    return registry


@pytestmark_async
async def test_a_schema_with_an_applications_jobs_table_is_refused(schema_url: str) -> None:
    import psycopg

    schema = schema_url.rpartition("=")[2]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.jobs (id int)")
    with pytest.raises(conveyor.DatabaseError, match=r"tables that are not conveyor's \(jobs\)"):
        async with conveyor.open_queue(schema_url):
            pass


@pytestmark_async
async def test_an_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(conveyor.DatabaseError, match="cannot connect to postgresql://"):
        async with conveyor.open_queue("postgresql://nobody@127.0.0.1:1/none"):
            pass


@pytestmark_async
async def test_an_enqueue_elsewhere_wakes_an_idle_worker_at_once(schema_url: str) -> None:
    async def noop(payload: None) -> str:
        return "done"

    # Heartbeats an hour apart: only the notification can bring the news.
    worker = conveyor.open_queue(schema_url, handlers=registry_of(noop=noop), heartbeat=3600)
    producer_queue = conveyor.open_queue(schema_url, heartbeat=3600, workers=0)
    async with worker, producer_queue as producer:
        await anyio.sleep(0.2)  # the worker is idle, listening
        job = await producer.enqueue("noop")
        done = await producer.wait(job.id, timeout=5)
    assert done.result == "done"


@pytestmark_async
async def test_a_cancel_elsewhere_cancels_the_running_handler(schema_url: str) -> None:
    gate = Gate()

    async def stuck(payload: None) -> None:
        await gate.pass_through()

    async with (
        conveyor.open_queue(
            schema_url, handlers=registry_of(stuck=stuck), heartbeat=3600
        ) as worker,
        conveyor.open_queue(schema_url, heartbeat=3600, workers=0) as producer,
    ):
        job = await worker.enqueue("stuck")
        await gate.entered.wait()
        assert await producer.cancel(job.id)
        ended = await producer.wait(job.id, timeout=5)
    assert ended.status is conveyor.JobStatus.CANCELLED


def drop_connections(schema_url: str) -> int:
    """Make the server drop every connection of the queue on ``schema_url``'s schema."""
    import psycopg

    schema = schema_url.rpartition("=")[2]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"conveyor {schema}",),
        ).fetchall()
    return len(rows)


@pytestmark_async
async def test_dropped_connections_are_survived_and_no_job_is_lost_or_run_twice(
    schema_url: str,
) -> None:
    runs: Counter[int] = Counter()
    running = anyio.Event()

    async def work(n: int) -> int:
        runs[n] += 1
        running.set()
        await anyio.sleep(0.002)
        return n

    async with conveyor.open_queue(
        schema_url, handlers=registry_of(work=work), heartbeat=0.5
    ) as queue:
        jobs = await queue.enqueue_many([conveyor.JobSpec("work", n) for n in range(400)])
        await running.wait()
        assert drop_connections(schema_url) >= 2  # the writer and the listener
        done = await queue.wait_all([job.id for job in jobs], timeout=60)
        later = await _enqueue_when_back(queue)
        assert (await queue.wait(later.id, timeout=30)).result == -1
    assert {job.status for job in done} == {conveyor.JobStatus.COMPLETED}
    assert all(runs[n] == 1 for n in range(400)), runs.most_common(3)


async def _enqueue_when_back(queue: conveyor.Queue, name: str = "work") -> conveyor.Job:
    for _ in range(100):
        try:
            return await queue.enqueue(name, -1)
        except conveyor.DatabaseUnavailable:
            await anyio.sleep(0.1)
    raise AssertionError("the queue did not take writes again")


@pytest.mark.usefixtures("engine")
def test_the_service_serves_a_queue_on_postgresql(schema_url: str) -> None:
    import httpx

    from service_server import running_server

    with running_server(schema_url) as server:
        created = httpx.post(f"{server.url}/jobs", json={"name": "hello", "payload": {"x": 1}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        done = httpx.get(f"{server.url}/jobs/{job_id}/wait", params={"timeout": 10})
    assert done.json()["status"] == "completed", done.text
    assert done.json()["result"] == {"hello": {"x": 1}}


def test_a_schema_name_too_long_for_its_channel_is_refused() -> None:
    with pytest.raises(conveyor.InvalidArgument, match="at most 54"):
        parse_target(URL, schema="s" * 55)


@pytestmark_async
async def test_a_nul_in_an_error_message_is_stored_and_the_job_retried(schema_url: str) -> None:
    async def boom(payload: None) -> None:
        raise ValueError("bad\x00byte")

    registry = conveyor.Registry()
    registry.handler("boom", max_attempts=2, backoff=conveyor.Backoff(initial=0))(boom)
    async with conveyor.open_queue(schema_url, handlers=registry) as queue:
        job = await queue.enqueue("boom")
        await queue.wait(job.id, timeout=10)
        failed = await queue.get(job.id)
    assert failed is not None
    assert (failed.status, failed.attempts) == (conveyor.JobStatus.FAILED, 2)
    assert "bad\ufffdbyte" in (failed.error or "")


@pytestmark_async
async def test_attempts_beyond_32_bits_are_stored(schema_url: str) -> None:
    async with conveyor.open_queue(schema_url, known_handlers=["noop"]) as queue:
        job = await queue.enqueue("noop", max_attempts=2**40)
        stored = await queue.get(job.id)
    assert stored is not None
    assert stored.max_attempts == 2**40


@pytestmark_async
async def test_a_lock_wait_that_times_out_fails_the_call_and_the_queue_goes_on(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    from conveyor._storage import postgres

    monkeypatch.setattr(postgres, "LOCK_TIMEOUT", "300ms")
    schema = schema_url.rpartition("=")[2]
    async with conveyor.open_queue(schema_url, known_handlers=["noop"]) as queue:
        with psycopg.connect(POSTGRES_URL) as holder:  # holds the writers' row
            holder.execute(f"UPDATE {schema}.conveyor_meta SET writes = writes")
            with pytest.raises(conveyor.DatabaseUnavailable, match="Nothing of this call"):
                await queue.enqueue("noop")
            holder.rollback()
        job = await _enqueue_when_back(queue, "noop")
    assert job.status is conveyor.JobStatus.PENDING


def _writer(schema_url: str) -> Any:
    from conveyor._storage.postgres import PgWriter
    from conveyor._storage.sqlite import NewJob

    writer = PgWriter(parse_target(schema_url))
    writer.begin()
    job = NewJob(
        name="noop",
        payload_json="null",
        payload=None,
        priority=5,
        max_attempts=1,
        timeout=None,
        run_at=0.0,
        idempotency_key=None,
    )
    writer.insert([job], 0.0, writer.next_id())
    return writer


def _count_jobs(schema_url: str) -> int:
    import psycopg

    schema = schema_url.rpartition("=")[2]
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.jobs").fetchone()
    assert row is not None
    return int(row[0])


def test_a_commit_whose_answer_is_lost_but_went_through_is_a_commit(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    writer = _writer(schema_url)
    execute = writer._pg.raw.execute

    def commit_then_lose_the_answer(query: Any, *args: Any) -> Any:
        execute(query, *args)
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(writer._pg.raw, "execute", commit_then_lose_the_answer)
    writer.commit()  # no error: the server says it committed
    monkeypatch.undo()
    writer.close()
    assert _count_jobs(schema_url) == 1


def test_a_commit_whose_answer_is_lost_and_that_did_not_go_through_fails(
    schema_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    writer = _writer(schema_url)
    execute = writer._pg.raw.execute

    def abort_and_lose_the_answer(query: Any, *args: Any) -> Any:
        execute("ROLLBACK")
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(writer._pg.raw, "execute", abort_and_lose_the_answer)
    with pytest.raises(psycopg.OperationalError):
        writer.commit()
    monkeypatch.undo()
    writer.close()
    assert _count_jobs(schema_url) == 0


def test_a_writer_that_connects_again_holds_back_takeovers_and_says_so(
    schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    writer = _writer(schema_url)
    writer.commit()
    writer._pg.raw.close()  # as a server that dropped the connection leaves it
    with caplog.at_level(logging.INFO, logger="conveyor"):
        writer.begin()
    assert "takes over no other owner" in caplog.text
    assert "it connected to the server again" in caplog.text
    (record,) = [r for r in caplog.records if "takes over no other owner" in r.getMessage()]
    assert record.conveyor_event == "takeovers_held_back"  # type: ignore[attr-defined]
    assert writer.rescue(time.time() + 3600) == []  # every owner looks late; none is taken
    writer.rollback()
    writer.close()
