"""The ``conveyor`` command: serve, demo, client commands for a running service, and inspect.

Client commands print a readable table, or JSON with ``--json``; their exit codes are those of
:class:`Exit` (0 success, 3 not found, 4 refused, 5 wait timed out, 1 the service failed or
could not be reached, 2 a wrong command line).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import click
import trio
from rich.console import Console
from rich.markup import escape

from .._errors import ConveyorError
from .._registry import Registry
from ._app import DEFAULT_MAX_BODY
from ._client import DEFAULT_URL, Answer, Client, Exit, ServiceError
from ._demo import DEMO_DB, run_workload
from ._demo import registry as demo_registry
from ._format import job_table, jobs_table, parse_duration, stats_tables
from ._guard import DEFAULT_BODY_TIMEOUT, Hosts, check_bind
from ._inspect import InspectError, inspect_file
from ._server import DEFAULT_PORT, LoadError, Running, ServeOptions, load_registry, serve

console = Console()
errors = Console(stderr=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """conveyor: a durable job queue on SQLite, as a service."""


# --- serving ------------------------------------------------------------------------------------
def _serve_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--workers", default=8, show_default=True, help="Jobs run at once."),
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
        ]
    ):
        function = option(function)
    return function


def _run_server(
    options: ServeOptions,
    registry: Registry,
    after_start: Callable[[Running], Any],
) -> None:
    async def run() -> None:
        async with trio.open_nursery() as nursery:
            running: Running = await nursery.start(partial(serve, options, registry))
            await after_start(running)

    try:
        check_bind(options.host, options.token)
        Hosts.of(options.host, options.allowed_hosts)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        trio.run(run)
    except (ConveyorError, OSError) as exc:
        _fail(Exit.ERROR, f"cannot serve: {exc}")
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if not all(isinstance(leaf, ConveyorError | OSError) for leaf in leaves):
            raise
        _fail(Exit.ERROR, "cannot serve: " + "; ".join(str(leaf) for leaf in leaves))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for error in group.exceptions:
        leaves.extend(_leaves(error) if isinstance(error, BaseExceptionGroup) else [error])
    return leaves


@main.command("serve")
@click.option("--db", default="jobs.db", show_default=True, help="The queue's SQLite file.")
@click.option("--handlers", required=True, help="The Registry to run, as module:attribute.")
@_serve_options
def serve_command(db: str, handlers: str, **kwargs: Any) -> None:
    """Run the queue and its HTTP API (with dashboard and metrics) in one process."""
    try:
        registry = load_registry(handlers)
    except LoadError as exc:
        raise click.BadParameter(str(exc), param_hint="--handlers") from None
    options = ServeOptions(db=db, **kwargs)

    async def announce(running: Running) -> None:
        errors.print(
            f"conveyor: serving [bold]{db}[/] with {options.workers} workers on {running.url} "
            f"(dashboard {running.url}/, API schema {running.url}/openapi.json). Ctrl-C stops."
        )

    _run_server(options, registry, announce)


@main.command("demo")
@click.option("--db", default=DEMO_DB, show_default=True, help="Recreated on every run.")
@click.option("--keep-serving", is_flag=True, help="Keep serving once the workload is done.")
@_serve_options
def demo_command(db: str, keep_serving: bool, **kwargs: Any) -> None:
    """Serve built-in demo handlers and run a mixed workload, shown live."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    options = ServeOptions(db=db, **kwargs)

    async def drive(running: Running) -> None:
        console.print(
            f"conveyor demo: serving [bold]{db}[/] on {running.url}\n"
            f"  dashboard: [link={running.url}/]{running.url}/[/link]   "
            f"metrics: {running.url}/metrics   API: {running.url}/openapi.json"
        )
        done = await run_workload(running.queue, console)
        if done and keep_serving:
            console.print(f"Still serving on {running.url}/ (Ctrl-C stops).")
        elif done:
            console.print("Run with --keep-serving to keep the dashboard up.")
            running.stop()

    _run_server(options, demo_registry, drive)


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
@click.option("--delay", type=float, help="Seconds before it may run.")
@click.option("--key", help="Idempotency key.")
@click.option("--wait", "wait_", is_flag=True, help="Wait until it is finished.")
@_client_options
def enqueue(
    name: str,
    payload: str,
    priority: int,
    delay: float | None,
    key: str | None,
    wait_: bool,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Enqueue a job for handler NAME."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    body: dict[str, Any] = {"name": name, "payload": value, "priority": priority}
    if delay is not None:
        body["delay"] = delay

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
@JOB_ID
@click.option("--timeout", type=float, help="Give up after this many seconds (exit code 5).")
@_client_options
def wait(job_id: int, timeout: float | None, url: str, token: str | None, as_json: bool) -> None:
    """Wait until a job is finished, then show it."""
    _show(_call(url, token, lambda c: c.wait(job_id, timeout)), as_json, job_table)


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
@click.option(
    "--status",
    type=click.Choice(["pending", "running", "completed", "failed", "cancelled"]),
)
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
@click.option("--older-than", required=True, help="Age of finished jobs to delete: 90s, 12h, 7d.")
@_client_options
def purge(older_than: str, url: str, token: str | None, as_json: bool) -> None:
    """Delete finished jobs that finished longer ago than --older-than."""
    try:
        seconds = parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    answer = _call(
        url, token, lambda c: c.call("POST", "/jobs/purge", json={"older_than": seconds})
    )
    _show(answer, as_json, lambda body: f"deleted {body['deleted']} finished jobs")


# --- the file, without a server -----------------------------------------------------------------
@main.command()
@click.option("--db", default="jobs.db", show_default=True, help="The queue's SQLite file.")
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
