"""Traces (the ``otel`` extra): an attempt's span continues the trace of the span its job was
enqueued in, recorded here by the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util._once import Once

import conveyor
import conveyor.blocking
from conveyor import JobSpec, JobStatus
from conveyor._storage import postgres, sqlite
from conveyor._storage.sqlite import Writer

from helpers import POSTGRES_URL, QueueOpener, fresh_schema, wait_all

pytestmark = pytest.mark.anyio

NO_BACKOFF = conveyor.Backoff(initial=0, jitter=0)
tracer = trace.get_tracer("tests")


def _reset_tracer_provider() -> None:
    """Forget the global tracer provider, as OpenTelemetry's own test utilities do: the API
    lets a process set it only once."""
    trace._TRACER_PROVIDER = None
    trace._TRACER_PROVIDER_SET_ONCE = Once()


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """The spans ended while this module's tests run: the global tracer provider is set once
    for the module, and taken back after it, so that other modules run without one."""
    _reset_tracer_provider()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    _reset_tracer_provider()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    """The module's exporter, emptied for this test."""
    exporter.clear()
    yield exporter
    exporter.clear()


def runs(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    """The attempt spans ended so far, by attempt."""
    found = [span for span in spans.get_finished_spans() if span.name.startswith("conveyor.run")]
    return sorted(found, key=lambda span: (span.attributes or {})["conveyor.attempt"])


def noop_registry() -> conveyor.Registry:
    registry = conveyor.Registry()

    @registry.handler("noop")
    async def noop(payload: object) -> object:
        return payload

    return registry


async def test_an_enqueue_inside_a_span_runs_the_attempt_in_its_trace(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        with tracer.start_as_current_span("request") as request:
            job = await queue.enqueue("noop", 1)
        await queue.wait(job.id, timeout=10)
    (run,) = runs(spans)
    assert run.name == "conveyor.run noop"
    assert run.kind is SpanKind.CONSUMER
    assert run.context is not None
    assert run.context.trace_id == request.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == request.get_span_context().span_id


async def test_a_completed_attempts_span_says_so(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        with tracer.start_as_current_span("request"):
            job = await queue.enqueue("noop", 1)
        await queue.wait(job.id, timeout=10)
    (run,) = runs(spans)
    assert run.attributes == {
        "conveyor.job_id": job.id,
        "conveyor.attempt": 1,
        "conveyor.handler": "noop",
        "conveyor.outcome": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET
    assert not run.events


async def test_each_retry_is_a_span_of_its_own_in_the_enqueuers_trace(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    registry = conveyor.Registry()
    calls = 0

    @registry.handler("flaky", max_attempts=3, backoff=NO_BACKOFF)
    async def flaky(payload: None) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError(f"broken {calls}")
        return "done"

    async with open_test_queue(registry) as queue:
        with tracer.start_as_current_span("request") as request:
            job = await queue.enqueue("flaky")
        done = await queue.wait(job.id, timeout=10)
    assert done.status is JobStatus.COMPLETED
    attempts = runs(spans)
    request_context = request.get_span_context()
    assert [(span.attributes or {})["conveyor.attempt"] for span in attempts] == [1, 2, 3]
    assert [(span.attributes or {})["conveyor.outcome"] for span in attempts] == [
        "retried",
        "retried",
        "completed",
    ]
    assert len({span.context.span_id for span in attempts if span.context}) == 3
    for span in attempts:
        assert span.context is not None
        assert span.context.trace_id == request_context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == request_context.span_id
    assert [span.status.status_code for span in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert attempts[0].status.description == "RuntimeError: broken 1"


async def test_a_failure_that_dead_letters_ends_its_span_failed_with_the_exception(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    registry = conveyor.Registry()

    @registry.handler("broken", max_attempts=2, backoff=NO_BACKOFF)
    def broken(payload: None) -> None:  # a sync handler: it runs in a thread
        raise ValueError("no good")

    async with open_test_queue(registry) as queue:
        with tracer.start_as_current_span("request"):
            job = await queue.enqueue("broken")
        # No timeout: under the mock clock, time may leap while the thread runs (trio#456).
        done = await queue.wait(job.id)
    assert done.status is JobStatus.FAILED
    first, last = runs(spans)
    assert (first.attributes or {})["conveyor.outcome"] == "retried"
    assert (last.attributes or {})["conveyor.outcome"] == "failed"
    assert last.status.status_code is StatusCode.ERROR
    assert last.status.description == "ValueError: no good"
    (event,) = last.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "ValueError"
    assert (event.attributes or {})["exception.message"] == "no good"


async def test_a_timed_out_attempts_span_fails_saying_so(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    registry = conveyor.Registry()

    @registry.handler("slow", max_attempts=1, timeout=0.2)
    async def slow(payload: None) -> None:
        await anyio.sleep_forever()

    async with open_test_queue(registry) as queue:
        with tracer.start_as_current_span("request"):
            job = await queue.enqueue("slow")
        await queue.wait(job.id, timeout=10)
    (run,) = runs(spans)
    assert (run.attributes or {})["conveyor.outcome"] == "failed"
    assert run.status.status_code is StatusCode.ERROR
    assert (run.status.description or "").startswith("timed out after 0.2 s")


async def test_an_enqueue_outside_any_span_runs_the_attempt_in_a_new_trace(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        job = await queue.enqueue("noop", 1)
        with tracer.start_as_current_span("unrelated") as unrelated:
            await queue.wait(job.id, timeout=10)
    (run,) = runs(spans)
    assert run.parent is None
    assert run.context is not None
    assert run.context.trace_id != unrelated.get_span_context().trace_id


async def test_an_enqueue_outside_any_span_does_no_tracing_work(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the trace context was injected with no span current")

    monkeypatch.setattr(TraceContextTextMapPropagator, "inject", refuse)
    async with open_test_queue(noop_registry()) as queue:
        job = await queue.enqueue("noop", 1)
        (other,) = await queue.enqueue_many([JobSpec("noop", 2)])
        stored = await queue.get(job.id)
    assert job.trace_context is None
    assert other.trace_context is None
    assert stored is not None
    assert stored.trace_context is None


async def test_every_job_of_an_enqueue_many_in_a_span_continues_its_trace(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        with tracer.start_as_current_span("request") as request:
            jobs = await queue.enqueue_many([JobSpec("noop", n) for n in range(3)])
        await wait_all(queue, jobs)
        stored = await queue.get(jobs[0].id)
    assert stored is not None
    assert stored.trace_context is not None
    assert stored.trace_context == jobs[0].trace_context
    request_id = request.get_span_context().span_id
    parents = [span.parent.span_id for span in runs(spans) if span.parent is not None]
    assert parents == [request_id] * 3


async def test_a_sync_handlers_own_spans_are_children_of_its_attempts_span(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    registry = conveyor.Registry()
    threads: list[int] = []

    @registry.handler("work")
    def work(payload: None) -> None:
        threads.append(threading.get_ident())
        with tracer.start_as_current_span("inside"):
            pass

    async with open_test_queue(registry) as queue:
        job = await queue.enqueue("work")
        await queue.wait(job.id)  # no timeout: time may leap while the thread runs
    assert threads != [threading.get_ident()]
    (run,) = runs(spans)
    (inside,) = [span for span in spans.get_finished_spans() if span.name == "inside"]
    assert run.context is not None
    assert inside.parent is not None
    assert inside.parent.span_id == run.context.span_id


async def test_the_trace_context_is_not_part_of_a_jobs_dict(
    open_test_queue: QueueOpener, spans: InMemorySpanExporter
) -> None:
    async with open_test_queue(noop_registry()) as queue:
        with tracer.start_as_current_span("request"):
            job = await queue.enqueue("noop", 1, delay=3600)
    assert job.trace_context is not None
    assert "traceparent" in job.trace_context
    assert "trace_context" not in job.to_dict()


def test_a_version_5_file_is_upgraded_with_the_trace_context_column(db_path: Path) -> None:
    conn = sqlite3.connect(db_path)
    conn.executescript(f"{sqlite._JOBS_TABLE};{sqlite._LIMITS};{sqlite._OWNERS}")
    conn.execute(
        "INSERT INTO jobs (name, payload, status, priority, max_attempts, run_at, "
        "created_at) VALUES ('noop', '1', 'pending', 5, 3, 0, 0)"
    )
    conn.execute(f"PRAGMA application_id = {sqlite.APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()
    Writer(str(db_path)).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT id, trace_context FROM jobs").fetchall() == [(1, None)]
    assert conn.execute("PRAGMA user_version").fetchone() == (sqlite.SCHEMA_VERSION,)
    conn.close()


def test_a_file_a_version_5_process_marked_back_opens_again(db_path: Path) -> None:
    Writer(str(db_path)).close()
    conn = sqlite3.connect(db_path)
    # A process of version 5 sharing the file writes its version on a ping.
    conn.execute("PRAGMA user_version = 5")
    conn.close()
    Writer(str(db_path)).close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone() == (sqlite.SCHEMA_VERSION,)
    conn.close()


def test_postgres_tables_of_version_1_are_upgraded() -> None:
    with fresh_schema("trace") as schema:
        url = f"{POSTGRES_URL}?schema={schema}"
        with conveyor.blocking.open_queue(url, handlers=noop_registry()):
            pass
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {schema}.jobs DROP COLUMN trace_context")
            conn.execute(f"UPDATE {schema}.conveyor_meta SET version = 1")
        with conveyor.blocking.open_queue(url, handlers=noop_registry()) as queue:
            # conveyor.blocking: the caller's span is carried into the queue's thread.
            with tracer.start_as_current_span("request") as request:
                job = queue.enqueue("noop", 1, delay=3600)
            stored = queue.get(job.id)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            row = conn.execute(f"SELECT version FROM {schema}.conveyor_meta").fetchone()
    assert row == (postgres.SCHEMA_VERSION,)
    assert stored is not None
    assert stored.trace_context == job.trace_context
    trace_id = trace.format_trace_id(request.get_span_context().trace_id)
    assert trace_id in (stored.trace_context or "")


_WITHOUT_OPENTELEMETRY = """
import sys


class Refuse:
    '''Acts as if OpenTelemetry were not installed, and notes every try to import it.'''

    tried = []

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            self.tried.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None


sys.meta_path.insert(0, Refuse())
import trio

import conveyor

registry = conveyor.Registry()


@registry.handler("add")
async def add(payload):
    return payload["a"] + payload["b"]


async def main():
    async with conveyor.open_queue(sys.argv[1], handlers=registry) as queue:
        job = await queue.enqueue("add", {"a": 2, "b": 3})
        done = await queue.wait(job.id, timeout=30)
    print(done.status.value, done.result, done.trace_context, Refuse.tried)


trio.run(main)
try:
    import opentelemetry.trace
except ImportError:
    print("absent")
"""


def test_conveyor_never_imports_opentelemetry_without_it(db_path: Path) -> None:
    ran = subprocess.run(
        [sys.executable, "-c", _WITHOUT_OPENTELEMETRY, str(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["completed 5 None []", "absent"]
