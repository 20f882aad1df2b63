"""The ``conveyor`` command: serve, demo, client commands for a running service, and inspect.

Client commands print a readable table, or JSON with ``--json``; their exit codes are those of
:class:`Exit` (0 success, 3 not found, 4 refused, 5 wait timed out, 1 the service failed or
could not be reached, 2 a wrong command line).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import logging
import os
import signal
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Final, NoReturn

import anyio
import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._errors import ConveyorError
from .._job import JobStatus, check_run_at
from .._registry import Registry
from .._runtime import open_queue
from .._storage.sqlite import Synchronous
from ._app import DEFAULT_MAX_BODY
from ._client import DEFAULT_URL, Answer, Client, Exit, ServiceError
from ._demo import DEMO_DB, run_workload
from ._demo import registry as demo_registry
from ._format import (
    handlers_table,
    job_table,
    jobs_table,
    parse_duration,
    progress_counts,
    schedule_table,
    schedules_table,
    stats_tables,
)
from ._guard import DEFAULT_BODY_TIMEOUT, Hosts, check_bind
from ._inspect import InspectError, inspect_file
from ._models import MAX_ATTEMPTS_LIMIT, MAX_PROGRESS_IDS, MAX_PROGRESS_IDS_CHARS, _moment
from ._server import (
    DEFAULT_PORT,
    ENGINES,
    Engine,
    LoadError,
    Running,
    ServeOptions,
    engine_options,
    load_registry,
    on_signals,
)
from ._server import run as run_serving

console = Console()
errors = Console(stderr=True)

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonLines(logging.Formatter):
    """One JSON object a record: time (ISO 8601, UTC), level, logger, message, the
    exception's text if any, and the record's ``extra`` fields (written with the standard
    library: the few lines a dependency would save are these)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in line:
                line[key] = value
        return json.dumps(line, default=str, ensure_ascii=False)


_log_handler: logging.Handler | None = None


DB_HELP: Final = "The queue's SQLite file, or a postgresql:// URL (with ?schema=name)."


class _Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, given as ``90``, ``90s``, ``1m30s``, ``1h`` or ``7d``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


class _Moment(click.ParamType):  # type: ignore[type-arg]
    """Wall-clock epoch seconds, given as such or as an ISO 8601 time with its offset."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            moment = float(value)
        except ValueError:
            try:
                moment = float(_moment(value))  # type: ignore[arg-type]
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        try:
            check_run_at(moment)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return moment


MOMENT = _Moment()


DEFAULT_DB: Final = "conveyor.db"
"""The file the commands use without ``--db``: :func:`conveyor.open_queue`'s default."""
DEFAULT_WORKERS: Final = 4
"""Jobs run at once without ``--workers``: :func:`conveyor.open_queue`'s default."""
SYNCHRONOUS_OPTION: Final = click.option(
    "--synchronous",
    default="normal",
    show_default=True,
    type=click.Choice(["normal", "full"]),
    help="SQLite durability: normal loses nothing on a process crash; full also survives "
    "power loss (an fsync per group commit).",
)


ENGINE_NAMES: Final = {"asyncio": "uvicorn on asyncio", "trio": "hypercorn on trio"}


