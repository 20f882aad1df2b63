"""The HTTP API (FastAPI) over an open :class:`conveyor.Queue`, and the dashboard's routes.

:class:`Service` owns the app and what it adds to the queue (metrics, the throughput series,
long polls in flight). Routes translate HTTP to queue calls and queue errors to RFC 9457
problems (:mod:`._problems`); they keep no state of their own. The app is served behind
:class:`._guard.Guard`, which checks hosts, auth and origins first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Annotated, Any, Final

import anyio
from fastapi import Body, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp

from .._errors import ConveyorError, JobNotFound, WaitTimeout
from .._job import Job, JobSpec, JobStatus
from .._queue import Queue
from ._guard import DEFAULT_BODY_TIMEOUT, Guard, Hosts
from ._metrics import CONTENT_TYPE, Metrics, ThroughputSeries
from ._models import (
    MAX_ID,
    Batch,
    BatchIn,
    Health,
    JobIn,
    JobList,
    JobOut,
    ProblemOut,
    Purged,
    PurgeIn,
    StatsOut,
    Throughput,
    job_summary_dict,
    job_to_dict,
    stats_to_dict,
)
from ._problems import PROBLEM_MEDIA_TYPE, Problem, problem_for

DEFAULT_MAX_BODY: Final = 1024 * 1024
MAX_WAIT: Final = 60.0
READY_TIMEOUT: Final = 5.0

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]

_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ProblemOut, "description": "Missing or wrong bearer token."},
    421: {"model": ProblemOut, "description": "The Host header names another server."},
    422: {"model": ProblemOut, "description": "A parameter or field is invalid."},
    503: {
        "model": ProblemOut,
        "description": "The database cannot serve the request now (full, locked, failing); "
        "Retry-After says when to try again.",
    },
}
_NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ProblemOut, "description": "No job has this id."}
}
_WRITE: Final[dict[int | str, dict[str, Any]]] = {
    403: {
        "model": ProblemOut,
        "description": "A browser request from a page of another origin, or authenticated by "
        "the dashboard's cookie without proof of its origin.",
    },
    408: {"model": ProblemOut, "description": "The body did not arrive in time."},
    415: {"model": ProblemOut, "description": "A form's content type: the body must be JSON."},
    503: {
        "model": ProblemOut,
        "description": "The queue is full or shutting down, or its database cannot take the "
        "write now; Retry-After says when to try again.",
    },
}
_BODY: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ProblemOut, "description": "The body is not valid JSON."},
    413: {"model": ProblemOut, "description": "The body exceeds the server's limit."},
}
_CONFLICT: Final[dict[int | str, dict[str, Any]]] = {
    409: {"model": ProblemOut, "description": "The job's status does not allow this."}
}


class Service:
    """The HTTP service for ``queue``: :attr:`asgi` is the application to serve.

    ``token`` (if given) is required on every route but ``/healthz``; ``max_body`` bounds request
    bodies in bytes and ``body_timeout`` the seconds they may take to arrive. Requests are
    answered only for a ``Host`` naming ``host`` (the address the server listens on; see
    :class:`._guard.Hosts`) or one of ``allowed_hosts``. ``clock`` gives wall-clock seconds
    (throughput buckets, dashboard sessions). Building it subscribes its metrics to the queue;
    :meth:`close` undoes that. Raises ``ValueError`` naming a bad token, host or timeout.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        host: str = "127.0.0.1",
        allowed_hosts: Iterable[str] = (),
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        hosts = Hosts.of(host, allowed_hosts)
        self.queue = queue
        self.metrics = Metrics()
        self.throughput = ThroughputSeries(clock)
        self._waits: set[anyio.CancelScope] = set()
        self._stopping = False
        queue.subscribe(self.metrics.on_changes)
        queue.subscribe(self.throughput.on_changes)
        self.app = _build_app(self)
        self.asgi: ASGIApp = Guard(
            self.app,
            token=token,
            max_body=max_body,
            hosts=hosts,
            body_timeout=body_timeout,
            clock=clock,
        )

    def stop_waits(self) -> None:
        """End every long poll now (they answer with the job as it is), and any later at once.

        Called when the server starts to shut down, so that open long polls do not hold it up.
        """
        self._stopping = True
        for scope in self._waits:
            scope.cancel()

    def close(self) -> None:
        """Stop feeding metrics from the queue."""
        self.stop_waits()
        self.queue.unsubscribe(self.metrics.on_changes)
        self.queue.unsubscribe(self.throughput.on_changes)

    async def wait(self, job_id: int, timeout: float) -> Job:
        """The job once finished, or as it is after ``timeout`` s or when the server stops."""
        with anyio.CancelScope() as scope:
            if self._stopping:
                scope.cancel()
            self._waits.add(scope)
            try:
                return await self.queue.wait(job_id, timeout)
            except WaitTimeout:
                pass
            finally:
                self._waits.discard(scope)
        job = await self.queue.get(job_id)
        if job is None:
            raise JobNotFound(f"no job has id {job_id}")
        return job


