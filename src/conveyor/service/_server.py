"""Serving: the queue and its HTTP server in one event loop, with graceful shutdown on signals.

Two engines: uvicorn on asyncio (uvloop and httptools where installed), the faster, or
hypercorn's trio worker. The queue and the app are the same on both (anyio).

The first SIGINT or SIGTERM stops taking requests, ends long polls, lets requests in flight
finish, then closes the queue gracefully (running jobs get the shutdown grace, then go back to
pending; DESIGN §6). A second signal stops at once: the queue is cancelled like a crash, and
jobs that were running are recovered when the file is next opened, so none is lost.

If the queue stops for good while serving (its file deleted or replaced, say: ``open_queue``
raises :class:`conveyor.DatabaseError`), the HTTP server, which runs beside the queue rather
than inside it, answers the requests in flight and any new one with a 503 problem saying why,
stops gracefully, and the error is raised (``conveyor serve`` prints it as one line).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Final, Literal

import anyio
import anyio.abc
import attrs
import hypercorn.config
import hypercorn.trio
import sniffio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ConveyorError
from .._queue import Queue
from .._registry import Registry
from .._runtime import open_queue
from .._storage.sqlite import Synchronous
from ._app import DEFAULT_MAX_BODY, Service
from ._guard import DEFAULT_BODY_TIMEOUT, Hosts, check_bind

Engine = Literal["asyncio", "trio"]
"""The event loop and HTTP server: uvicorn on asyncio, or hypercorn on trio."""
ENGINES: Final[tuple[Engine, ...]] = ("asyncio", "trio")
DEFAULT_PORT: Final = 8327
REQUEST_GRACE: Final = 5.0
"""Seconds requests in flight get to finish once shutdown begins."""


class LoadError(Exception):
    """``--handlers`` does not name an importable :class:`conveyor.Registry`."""


def load_registry(spec: str) -> Registry:
    """Import the :class:`Registry` named by ``module:attribute`` (the current directory first).

    Raises :class:`LoadError` saying whether the form, the module, the attribute or its type is
    wrong.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise LoadError(
            f"--handlers takes module:attribute (for example myapp.jobs:registry), not {spec!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise LoadError(
                f"cannot import module {module_name!r} (from --handlers {spec}): no module "
                f"named {exc.name!r} on the path (the current directory is searched first)"
            ) from None
        raise LoadError(f"importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:
        raise LoadError(f"importing {module_name!r} raised {type(exc).__name__}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        registries = sorted(n for n, v in vars(module).items() if isinstance(v, Registry))
        hint = f" (its registries: {', '.join(registries)})" if registries else ""
        raise LoadError(f"module {module_name!r} has no attribute {attribute!r}{hint}") from None
    if not isinstance(value, Registry):
        raise LoadError(f"{spec} is a {type(value).__name__}, not a conveyor.Registry")
    return value


@attrs.frozen
class ServeOptions:
    """What ``conveyor serve`` runs: the queue's file and workers, and where to listen."""

    db: str = "conveyor.db"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    workers: int = 4
    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    shutdown_grace: float = 10.0
    allowed_hosts: tuple[str, ...] = ()
    """Names besides ``host`` that clients may put in the ``Host`` header."""
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_pending: int | None = None
    synchronous: Synchronous = "normal"
    retention: float | None = None
    """Seconds finished jobs are kept before they are purged (``None``: kept until purged)."""
    engine: Engine = "asyncio"


@attrs.frozen
class Running:
    """A started server: its ``url``, its queue and service, and ``stop`` to shut it down."""

    url: str
    queue: Queue
    service: Service
    stop: Callable[[], None]


def run(
    options: ServeOptions,
    registry: Registry,
    after_start: Callable[[Running], Awaitable[object]],
) -> None:
    """Serve on the options' engine until stopped, calling ``after_start`` once listening.

    Blocks the calling (main) thread. ``"asyncio"`` runs on uvloop where it is installed.
    Raises what :func:`serve` raises.
    """

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            running: Running = await tasks.start(partial(serve, options, registry))
            await after_start(running)

    anyio.run(main, backend=options.engine, backend_options=engine_options(options.engine))


def engine_options(engine: Engine) -> dict[str, object]:
    """anyio's backend options for ``engine``: asyncio on uvloop where it is installed."""
    return {"use_uvloop": _has_uvloop()} if engine == "asyncio" else {}


async def serve(
    options: ServeOptions,
    registry: Registry,
    *,
    task_status: anyio.abc.TaskStatus[Running] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the queue and the HTTP service until a signal (or ``Running.stop``) stops them.

    Runs on the event loop of ``options.engine`` (the caller starts it: see :func:`run`);
    ``ValueError`` on another.
    Must run in the main thread (it handles SIGINT and SIGTERM). Reports a :class:`Running`
    once it listens. Raises ``ValueError`` before doing anything if it would listen on a
    non-loopback address without a token, or an allowed host is not a host name.
    """
    running_on = sniffio.current_async_library()
    if running_on != options.engine:
        raise ValueError(
            f"serve() runs on {running_on}, but ServeOptions.engine is {options.engine!r}: "
            f"start it on that engine's event loop (conveyor.service.run does)"
        )
    check_bind(options.host, options.token)
    Hosts.of(options.host, options.allowed_hosts)
    stop_requested = anyio.Event()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as outer:
            outer.start_soon(on_signals, signals, stop_requested, outer.cancel_scope)
            await _serve_queue(options, registry, stop_requested, task_status)
            outer.cancel_scope.cancel()


async def on_signals(
    signals: AsyncIterator[int],
    stop_requested: anyio.Event,
    everything: anyio.CancelScope,
) -> None:
    async for signum in signals:
        if not stop_requested.is_set():
            print(
                f"{signal.Signals(signum).name}: shutting down gracefully "
                f"(signal again to stop at once)",
                file=sys.stderr,
                flush=True,
            )
            stop_requested.set()
        else:
            print(
                "stopping at once; jobs that were running go back to pending on the next start",
                file=sys.stderr,
                flush=True,
            )
            everything.cancel()


async def _serve_queue(
    options: ServeOptions,
    registry: Registry,
    stop_requested: anyio.Event,
    task_status: anyio.abc.TaskStatus[Running],
) -> None:
    # The HTTP server runs beside the queue, not inside its block: if the queue stops for good
    # (its file deleted, say), the block is cancelled, and the server must outlive it to answer
    # the requests in flight with a 503 instead of dropping their connections.
    http_stop = anyio.Event()
    http_done = anyio.Event()
    service: Service | None = None
    run_http = _run_uvicorn if options.engine == "asyncio" else _run_hypercorn
    async with anyio.create_task_group() as http:
        try:
            async with open_queue(
                options.db,
                handlers=registry,
                workers=options.workers,
                shutdown_grace=options.shutdown_grace,
                max_pending=options.max_pending,
                synchronous=options.synchronous,
                retention=options.retention,
            ) as queue:
                service = Service(
                    queue,
                    registry=registry,
                    token=options.token,
                    max_body=options.max_body,
                    host=options.host,
                    allowed_hosts=options.allowed_hosts,
                    body_timeout=options.body_timeout,
                )
                url: str = await http.start(run_http, service, options, http_stop, http_done)
                task_status.started(Running(url, queue, service, stop_requested.set))
                await stop_requested.wait()
                # Requests in flight finish while the queue still runs; long polls end now.
                service.stop_waits()
                http_stop.set()
                await http_done.wait()
        except ConveyorError as error:
            # The queue stopped for good: answer 503 until the server has stopped, then say why.
            if service is not None:
                service.fail(error)
                http_stop.set()
                await http_done.wait()
            raise
        finally:
            if service is not None:
                service.close()
            http_stop.set()


async def _run_hypercorn(
    service: Service,
    options: ServeOptions,
    stop: anyio.Event,
    done: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's trio worker serving ``service`` until ``stop`` is set (then gracefully);
    reports the URL it listens on, and sets ``done`` once it has stopped."""
    config = hypercorn.config.Config()
    config.bind = [_bind(options.host, options.port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("conveyor.service.http")
    config.graceful_timeout = REQUEST_GRACE
    config.include_server_header = False
    # hypercorn closes a keep-alive connection after 1,000 requests by default, without telling
    # the client in time: a busy producer then sees "server disconnected" mid-request.
    config.keep_alive_max_requests = 2**31

    try:
        async with anyio.create_task_group() as tasks:
            binds = await tasks.start(
                partial(
                    hypercorn.trio.serve,
                    with_access_log(service.asgi),  # type: ignore[arg-type]
                    config,
                    shutdown_trigger=stop.wait,
                )
            )
            task_status.started(binds[0])
    finally:
        done.set()


class _Uvicorn(uvicorn.Server):
    """uvicorn's server without its signal handlers (:func:`serve` handles the signals), saying
    when it has started."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = anyio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()

    async def serve_until_stopped(self, sockets: list[socket.socket]) -> None:
        """Serve on ``sockets``; ``RuntimeError`` if it stopped before it started serving."""
        await self.serve(sockets)
        if not self.listening.is_set():
            raise RuntimeError("uvicorn stopped before it served (its log records say why)")


async def _run_uvicorn(
    service: Service,
    options: ServeOptions,
    stop: anyio.Event,
    done: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """uvicorn (httptools where installed) serving ``service`` until ``stop`` is set (then
    gracefully); reports the URL it listens on once it serves, and sets ``done`` once it has
    stopped."""
    config = uvicorn.Config(
        with_access_log(service.asgi),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # The guard checks the Host header and the access log names the peer: no proxy rewrites.
        proxy_headers=False,
        timeout_graceful_shutdown=int(REQUEST_GRACE),
    )
    server = _Uvicorn(config)
    try:
        with contextlib.ExitStack() as closing:
            listeners = [
                closing.enter_context(listener)
                for listener in _listeners(options.host, options.port, config.backlog)
            ]
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(server.serve_until_stopped, listeners)
                await server.listening.wait()
                task_status.started(_url(listeners[0]))
                await stop.wait()
                server.should_exit = True
    finally:
        done.set()


def _listeners(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address ``host`` names (``localhost``: 127.0.0.1 and ::1,
    where the machine has both), all on one port (a free one for port 0), as hypercorn binds.

    An address the machine cannot bind is skipped when another was bound; ``OSError`` if none
    could be.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    error: OSError | None = None
    for family, ip in dict.fromkeys((info[0], str(info[4][0])) for info in infos):
        bound_port = listeners[0].getsockname()[1] if listeners else port
        try:
            listeners.append(socket.create_server((ip, bound_port), family=family, backlog=backlog))
        except OSError as exc:
            error = error or exc
    if not listeners:
        assert error is not None
        raise error
    return listeners


def _url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://{_bind(host, port)}"


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


access_logger = logging.getLogger("conveyor.access")


def with_access_log(app: ASGIApp) -> ASGIApp:
    """``app`` logging its requests (:class:`AccessLog`) if ``conveyor.access`` logs INFO when
    the server starts; ``app`` itself otherwise (``--no-access-log``), which costs nothing."""
    return AccessLog(app) if access_logger.isEnabledFor(logging.INFO) else app


class AccessLog:
    """Logs every HTTP request at INFO on ``conveyor.access`` once answered: the client,
    method, path, status and duration (also as ``extra`` fields)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client")
            host = client[0] if client else "-"
            took = (time.perf_counter() - started) * 1000
            access_logger.info(
                '%s "%s %s" %d %.1f ms',
                host,
                scope["method"],
                scope["path"],
                status,
                took,
                extra={
                    "http_client": host,
                    "http_method": scope["method"],
                    "http_path": scope["path"],
                    "http_status": status,
                    "http_duration_ms": round(took, 3),
                },
            )


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