def without_password(db: str) -> str:
    """``db`` as it may be printed: a URL's password left out."""
    parts = urllib.parse.urlsplit(db)
    if parts.password is None:
        return db
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}@" if parts.username else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """conveyor: a durable job queue on SQLite, as a service."""


# --- serving ------------------------------------------------------------------------------------
LOG_FORMAT_OPTION: Final = click.option(
    "--log-format",
    default="text",
    show_default=True,
    type=click.Choice(LOG_FORMATS, case_sensitive=False),
    help="Log records as text lines, or as JSON objects, one a line.",
)


def _serve_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option(
                "--workers",
                default=DEFAULT_WORKERS,
                show_default=True,
                type=click.IntRange(min=1),
                help="Jobs run at once.",
            ),
            click.option("--host", default="127.0.0.1", show_default=True),
            click.option("--port", default=DEFAULT_PORT, show_default=True, type=int),
            click.option(
                "--token",
                envvar="CONVEYOR_TOKEN",
                help="Require 'Authorization: Bearer TOKEN' (env CONVEYOR_TOKEN).",
            ),
            click.option(
                "--max-body",
                default=DEFAULT_MAX_BODY,
                show_default=True,
                help="Largest request body (so job payload) in bytes.",
            ),
            click.option(
                "--shutdown-grace",
                default=10.0,
                show_default=True,
                help="Seconds running jobs get to finish on shutdown.",
            ),
            click.option(
                "--allowed-host",
                "allowed_hosts",
                multiple=True,
                metavar="NAME",
                help="A name clients reach the server by, besides --host (repeatable; "
                "*.example.com for subdomains). Other Host headers are refused.",
            ),
            click.option(
                "--body-timeout",
                default=DEFAULT_BODY_TIMEOUT,
                show_default=True,
                type=click.FloatRange(min=0, min_open=True),
                help="Seconds a request body may take to arrive.",
            ),
            click.option(
                "--log-level",
                default="info",
                show_default=True,
                type=click.Choice(LOG_LEVELS, case_sensitive=False),
                help="The least severe of conveyor's log records printed on stderr.",
            ),
            LOG_FORMAT_OPTION,
        ]
    ):
        function = option(function)
    return function


def log_to_stderr(level: str, log_format: str = "text", *, access_log: bool = False) -> None:
    """Print the ``conveyor`` logger's records of ``level`` and above on stderr (recoveries from
    storage faults and memory pressure are INFO), as text or JSON lines; with ``access_log``,
    a record a request (``conveyor.access``, INFO). The HTTP server's own records (hypercorn's
    and uvicorn's: they announce the address, which the serve line already gives) only from
    WARNING, or with ``debug``."""
    global _log_handler
    logger = logging.getLogger("conveyor")
    if _log_handler is not None:
        logger.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(
        JsonLines() if log_format == "json" else logging.Formatter(LOG_FORMAT)
    )
    logging.getLogger("conveyor.access").setLevel(logging.INFO if access_log else logging.WARNING)
    logger.addHandler(_log_handler)
    logger.setLevel(level.upper())
    http_level = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    logging.getLogger("conveyor.service.http").setLevel(http_level)
    # uvicorn (--engine asyncio) logs under its own name: the same handler, the same levels.
    uvicorn_logger = logging.getLogger("uvicorn.error")
    uvicorn_logger.handlers = [_log_handler]
    uvicorn_logger.propagate = False
    uvicorn_logger.setLevel(http_level)


def _run_server(
    options: ServeOptions,
    registry: Registry,
    after_start: Callable[[Running], Any],
    log_level: str,
    log_format: str,
    *,
    access_log: bool,
) -> None:
    try:
        check_bind(options.host, options.token)
        Hosts.of(options.host, options.allowed_hosts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    log_to_stderr(log_level, log_format, access_log=access_log)
    try:
        with collecting_less_often() as freeze:

            async def frozen_then(running: Running) -> None:
                freeze()
                await after_start(running)

            run_serving(options, registry, frozen_then)
    except (ConveyorError, OSError) as exc:
        _fail(Exit.ERROR, f"cannot serve: {exc}")
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(leaf, ConveyorError | OSError) for leaf in leaves):
            raise
        _fail(Exit.ERROR, "cannot serve: " + "; ".join(str(leaf) for leaf in leaves))


YOUNG_COLLECTION_THRESHOLD: Final = 100_000
"""Container objects allocated (net) between two young-generation collections while a server
of the command line serves: above what the requests in flight hold (eight batches of 1,000
jobs hold ~90,000). At Python's default of 700 a collection ran every few jobs and promoted
the requests' objects to the old generation, whose full collections took a third of the
server's time (bench/README.md)."""


@contextlib.contextmanager
def collecting_less_often() -> Iterator[Callable[[], None]]:
    """Collect cyclic garbage less often in the block (:data:`YOUNG_COLLECTION_THRESHOLD`), and
    give the block ``freeze``: call it once the server listens, so that the full collections
    no longer walk what lives as long as the process (modules, the app, the queue). After the
    block, the collector is as before. Only the process's own commands use it: a program that
    serves by :func:`conveyor.service.run` keeps its collector's settings."""
    before = gc.get_threshold()
    frozen = False

    def freeze() -> None:
        nonlocal frozen
        gc.collect()  # what is garbage already is freed, not frozen with the rest
        gc.freeze()
        frozen = True

    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *before[1:])
    try:
        yield freeze
    finally:
        gc.set_threshold(*before)
        if frozen:
            gc.unfreeze()


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