def _spec(job: JobIn, key: str | None = None) -> JobSpec:
    if key is not None and job.idempotency_key is not None and key != job.idempotency_key:
        raise Problem(
            422,
            "invalid",
            "the Idempotency-Key header and the body's idempotency_key differ; give one",
        )
    spec = JobSpec(
        job.name,
        job.payload,
        priority=job.priority,
        delay=job.delay,
        run_at=job.run_at,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        idempotency_key=key if key is not None else job.idempotency_key,
    )
    _check_utf8(spec)
    return spec


def _check_utf8(spec: JobSpec) -> None:
    # JSON escapes can carry lone surrogates ("\ud800"), which Python accepts but UTF-8, and
    # so SQLite, cannot store: refuse them here, naming where they are.
    for what, value in (
        ("name", spec.name),
        ("payload", spec.payload),
        ("idempotency_key", spec.idempotency_key),
    ):
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise Problem(
                422,
                "not-json",
                f"the job's {what} contains a lone UTF-16 surrogate, which cannot be stored "
                f"as UTF-8 text",
            ) from None


def _job_response(job: Job, status: int = 200) -> JSONResponse:
    return JSONResponse(job_to_dict(job), status_code=status)


async def _job_after(
    queue: Queue, changed: bool, job_id: int, action: str, allowed: str
) -> Response:
    """The job after a cancel or requeue (``action``), or the problem if it did not change."""
    job = await queue.get(job_id)
    if changed and job is not None:
        return _job_response(job)
    if job is None:
        detail = f"job {job_id} was {action}, then purged" if changed else f"no job has id {job_id}"
        raise Problem(404, "not-found", detail)
    raise Problem(
        409, "conflict", f"job {job_id} is {job.status.value}; only {allowed} jobs can be {action}"
    )