@main.command("serve")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--handlers", required=True, help="The Registry to run, as module:attribute.")
@click.option(
    "--access-log/--no-access-log",
    default=True,
    show_default=True,
    help="Log each request (client, method, path, status, duration) at INFO.",
)
@click.option(
    "--engine",
    default=ServeOptions().engine,
    show_default=True,
    type=click.Choice(ENGINES),
    help="uvicorn on asyncio, or hypercorn on trio.",
)
@click.option(
    "--max-pending",
    type=click.IntRange(min=1),
    help="Most jobs pending at once: enqueues beyond it are refused (queue full). "
    "Default: no bound.",
)
@SYNCHRONOUS_OPTION
@click.option(
    "--retention",
    type=DURATION,
    help="Purge finished jobs this long after they finished: 90s, 12h, 7d. "
    "Default: keep them until purged.",
)
@_serve_options
def serve_command(
    db: str, handlers: str, access_log: bool, log_level: str, log_format: str, **kwargs: Any
) -> None:
    """Run the queue and its HTTP API (with dashboard and metrics) in one process."""
    try:
        registry = load_registry(handlers)
    except LoadError as exc:
        raise click.BadParameter(str(exc), param_hint="--handlers") from None
    options = ServeOptions(db=db, **kwargs)

    async def announce(running: Running) -> None:
        # One unwrapped line, whatever the terminal's width and the path's length: scripts
        # (and the tests) read the URL from it.
        errors.print(
            f"conveyor: serving [bold]{escape(without_password(db))}[/] with "
            f"{options.workers} workers on "
            f"{running.url} (dashboard {running.url}/, API schema {running.url}/openapi.json; "
            f"{ENGINE_NAMES[options.engine]}). Ctrl-C stops.",
            soft_wrap=True,
        )

    _run_server(options, registry, announce, log_level, log_format, access_log=access_log)