def _build_app(service: Service) -> FastAPI:
    app = FastAPI(
        title="conveyor",
        summary="A durable job queue on SQLite, as a service.",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
    )
    queue = service.queue
    _add_error_handlers(app)

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobOut,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Enqueue a job",
    )
    async def enqueue(
        job: JobIn,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
        ] = None,
    ) -> Response:
        spec = _spec(job, idempotency_key)
        created = await queue.enqueue(
            spec.name,
            spec.payload,
            priority=spec.priority,
            delay=spec.delay,
            run_at=spec.run_at,
            max_attempts=spec.max_attempts,
            timeout=spec.timeout,
            idempotency_key=spec.idempotency_key,
        )
        return _job_response(created, 201)

    @app.post(
        "/jobs/batch",
        status_code=201,
        response_model=Batch,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Enqueue many jobs in one transaction (all or none)",
    )
    async def enqueue_batch(batch: BatchIn) -> Response:
        jobs = await queue.enqueue_many([_spec(job) for job in batch.jobs])
        return JSONResponse({"jobs": [job_to_dict(job) for job in jobs]}, status_code=201)

    @app.post(
        "/jobs/purge",
        response_model=Purged,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Delete finished jobs older than a bound",
    )
    async def purge(body: Annotated[PurgeIn, Body()]) -> Purged:
        return Purged(deleted=await queue.purge(body.older_than))

    @app.get(
        "/jobs",
        response_model=JobList,
        responses=_ERRORS,
        summary="List jobs, newest first",
        description="Payloads, results and errors come as bounded previews; get a job for "
        "the whole of it.",
    )
    async def list_jobs(
        status: JobStatus | None = None,
        name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[
            int | None, Query(ge=1, le=MAX_ID, description="next_cursor of the previous page")
        ] = None,
    ) -> Response:
        jobs = await queue.list(status=status, name=name, limit=limit, before=cursor)
        next_cursor = jobs[-1].id if len(jobs) == limit else None
        return JSONResponse(
            {"jobs": [job_summary_dict(job) for job in jobs], "next_cursor": next_cursor}
        )

    @app.get(
        "/jobs/{job_id:int}",
        response_model=JobOut,
        responses={**_ERRORS, **_NOT_FOUND},
        summary="Get a job",
    )
    async def get_job(job_id: JobId) -> Response:
        job = await queue.get(job_id)
        if job is None:
            raise Problem(404, "not-found", f"no job has id {job_id}")
        return _job_response(job)

    @app.get(
        "/jobs/{job_id:int}/wait",
        response_model=JobOut,
        responses={**_ERRORS, **_NOT_FOUND},
        summary="Wait for a job to finish (long poll)",
        description="Answers when the job is finished, or with the job as it is after "
        "`timeout` seconds (at most 60): check its `status`, and ask again if needed.",
    )
    async def wait_job(
        job_id: JobId,
        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False)] = 30.0,
    ) -> Response:
        return _job_response(await service.wait(job_id, timeout))

    @app.post(
        "/jobs/{job_id:int}/cancel",
        response_model=JobOut,
        responses={**_ERRORS, **_NOT_FOUND, **_CONFLICT, **_WRITE},
        summary="Cancel a pending or running job",
        description="A running job's handler is cancelled; the job may read `running` until "
        "its handler has stopped, then `cancelled`.",
    )
    async def cancel_job(job_id: JobId) -> Response:
        changed = await queue.cancel(job_id)
        return await _job_after(queue, changed, job_id, "cancelled", "pending or running")

    @app.post(
        "/jobs/{job_id:int}/requeue",
        response_model=JobOut,
        responses={**_ERRORS, **_NOT_FOUND, **_CONFLICT, **_WRITE},
        summary="Requeue a failed or cancelled job (attempts reset)",
    )
    async def requeue_job(job_id: JobId) -> Response:
        changed = await queue.requeue(job_id)
        return await _job_after(queue, changed, job_id, "requeued", "failed or cancelled")

    @app.get("/stats", response_model=StatsOut, responses=_ERRORS, summary="Queue statistics")
    async def stats() -> Response:
        return JSONResponse(stats_to_dict(await queue.stats()))

    @app.get(
        "/stats/throughput",
        response_model=Throughput,
        responses=_ERRORS,
        summary="Finished jobs per 10 s over the last 10 minutes (since the server started)",
    )
    async def throughput() -> Throughput:
        series = service.throughput
        return Throughput.model_validate(
            {
                "bucket_seconds": series.bucket_seconds,
                "buckets": [
                    {"start": start, "completed": completed, "failed": failed}
                    for start, completed, failed in series.series()
                ],
            }
        )

    @app.get("/healthz", response_model=Health, summary="The process is up (no auth)")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        responses=_ERRORS,
        summary="The queue is open and its database takes writes",
    )
    async def readyz() -> Health:
        with anyio.move_on_after(READY_TIMEOUT):
            await queue.ping()
            return Health(status="ready")
        raise Problem(503, "unavailable", f"the store did not commit within {READY_TIMEOUT:g} s")

    @app.get(
        "/metrics",
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            **_ERRORS,
        },
        response_class=Response,
        summary="Prometheus metrics (text format)",
    )
    async def metrics() -> Response:
        body = service.metrics.render(await queue.stats())
        return Response(body, media_type=CONTENT_TYPE)

    static = resources.files("conveyor.service").joinpath("static")
    index = static.joinpath("index.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(index)

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problems_as_problem_json(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _problems_as_problem_json(schema: dict[str, Any]) -> dict[str, Any]:
    """Document error answers with the media type they are sent with."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
    return schema


def _problem_response(problem: Problem) -> Response:
    return Response(
        problem.encode(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers(),
    )


def _allowed_methods(app: FastAPI, request: Request) -> str:
    """Every method some route of this path takes, for a 405's ``Allow``.

    Starlette names only the methods of the first route that matched the path, though a path
    such as ``/jobs`` has one route per method.
    """
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods:
            match, _ = route.matches({**request.scope, "method": ""})
            if match is not Match.NONE:
                methods |= route.methods
    return ", ".join(sorted(methods))


def _add_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return _problem_response(exc)

    async def on_conveyor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConveyorError)
        return _problem_response(problem_for(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors: list[dict[str, object]] = [
            {
                "loc": ".".join(str(part) for part in error.get("loc", ())),
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in exc.errors()
        ]
        detail = "; ".join(f"{error['loc']}: {error['msg']}" for error in errors)
        if any(error["type"] == "json_invalid" for error in errors):
            return _problem_response(
                Problem(400, "bad-request", f"the body is not valid JSON ({detail})", errors=errors)
            )
        return _problem_response(Problem(422, "invalid", detail, errors=errors))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            problem = Problem(404, "no-route", f"no route {request.url.path}")
        elif exc.status_code == 405:
            allow = _allowed_methods(app, request)
            response = _problem_response(
                Problem(
                    405,
                    "method-not-allowed",
                    f"{request.method} is not allowed on {request.url.path} (only {allow})",
                )
            )
            response.headers["allow"] = allow
            return response
        else:
            problem = Problem(exc.status_code, "bad-request", str(exc.detail))
        response = _problem_response(problem)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return _problem_response(
            Problem(500, "internal", f"{type(exc).__name__} while serving {request.url.path}")
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ConveyorError, on_conveyor_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