@main.command("worker")
@click.option("--db", default=DEFAULT_DB, show_default=True, help=DB_HELP)
@click.option("--handlers", required=True, help="The Registry to run, as module:attribute.")
@click.option(
    "--workers",
    default=DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs at once.",
)
@SYNCHRONOUS_OPTION
@click.option(
    "--engine",
    default="trio",
    show_default=True,
    type=click.Choice(ENGINES),
    help="The event loop the handlers run on (trio drains fastest; no HTTP here).",
)
@click.option(
    "--shutdown-grace",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds running jobs get to finish when the worker is told to stop.",
)
@click.option(
    "--heartbeat",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between lease renewals: a worker silent for two is taken over.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="The least severe of conveyor's log records printed on stderr.",
)
@LOG_FORMAT_OPTION
def worker_command(
    db: str,
    handlers: str,
    workers: int,
    synchronous: Synchronous,
    engine: Engine,
    shutdown_grace: float,
    heartbeat: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the handlers of a registry on a queue file, with no HTTP: one more worker process
    beside the others (and the producers) on the file. SIGTERM or Ctrl-C stops it gracefully:
    running jobs get the grace to finish, the rest go back to pending."""
    try:
        registry = load_registry(handlers)
    except LoadError as exc:
        raise click.BadParameter(str(exc), param_hint="--handlers") from None
    log_to_stderr(log_level, log_format)

    async def run() -> None:
        stop_requested = anyio.Event()
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with anyio.create_task_group() as everything:
                # The first signal stops gracefully; a second at once (like serve).
                everything.start_soon(on_signals, signals, stop_requested, everything.cancel_scope)
                async with open_queue(
                    db,
                    handlers=registry,
                    workers=workers,
                    synchronous=synchronous,
                    shutdown_grace=shutdown_grace,
                    heartbeat=heartbeat,
                ):
                    errors.print(
                        f"conveyor: worker on [bold]{escape(without_password(db))}[/] running "
                        f"{', '.join(sorted(registry)) or 'no handlers'} with {workers} "
                        f"workers on {engine} (process {os.getpid()}). SIGTERM or Ctrl-C stops.",
                        soft_wrap=True,
                    )
                    await stop_requested.wait()
                everything.cancel_scope.cancel()

    try:
        anyio.run(run, backend=engine, backend_options=engine_options(engine))
    except ConveyorError as exc:
        _fail(Exit.ERROR, f"cannot run the worker: {exc}")


@main.command("demo")
@click.option("--db", default=DEMO_DB, show_default=True, help="Recreated on every run.")
@click.option("--keep-serving", is_flag=True, help="Keep serving once the workload is done.")
@_serve_options
def demo_command(
    db: str, keep_serving: bool, log_level: str, log_format: str, **kwargs: Any
) -> None:
    """Serve built-in demo handlers and run a mixed workload, shown live."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    options = ServeOptions(db=db, **kwargs)

    async def drive(running: Running) -> None:
        console.print(
            f"conveyor demo: serving [bold]{escape(db)}[/] on {running.url}\n"
            f"  dashboard: [link={running.url}/]{running.url}/[/link]   "
            f"metrics: {running.url}/metrics   API: {running.url}/openapi.json",
            soft_wrap=True,
        )
        done = await run_workload(running.queue, console)
        if done and keep_serving:
            console.print(f"Still serving on {running.url}/ (Ctrl-C stops).")
        elif done:
            console.print("Run with --keep-serving to keep the dashboard up.")
            running.stop()

    _run_server(options, demo_registry, drive, log_level, log_format, access_log=False)


# --- client commands ----------------------------------------------------------------------------
def _client_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)
    function = click.option(
        "--token", envvar="CONVEYOR_TOKEN", help="Bearer token (env CONVEYOR_TOKEN)."
    )(function)
    return click.option(
        "--url",
        envvar="CONVEYOR_URL",
        default=DEFAULT_URL,
        show_default=True,
        help="The service (env CONVEYOR_URL).",
    )(function)


def _fail(code: Exit, message: str) -> NoReturn:
    # Unwrapped and unparsed: a path or a bracket in the message must reach the user intact,
    # whatever the terminal's width.
    errors.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _call(url: str, token: str | None, request: Callable[[Client], Answer]) -> Answer:
    client = Client(url, token)
    try:
        answer = request(client)
    except ServiceError as exc:
        _fail(Exit.ERROR, str(exc))
    finally:
        client.close()
    return answer


def _show(answer: Answer, as_json: bool, render: Callable[[Any], Any]) -> None:
    if as_json:
        click.echo(json.dumps(answer.body, indent=2, ensure_ascii=False))
    elif answer.exit is Exit.OK or answer.exit is Exit.TIMEOUT:
        rendered = render(answer.body)
        for item in rendered if isinstance(rendered, list) else [rendered]:
            console.print(item)
    if answer.exit is not Exit.OK:
        _fail(answer.exit, answer.reason)


def _job_id(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise click.BadParameter(f"a job id is a positive integer, not {value!r}")
    return int(value)


JOB_ID = click.argument("job_id", type=_job_id, metavar="ID")


@main.command()
@click.argument("name")
@click.option("--payload", default="null", help="The job's payload, as JSON.")
@click.option("--priority", type=int, default=5, show_default=True, help="1 (first) to 10.")
@click.option("--delay", type=DURATION, help="How long before it may run: 90, 90s, 1m30s, 2h.")
@click.option(
    "--run-at",
    type=MOMENT,
    help="When it may run: 2030-01-01T09:00:00Z (ISO 8601 with its offset) or epoch seconds. "
    "Not with --delay.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, MAX_ATTEMPTS_LIMIT),
    help="Attempts before it fails (default: the handler's).",
)
@click.option(
    "--timeout", type=DURATION, help="How long an attempt may run (default: the handler's)."
)
@click.option("--key", help="Idempotency key.")
@click.option("--wait", "wait_", is_flag=True, help="Wait until it is finished.")
@_client_options
def enqueue(
    name: str,
    payload: str,
    priority: int,
    delay: float | None,
    run_at: float | None,
    max_attempts: int | None,
    timeout: float | None,
    key: str | None,
    wait_: bool,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Enqueue a job for handler NAME."""
    if delay is not None and run_at is not None:
        raise click.UsageError("give --delay or --run-at, not both")
    if timeout is not None and timeout <= 0:
        raise click.BadParameter("a timeout must be more than 0 seconds", param_hint="--timeout")
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    body: dict[str, Any] = {"name": name, "payload": value, "priority": priority}
    optional = {"delay": delay, "run_at": run_at, "max_attempts": max_attempts, "timeout": timeout}
    body.update((field, given) for field, given in optional.items() if given is not None)

    def request(client: Client) -> Answer:
        headers = {"Idempotency-Key": key} if key else None
        answer = client.call("POST", "/jobs", json=body, headers=headers)
        if wait_ and answer.exit is Exit.OK:
            return client.wait(answer.body["id"], None)
        return answer

    _show(_call(url, token, request), as_json, job_table)


@main.command()
@JOB_ID
@_client_options
def get(job_id: int, url: str, token: str | None, as_json: bool) -> None:
    """Show a job."""
    _show(_call(url, token, lambda c: c.call("GET", f"/jobs/{job_id}")), as_json, job_table)


@main.command()
@click.argument("job_ids", nargs=-1, required=True, type=_job_id, metavar="ID...")
@click.option(
    "--all",
    "all_",
    is_flag=True,
    help=f"Wait for every job given (at most {MAX_PROGRESS_IDS}), showing a progress bar.",
)
@click.option(
    "--timeout", type=DURATION, help="Give up after this long (exit code 5): 30, 30s, 5m."
)
@_client_options
def wait(
    job_ids: tuple[int, ...],
    all_: bool,
    timeout: float | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Wait until a job is finished, then show it; with --all, until every job given is."""
    if not all_:
        if len(job_ids) != 1:
            raise click.UsageError("give one job ID, or --all to wait for several")
        (job_id,) = job_ids
        _show(_call(url, token, lambda c: c.wait(job_id, timeout)), as_json, job_table)
        return
    ids = list(dict.fromkeys(job_ids))
    if len(ids) > MAX_PROGRESS_IDS or len(",".join(map(str, ids))) > MAX_PROGRESS_IDS_CHARS:
        raise click.UsageError(
            f"--all follows at most {MAX_PROGRESS_IDS} jobs ({MAX_PROGRESS_IDS_CHARS} characters "
            f"of ids), not {len(ids)}"
        )
    _show(_call(url, token, lambda c: _follow(c, ids, timeout, as_json)), as_json, _finished)


def _follow(client: Client, ids: list[int], timeout: float | None, as_json: bool) -> Answer:
    """Follow the batch with a progress bar (none with ``as_json``); its last answer."""
    bar = Progress(
        TextColumn("jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
        console=console,
        disable=as_json,
    )
    answer = Answer(Exit.ERROR, None, "no answer")
    task = bar.add_task("jobs", total=len(ids), counts="")
    try:
        for answer in client.progress(ids, timeout):
            body = answer.body
            if isinstance(body, dict) and "finished" in body:
                bar.start()  # once the batch is known: an error shows no empty bar
                bar.update(
                    task,
                    total=body["total"],
                    completed=body["finished"],
                    counts=progress_counts(body),
                )
    finally:
        bar.stop()
    return answer


def _finished(body: dict[str, Any]) -> str:
    return f"{body['finished']} of {body['total']} jobs finished: {progress_counts(body)}"


@main.command()
@JOB_ID
@_client_options
def cancel(job_id: int, url: str, token: str | None, as_json: bool) -> None:
    """Cancel a pending or running job."""
    answer = _call(url, token, lambda c: c.call("POST", f"/jobs/{job_id}/cancel"))
    _show(answer, as_json, job_table)


@main.command()
@JOB_ID
@_client_options
def requeue(job_id: int, url: str, token: str | None, as_json: bool) -> None:
    """Requeue a failed or cancelled job."""
    answer = _call(url, token, lambda c: c.call("POST", f"/jobs/{job_id}/requeue"))
    _show(answer, as_json, job_table)


@main.command("list")
@click.option("--status", type=click.Choice([status.value for status in JobStatus]))
@click.option("--name", help="Only jobs of this handler.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--cursor", type=int, help="next_cursor of the previous page.")
@_client_options
def list_command(
    status: str | None,
    name: str | None,
    limit: int,
    cursor: int | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    params = {"status": status, "name": name, "limit": limit, "cursor": cursor}
    answer = _call(url, token, lambda c: c.call("GET", "/jobs", params=params))

    def render(body: dict[str, Any]) -> list[Any]:
        more = body["next_cursor"]
        return [jobs_table(body["jobs"])] + ([f"more: --cursor {more}"] if more else [])

    _show(answer, as_json, render)


@main.command()
@_client_options
def stats(url: str, token: str | None, as_json: bool) -> None:
    """Show counts by status and handler, and the last minute's throughput."""
    _show(_call(url, token, lambda c: c.call("GET", "/stats")), as_json, stats_tables)


@main.command()
@click.option(
    "--older-than",
    required=True,
    type=DURATION,
    help="Age of finished jobs to delete: 90s, 12h, 7d.",
)
@_client_options
def purge(older_than: float, url: str, token: str | None, as_json: bool) -> None:
    """Delete finished jobs that finished longer ago than --older-than."""
    answer = _call(
        url, token, lambda c: c.call("POST", "/jobs/purge", json={"older_than": older_than})
    )
    _show(answer, as_json, lambda body: f"deleted {body['deleted']} finished jobs")


def _handler_filter(name: str | None) -> dict[str, str] | None:
    return None if name is None else {"name": name}


def _of_handler(name: str | None) -> str:
    return "" if name is None else f" of handler {escape(name)}"


@main.command("requeue-failed")
@click.option("--name", help="Only jobs of this handler.")
@_client_options
def requeue_failed(name: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Requeue every failed job (attempts reset); the jobs their failure cancelled wait again."""
    answer = _call(
        url,
        token,
        lambda c: c.call("POST", "/jobs/requeue-failed", json=_handler_filter(name)),
    )
    _show(
        answer,
        as_json,
        lambda body: f"requeued {body['requeued']} failed jobs{_of_handler(name)}",
    )


@main.command("cancel-pending")
@click.option("--name", help="Only jobs of this handler.")
@_client_options
def cancel_pending(name: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Cancel every pending and waiting job (and the jobs that run after them)."""
    answer = _call(
        url,
        token,
        lambda c: c.call("POST", "/jobs/cancel-pending", json=_handler_filter(name)),
    )
    _show(
        answer,
        as_json,
        lambda body: f"cancelled {body['cancelled']} pending and waiting jobs{_of_handler(name)}",
    )


# --- handlers -----------------------------------------------------------------------------------
@main.command()
@_client_options
def handlers(url: str, token: str | None, as_json: bool) -> None:
    """List handlers: paused or not, their limits, and their jobs by status."""
    answer = _call(url, token, lambda c: c.call("GET", "/handlers"))
    _show(
        answer,
        as_json,
        lambda body: handlers_table(body["handlers"]) if body["handlers"] else "no handlers",
    )


def _set_paused(name: str, action: str, url: str, token: str | None, as_json: bool) -> None:
    path = f"/handlers/{urllib.parse.quote(name, safe='')}/{action}"
    answer = _call(url, token, lambda c: c.call("POST", path))
    done = {"pause": "paused", "resume": "resumed"}[action]
    already = {"pause": "was already paused", "resume": "was not paused"}[action]
    _show(
        answer,
        as_json,
        lambda body: (
            f"{done} handler {escape(name)}"
            if body["changed"]
            else f"handler {escape(name)} {already}"
        ),
    )


@main.command()
@click.argument("name")
@_client_options
def pause(name: str, url: str, token: str | None, as_json: bool) -> None:
    """Pause handler NAME: its pending jobs are not started until it is resumed (running ones
    finish). The pause is stored: it holds across restarts."""
    _set_paused(name, "pause", url, token, as_json)


@main.command()
@click.argument("name")
@_client_options
def resume(name: str, url: str, token: str | None, as_json: bool) -> None:
    """Resume handler NAME: its pending jobs start again."""
    _set_paused(name, "resume", url, token, as_json)


# --- schedules ----------------------------------------------------------------------------------
@main.group()
def schedule() -> None:
    """Recurring jobs: add (or replace), list and remove schedules."""


@schedule.command("add")
@click.argument("key")
@click.argument("name")
@click.option("--payload", default="null", help="Each job's payload, as JSON.")
@click.option("--every", help="Period between ticks: 90s, 15m, 12h, 1d (at least 1s).")
@click.option("--cron", help="Five cron fields, quoted: '0 3 * * *' (minute hour day month wday).")
@click.option(
    "--timezone", default="UTC", show_default=True, help="IANA time zone the cron is read in."
)
@click.option(
    "--catch-up",
    type=click.Choice(["latest", "all", "none"]),
    default="latest",
    show_default=True,
    help="Ticks missed while no process had the file open: one job, one per tick, or none.",
)
@click.option("--priority", type=int, default=5, show_default=True, help="1 (first) to 10.")
@click.option("--max-attempts", type=int, help="Attempts per job (default: the handler's).")
@click.option(
    "--timeout", type=DURATION, help="How long each job may run (default: the handler's)."
)
@_client_options
def schedule_add(
    key: str,
    name: str,
    payload: str,
    every: str | None,
    cron: str | None,
    timezone: str,
    catch_up: str,
    priority: int,
    max_attempts: int | None,
    timeout: float | None,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Store a schedule under KEY that enqueues a job for handler NAME at each tick
    (replacing the schedule stored under KEY). Give --every or --cron."""
    if (every is None) == (cron is None):
        raise click.UsageError("give exactly one of --every and --cron")
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    body: dict[str, Any] = {
        "key": key,
        "name": name,
        "payload": value,
        "timezone": timezone,
        "catch_up": catch_up,
        "priority": priority,
    }
    if every is not None:
        try:
            body["every"] = parse_duration(every)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--every") from None
    else:
        body["cron"] = cron
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    if timeout is not None:
        body["timeout"] = timeout
    answer = _call(url, token, lambda c: c.call("POST", "/schedules", json=body))
    _show(answer, as_json, schedule_table)


@schedule.command("list")
@_client_options
def schedule_list(url: str, token: str | None, as_json: bool) -> None:
    """List schedules: cadence, next and last tick, and the last job's status."""
    answer = _call(url, token, lambda c: c.call("GET", "/schedules"))
    _show(
        answer,
        as_json,
        lambda body: schedules_table(body["schedules"]) if body["schedules"] else "no schedules",
    )


@schedule.command("rm")
@click.argument("key")
@_client_options
def schedule_rm(key: str, url: str, token: str | None, as_json: bool) -> None:
    """Remove the schedule stored under KEY (the jobs it enqueued stay)."""

    def request(client: Client) -> Answer:
        answer = client.call("DELETE", f"/schedules/{urllib.parse.quote(key, safe='')}")
        return Answer(Exit.OK, {"removed": key}) if answer.exit is Exit.OK else answer

    answer = _call(url, token, request)
    _show(answer, as_json, lambda body: f"removed schedule {escape(body['removed'])}")


# --- the file, without a server -----------------------------------------------------------------
@main.command()
@click.option("--db", default=DEFAULT_DB, show_default=True, help="The queue's SQLite file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(db: str, as_json: bool) -> None:
    """Read a queue's file directly (safe while a server runs): counts and failed jobs."""
    try:
        report = inspect_file(db)
    except InspectError as exc:
        _fail(Exit.ERROR, str(exc))
    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    console.print(f"[bold]{escape(report['path'])}[/]", soft_wrap=True)
    stats = {**report, "throughput": 0.0, "avg_duration": None, "success_rate": None}
    summary, _, by_name = stats_tables(stats)
    console.print(summary)
    age = report["oldest_pending_age"]
    console.print("oldest pending job: " + ("none" if age is None else f"{age:.1f} s old"))
    console.print(by_name)
    if report["failed"]:
        console.print(f"[bold red]failed jobs[/] (newest {len(report['failed'])}):")
        console.print(jobs_table(report["failed"]))
