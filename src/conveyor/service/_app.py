"""The HTTP API (FastAPI) over an open :class:`conveyor.Queue`, and the dashboard's routes.

:class:`Service` owns the app and what it adds to the queue (metrics, the throughput series,
long polls in flight). Routes translate HTTP to queue calls and queue errors to RFC 9457
problems (:mod:`._problems`); they keep no state of their own. The app is served behind
:class:`._guard.Guard`, which checks hosts, auth and origins first.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from importlib import resources
from typing import Annotated, Any, Final, TypeVar, cast

import anyio
from fastapi import Body, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ConveyorError, JobNotFound
from .._job import MAX_KEY_LENGTH, Job, JobSpec, JobStatus
from .._queue import BatchProgress, Queue
from .._registry import Registry
from .._workflow import Step, Workflow
from ._guard import (
    AUTH_SCOPE_KEY,
    DEFAULT_BODY_TIMEOUT,
    OLD_COOKIES,
    OPEN_PATHS,
    Guard,
    Hosts,
    Sessions,
    replay_body,
    route_path,
)
from ._metrics import CONTENT_TYPE, Metrics, ThroughputSeries
from ._models import (
    MAX_ID,
    MAX_NAME_LENGTH,
    MAX_PROGRESS_IDS,
    MAX_PROGRESS_IDS_CHARS,
    MAX_WORKFLOW,
    Batch,
    BatchIn,
    CancelInProgress,
    Cancelled,
    HandlerFilterIn,
    HandlerList,
    Health,
    JobIn,
    JobList,
    JobOut,
    Paused,
    ProblemOut,
    ProgressOut,
    Purged,
    PurgeIn,
    Requeued,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
    SessionOut,
    StatsOut,
    Throughput,
    WorkflowIn,
    WorkflowOut,
    handler_to_dict,
    job_summary_dict,
    job_to_dict,
    progress_state,
    progress_to_dict,
    schedule_to_dict,
    stats_to_dict,
)
from ._problems import PROBLEM_MEDIA_TYPE, Problem, problem_for
from ._responses import JSONResponse

DEFAULT_MAX_BODY: Final = 1024 * 1024
MAX_WAIT: Final = 60.0
READY_TIMEOUT: Final = 5.0

T = TypeVar("T")

JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")]
ScheduleKey = Annotated[
    str, Path(min_length=1, max_length=MAX_KEY_LENGTH, description="The schedule's key.")
]
HandlerName = Annotated[
    str, Path(min_length=1, max_length=MAX_NAME_LENGTH, description="The handler's name.")
]

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
_NO_SCHEDULE: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ProblemOut, "description": "No schedule has this key."}
}
_NO_HANDLER: Final[dict[int | str, dict[str, Any]]] = {
    404: {
        "model": ProblemOut,
        "description": "The server runs no handler of this name, and none is paused.",
    }
}
_UNKNOWN_JOBS: Final[dict[int | str, dict[str, Any]]] = {
    404: {"model": ProblemOut, "description": "One of the ids names no job."}
}


class Service:
    """The HTTP service for ``queue``: :attr:`asgi` is the application to serve.

    ``registry`` is the queue's :class:`conveyor.Registry`, which ``GET /handlers`` describes
    (without it, that route knows handlers only by their jobs and pauses). ``token`` (if given)
    is required on every route but ``/healthz`` and the dashboard's files; ``max_body`` bounds
    request bodies in bytes and ``body_timeout`` the seconds they may take to arrive. Requests
    are answered only for a ``Host`` naming ``host`` (the address the server listens on; see
    :class:`._guard.Hosts`) or one of ``allowed_hosts``. ``clock`` gives wall-clock seconds
    (throughput buckets, dashboard sessions). Building it subscribes its metrics to the queue;
    :meth:`close` undoes that. Raises ``ValueError`` naming a bad token, host or timeout.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        registry: Registry | None = None,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        host: str = "127.0.0.1",
        allowed_hosts: Iterable[str] = (),
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        hosts = Hosts.of(host, allowed_hosts)
        self.queue = queue
        self.registry = registry
        self.metrics = Metrics()
        self.throughput = ThroughputSeries(clock)
        self.stopped: str | None = None
        """Why the queue stopped for good, once it has: every request is then a 503."""
        self._waits: set[anyio.CancelScope] = set()
        self._stopping = False
        self.app = _build_app(self)
        guard = Guard(
            self._unless_stopped,
            token=token,
            max_body=max_body,
            hosts=hosts,
            body_timeout=body_timeout,
            clock=clock,
        )
        self.sessions: Sessions | None = guard.sessions
        self.asgi: ASGIApp = guard
        queue.subscribe(self.metrics.on_changes)
        queue.subscribe(self.throughput.on_changes)

    async def _unless_stopped(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.stopped is not None and scope["type"] == "http":
            await _problem_response(_stopped_problem(self.stopped))(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) == "/jobs":
            await self._enqueue(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _enqueue(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /jobs`` without FastAPI's routing, dependency solving and middleware, which
        cost as much as the enqueue itself: the same model, checks and answers. A request that
        this path does not take as it is (not JSON, invalid) goes to the FastAPI route before
        anything is written, which answers it as for every other route."""
        message = await receive()  # the whole body: the guard read it, and replays it
        spec = _enqueue_spec(scope, message)
        if spec is None:
            await self.app(scope, replay_body(message.get("body", b""), receive), send)
            return
        try:
            stored, replayed = await self.queue._enqueue_or_replay(spec)
        except JobNotFound as exc:
            response: Response = _problem_response(Problem(422, "unknown-job", str(exc)))
        except ConveyorError as exc:
            response = _problem_response(problem_for(exc))
        else:
            response = _job_response(stored, 200 if replayed else 201)
            if replayed:
                response.headers[REPLAYED_HEADER] = "true"
        await response(scope, receive, send)

    def fail(self, error: BaseException) -> None:
        """The queue stopped for good with ``error``: answer every request with a 503 problem
        saying so from now on, and end the long polls (they answer the same)."""
        self.stopped = str(error)
        self.stop_waits()

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

    @contextlib.contextmanager
    def _long_poll(self, timeout: float) -> Iterator[None]:
        """A scope that ends after ``timeout`` s, or when the server stops (see
        :meth:`stop_waits`); ended because the queue stopped for good, it raises a 503."""
        with anyio.move_on_after(timeout) as scope:
            if self._stopping:
                scope.cancel()
            self._waits.add(scope)
            try:
                yield
            finally:
                self._waits.discard(scope)
        if scope.cancelled_caught and self.stopped is not None:
            raise _stopped_problem(self.stopped)

    async def wait(self, job_id: int, timeout: float) -> Job:
        """The job once finished, or as it is after ``timeout`` s or when the server stops."""
        with self._long_poll(timeout):
            return await self.queue.wait(job_id)
        job = await self.queue.get(job_id)
        if job is None:
            raise JobNotFound(f"no job has id {job_id}")
        return job

    async def progress(self, ids: list[int], since: str | None, timeout: float) -> BatchProgress:
        """Where the jobs of ``ids`` stand: at once if ``since`` is not given or differs from
        their state (:func:`._models.progress_state`), else once it changes, or as it is after
        ``timeout`` s or when the server stops."""
        # Queue.progress is an async generator: closed here, so that it stops following the
        # jobs as soon as the answer is known.
        updates = cast(AsyncGenerator[BatchProgress, None], self.queue.progress(ids))
        try:
            latest = await anext(updates)
            if since is None or progress_state(latest) != since:
                return latest
            with self._long_poll(timeout):
                async for latest in updates:
                    if progress_state(latest) != since:
                        break
            return latest
        finally:
            await updates.aclose()


def _stopped_problem(reason: str) -> Problem:
    return Problem(503, "unavailable", f"{reason} The server is stopping.")


def _spec(job: JobIn, key: str | None = None) -> JobSpec:
    if key is not None and job.idempotency_key is not None and key != job.idempotency_key:
        raise Problem(
            422,
            "invalid",
            "the Idempotency-Key header and the body's idempotency_key differ; give one",
        )
    # A lone surrogate ("\ud800", which JSON escapes can carry) is refused by JobSpec in the
    # name and keys, and by the enqueue's one encode in the payload: a 422 either way.
    return JobSpec(
        job.name,
        job.payload,
        priority=job.priority,
        delay=job.delay,
        run_at=job.run_at,
        max_attempts=job.max_attempts,
        timeout=job.timeout,
        idempotency_key=key if key is not None else job.idempotency_key,
        after=job.after,
        concurrency_key=job.concurrency_key,
    )


async def _enqueued(stored: Awaitable[T]) -> T:
    """What an enqueue returns; an ``after`` id that names no job is the request's fault
    (a 422), not a missing resource."""
    try:
        return await stored
    except JobNotFound as exc:
        raise Problem(422, "unknown-job", str(exc)) from None


def _workflow(body: WorkflowIn) -> Workflow:
    """The request's steps as a :class:`Workflow`; a 422 naming the first step that runs
    after itself or a later step."""
    flow = Workflow()
    steps: list[Step] = []
    for index, step in enumerate(body.steps):
        for earlier in step.after_steps:
            if earlier >= index:
                which = "itself" if earlier == index else f"step {earlier}, a later step"
                earlier_steps = "step 0" if index == 1 else f"steps 0 to {index - 1}"
                detail = (
                    f"step {index} runs after {which}: after_steps names earlier steps of the "
                    f"same request (here {earlier_steps}), so that a workflow has no cycle"
                    if index
                    else f"step 0 runs after {which}: the first step can only run after stored "
                    f"jobs (after)"
                )
                raise Problem(
                    422,
                    "invalid",
                    detail,
                    errors=[
                        {
                            "loc": f"body.steps.{index}.after_steps",
                            "msg": detail,
                            "type": "forward_reference",
                        }
                    ],
                )
        steps.append(flow.add_spec(_spec(step), after=[steps[i] for i in step.after_steps]))
    return flow


def _check_text_fields(owner: str, fields: dict[str, Any]) -> None:
    # JSON escapes can carry lone surrogates ("\ud800"), which Python accepts but UTF-8, and
    # so SQLite (and a problem's detail), cannot hold: refuse them here, naming where they are.
    for what, value in fields.items():
        try:
            json.dumps(value, ensure_ascii=False).encode()
        except UnicodeEncodeError:
            raise Problem(
                422,
                "not-json",
                f"the {owner}'s {what} contains a lone UTF-16 surrogate, which cannot be stored "
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
    _add_error_handlers(app, service)

    @app.post(
        "/jobs",
        status_code=201,
        response_model=JobOut,
        responses={
            **_ERRORS,
            **_BODY,
            **_WRITE,
            200: {
                "model": JobOut,
                "description": "A replay: the `Idempotency-Key` is held by a job of the same "
                "handler and payload, which is answered; nothing was written.",
                "headers": {
                    REPLAYED_HEADER: {
                        "description": "`true` on a replay.",
                        "schema": {"type": "string", "enum": ["true"]},
                    }
                },
            },
            409: {
                "model": ProblemOut,
                "description": "The idempotency key is held by a job of another handler or "
                "payload (`idempotency-conflict`); nothing was written.",
            },
        },
        summary="Enqueue a job",
    )
    async def enqueue(
        job: JobIn,
        idempotency_key: Annotated[
            str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
        ] = None,
    ) -> Response:
        stored, replayed = await _enqueued(queue._enqueue_or_replay(_spec(job, idempotency_key)))
        if replayed:
            response = _job_response(stored, 200)
            response.headers[REPLAYED_HEADER] = "true"
            return response
        return _job_response(stored, 201)

    @app.post(
        "/jobs/batch",
        status_code=201,
        response_model=Batch,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Enqueue many jobs in one transaction (all or none)",
    )
    async def enqueue_batch(batch: BatchIn) -> Response:
        jobs = await _enqueued(queue.enqueue_many([_spec(job) for job in batch.jobs]))
        return JSONResponse({"jobs": [job_to_dict(job) for job in jobs]}, status_code=201)

    @app.post(
        "/workflows",
        status_code=201,
        response_model=Batch,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Enqueue a workflow: jobs that run after others, in one transaction",
        description="Each step is a job (as `POST /jobs` takes it) with `after_steps`, the "
        "positions of earlier steps it runs after, and `after`, ids of stored jobs it runs "
        "after. A step is `waiting` until all of them completed. Answers the jobs in step "
        "order; all or none are stored.",
    )
    async def enqueue_workflow(body: WorkflowIn) -> Response:
        jobs = await _enqueued(queue.enqueue_workflow(_workflow(body)))
        return JSONResponse({"jobs": [job_to_dict(job) for job in jobs]}, status_code=201)

    @app.post(
        "/jobs/requeue-failed",
        response_model=Requeued,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Requeue every failed job, or those of one handler (attempts reset)",
        description="In one transaction; the jobs their failure cancelled go back to "
        "`waiting`. Answers how many were requeued.",
    )
    async def requeue_failed(
        body: Annotated[HandlerFilterIn | None, Body()] = None,
    ) -> Requeued:
        name = None if body is None else body.name
        return Requeued(requeued=await queue.requeue_failed(name))

    @app.post(
        "/jobs/cancel-pending",
        response_model=Cancelled,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Cancel every pending and waiting job, or those of one handler",
        description="In one transaction; the jobs that run after them are cancelled too, and "
        "counted only if they match. Answers how many were cancelled.",
    )
    async def cancel_pending(
        body: Annotated[HandlerFilterIn | None, Body()] = None,
    ) -> Cancelled:
        name = None if body is None else body.name
        return Cancelled(cancelled=await queue.cancel_pending(name))

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
        "/jobs/progress",
        response_model=ProgressOut,
        responses={
            **_ERRORS,
            **_UNKNOWN_JOBS,
            431: {
                "description": "The URL (its ids) exceeds the 16 KiB of request head "
                "hypercorn reads (`--engine trio`); answered by the server, with no body."
            },
            400: {
                "description": "The URL exceeds the request head uvicorn reads (`--engine "
                "asyncio`); answered by the server, with a line of text."
            },
        },
        summary="Where a batch of jobs stands (long poll for a change)",
        description="Counts the jobs of `ids` by status. Without `since`, answers at once; "
        "with `since` (the `state` of an earlier answer), answers once the counts differ "
        "from it, all jobs are finished, or `timeout` seconds (at most 60) have passed. Ask "
        "again with the new `state` until `finished` equals `total`.",
    )
    async def batch_progress(
        request: Request,
        ids: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_PROGRESS_IDS_CHARS,
                pattern=r"^[0-9]+(,[0-9]+)*$",
                description=f"Job ids, comma-separated (at most {MAX_PROGRESS_IDS}, and "
                f"{MAX_PROGRESS_IDS_CHARS} characters).",
            ),
        ],
        since: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False)] = 30.0,
    ) -> Response:
        job_ids = _progress_ids(ids)
        async with _ending_on_disconnect(request):
            progress = await service.progress(job_ids, since, timeout)
            return JSONResponse(progress_to_dict(progress))
        return Response(status_code=CLIENT_GONE)

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
        request: Request,
        job_id: JobId,
        timeout: Annotated[float, Query(ge=0, le=MAX_WAIT, allow_inf_nan=False)] = 30.0,
    ) -> Response:
        async with _ending_on_disconnect(request):
            return _job_response(await service.wait(job_id, timeout))
        return Response(status_code=CLIENT_GONE)

    @app.get(
        "/jobs/{job_id:int}/workflow",
        response_model=WorkflowOut,
        responses={**_ERRORS, **_NOT_FOUND},
        summary="The job's workflow: the jobs connected to it through after, both ways",
        description="The jobs it runs after and those that run after it, transitively, at "
        f"most `limit` (up to {MAX_WORKFLOW}), found breadth first from it and listed by id. "
        "Items are those of `GET /jobs`; each one's `after` gives the edges.",
    )
    async def get_workflow(
        job_id: JobId,
        limit: Annotated[int, Query(ge=1, le=MAX_WORKFLOW)] = MAX_WORKFLOW,
    ) -> Response:
        graph = await queue.workflow(job_id, limit=limit)
        return JSONResponse(
            {
                "job_id": job_id,
                "jobs": [job_summary_dict(job) for job in graph.jobs],
                "truncated": graph.truncated,
            }
        )

    @app.post(
        "/jobs/{job_id:int}/cancel",
        response_model=JobOut,
        responses={
            **_ERRORS,
            **_NOT_FOUND,
            **_CONFLICT,
            **_WRITE,
            202: {
                "model": CancelInProgress,
                "description": f"A running job whose handler had not stopped within "
                f"{CANCEL_WAIT:g} s: it is still `running`, and becomes `cancelled` once its "
                f"handler stops (`GET /jobs/{{job_id}}/wait` follows it).",
            },
        },
        summary="Cancel a pending or running job",
        description=f"Answers with the job once `cancelled`: a running job's handler is "
        f"cancelled, and waited for up to {CANCEL_WAIT:g} s (then 202).",
    )
    async def cancel_job(job_id: JobId) -> Response:
        changed = await queue.cancel(job_id)
        if not changed:
            return await _job_after(queue, changed, job_id, "cancelled", "pending or running")
        job = await service.wait(job_id, CANCEL_WAIT)
        if job.status is JobStatus.RUNNING:
            note = (
                f"cancellation is in progress: the handler of job {job_id} has not stopped "
                f"within {CANCEL_WAIT:g} s; GET /jobs/{job_id}/wait follows it"
            )
            return JSONResponse({**job_to_dict(job), "note": note}, status_code=202)
        return _job_response(job)

    @app.post(
        "/jobs/{job_id:int}/requeue",
        response_model=JobOut,
        responses={**_ERRORS, **_NOT_FOUND, **_CONFLICT, **_WRITE},
        summary="Requeue a failed or cancelled job (attempts reset)",
    )
    async def requeue_job(job_id: JobId) -> Response:
        changed = await queue.requeue(job_id)
        return await _job_after(queue, changed, job_id, "requeued", "failed or cancelled")

    @app.post(
        "/schedules",
        response_model=ScheduleOut,
        responses={**_ERRORS, **_BODY, **_WRITE},
        summary="Create or replace the schedule stored under a key",
        description="Each tick enqueues one job of handler `name`, exactly once across "
        "crashes and restarts; the job's `schedule_key` names the schedule. Replacing a "
        "schedule computes its next tick anew. Answers the schedule as stored.",
    )
    async def set_schedule(body: ScheduleIn) -> Response:
        _check_text_fields(
            "schedule",
            {
                "key": body.key,
                "name": body.name,
                "payload": body.payload,
                "cron": body.cron,
                "timezone": body.timezone,
            },
        )
        schedule = await queue.schedule(
            body.key,
            body.name,
            body.payload,
            every=body.every,
            cron=body.cron,
            timezone=body.timezone,
            catch_up=body.catch_up,
            priority=body.priority,
            max_attempts=body.max_attempts,
            timeout=body.timeout,
        )
        # A replaced schedule keeps its last tick and job.
        last = None if schedule.last_job_id is None else await queue.get(schedule.last_job_id)
        return JSONResponse(schedule_to_dict(schedule, last))

    @app.get(
        "/schedules",
        response_model=ScheduleList,
        responses=_ERRORS,
        summary="List schedules, by key",
        description="Each with its next tick, its last tick and the status of the last job "
        "it enqueued.",
    )
    async def list_schedules() -> Response:
        schedules = await queue.schedules()
        last = await queue.get_many(s.last_job_id for s in schedules if s.last_job_id is not None)
        return JSONResponse(
            {
                "schedules": [
                    schedule_to_dict(s, None if s.last_job_id is None else last.get(s.last_job_id))
                    for s in schedules
                ]
            }
        )

    @app.delete(
        "/schedules/{key:path}",
        status_code=204,
        response_class=Response,
        responses={**_ERRORS, **_NO_SCHEDULE, **_WRITE},
        summary="Delete a schedule (the jobs it enqueued stay)",
    )
    async def delete_schedule(key: ScheduleKey) -> Response:
        if not await queue.unschedule(key):
            raise Problem(404, "schedule-not-found", f"no schedule has key {key!r}")
        return Response(status_code=204)

    @app.get(
        "/handlers",
        response_model=HandlerList,
        responses=_ERRORS,
        summary="List handlers, by name",
        description="Each handler the server runs, with its options and limits, whether it "
        "is paused, and its jobs by status; and any other handler the file holds jobs or a "
        "pause of (`registered` false, `options` null).",
    )
    async def list_handlers() -> Response:
        stats = await queue.stats()
        paused = await queue.paused()
        registry = service.registry
        names = set(stats.by_name) | paused | set(registry or ())
        handlers = [
            handler_to_dict(
                name,
                registry[name] if registry is not None and name in registry else None,
                name in paused,
                stats.by_name.get(name, {}),
            )
            for name in sorted(names)
        ]
        return JSONResponse({"handlers": handlers})

    async def _set_paused(name: str, pause: bool) -> Response:
        registry = service.registry
        if registry is not None and name not in registry and name not in await queue.paused():
            known = ", ".join(sorted(registry)) or "none"
            raise Problem(
                404,
                "handler-not-found",
                f"no handler named {name!r} is registered or paused (registered: {known})",
            )
        changed = await (queue.pause(name) if pause else queue.resume(name))
        return JSONResponse({"name": name, "paused": pause, "changed": changed})

    @app.post(
        "/handlers/{name:path}/pause",
        response_model=Paused,
        responses={**_ERRORS, **_NO_HANDLER, **_WRITE},
        summary="Pause a handler: its pending jobs are not started until it is resumed",
        description="Running jobs finish. Stored, so the pause holds across restarts; no job "
        "of the handler starts once this answered. `changed` is false if it was paused "
        "already. Percent-encode a `/` in the name.",
    )
    async def pause_handler(name: HandlerName) -> Response:
        return await _set_paused(name, True)

    @app.post(
        "/handlers/{name:path}/resume",
        response_model=Paused,
        responses={**_ERRORS, **_NO_HANDLER, **_WRITE},
        summary="Resume a paused handler: its pending jobs start again",
        description="`changed` is false if it was not paused.",
    )
    async def resume_handler(name: HandlerName) -> Response:
        return await _set_paused(name, False)

    @app.post(
        "/session",
        response_model=SessionOut,
        responses={
            **_ERRORS,
            **_WRITE,
            409: {"model": ProblemOut, "description": "This server has no token."},
        },
        summary="Trade the token for a dashboard session",
        description="Authenticated by the token itself (`Authorization: Bearer <token>`), "
        "not by a session. The session value is derived from the token (it never reveals it) "
        "and lasts 24 hours; send it as `Authorization: Bearer <session>`. The dashboard keeps "
        "it in its tab's sessionStorage, never in a cookie.",
    )
    async def new_session(request: Request) -> Response:
        sessions = service.sessions
        if sessions is None:
            raise Problem(409, "no-token", "this server has no token: its API needs no login")
        if request.scope.get(AUTH_SCOPE_KEY) != "token":
            raise Problem(
                401,
                "unauthorized",
                "a session is made from the token itself: send 'Authorization: Bearer <token>'",
            )
        value, expires = sessions.new()
        return JSONResponse(
            {"session": value, "expires_at": expires}, headers={"cache-control": "no-store"}
        )

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
        page = HTMLResponse(index)
        # Cookies of earlier versions reach every port of this host: drop them.
        for name in OLD_COOKIES:
            page.delete_cookie(name, path="/")
        return page

    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _name_operations(app)
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
                tags=[{"name": tag, "description": text} for tag, text in TAGS.items()],
            )
            app.openapi_schema = _with_bearer_auth(_problems_as_problem_json(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _progress_ids(text: str) -> list[int]:
    """The job ids of ``GET /jobs/progress``; a 422 naming what is wrong with them."""
    parts = text.split(",")
    # A 20-digit part already exceeds the largest id (and int() refuses thousands of digits).
    ids = [int(part) if len(part) < 20 else MAX_ID + 1 for part in parts]
    detail = None
    if len(ids) > MAX_PROGRESS_IDS:
        detail = f"at most {MAX_PROGRESS_IDS} ids, not {len(ids)}"
    elif not all(1 <= job_id <= MAX_ID for job_id in ids):
        detail = f"a job id is within 1..{MAX_ID}"
    if detail is not None:
        raise Problem(
            422,
            "invalid",
            f"query.ids: {detail}",
            errors=[{"loc": "query.ids", "msg": detail, "type": "value_error"}],
        )
    return ids


def _enqueue_spec(scope: Scope, message: Message) -> JobSpec | None:
    """The job that a ``POST /jobs`` request (its scope and body ``message``) enqueues, or
    ``None`` if the body is not a valid job (the FastAPI route then says why)."""
    key: str | None = None
    json_body = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json_body = value.split(b";", 1)[0].strip().lower() == b"application/json"
        elif name == b"idempotency-key":
            key = value.decode("latin-1")
    if not json_body or message.get("more_body") or (key is not None and not 0 < len(key) <= 255):
        return None
    try:
        return _spec(JobIn.model_validate(json.loads(message.get("body", b""))), key)
    except (ValueError, ConveyorError, Problem):
        return None


CANCEL_WAIT: Final = 5.0
"""Seconds a cancel waits for a running job's handler to stop before answering 202."""
REPLAYED_HEADER: Final = "Idempotent-Replayed"
"""Set to ``true`` on the answer to an enqueue whose idempotency key found its job stored."""
CLIENT_GONE: Final = 499
"""The status logged for a long poll whose client disconnected (nginx's "client closed")."""


@contextlib.asynccontextmanager
async def _ending_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Cancel the block when the client disconnects: a long poll then ends at once instead of
    holding its task until its timeout. Both uvicorn and hypercorn report a disconnect to the
    app; the block runs to its end where a server does not."""
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(_cancel_on_disconnect, request.receive, tasks.cancel_scope)
        try:
            yield
        except Exception as exc:
            # Raised past the task group, it would reach the error handlers inside a group.
            failure = exc
        finally:
            tasks.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


TAGS: Final = {
    "jobs": "Enqueue, read, wait for, cancel and requeue jobs.",
    "workflows": "Jobs that run after others, stored together.",
    "schedules": "Recurring jobs.",
    "handlers": "The handlers the queue runs, their limits and pauses.",
    "stats": "Counts, throughput and metrics.",
    "service": "Health, the dashboard and its session.",
}

OPERATIONS: Final = {
    "enqueue": ("enqueueJob", "jobs"),
    "enqueue_batch": ("enqueueJobs", "jobs"),
    "requeue_failed": ("requeueFailedJobs", "jobs"),
    "cancel_pending": ("cancelPendingJobs", "jobs"),
    "purge": ("purgeJobs", "jobs"),
    "list_jobs": ("listJobs", "jobs"),
    "batch_progress": ("getJobsProgress", "jobs"),
    "get_job": ("getJob", "jobs"),
    "wait_job": ("waitJob", "jobs"),
    "cancel_job": ("cancelJob", "jobs"),
    "requeue_job": ("requeueJob", "jobs"),
    "enqueue_workflow": ("enqueueWorkflow", "workflows"),
    "get_workflow": ("getWorkflow", "workflows"),
    "set_schedule": ("setSchedule", "schedules"),
    "list_schedules": ("listSchedules", "schedules"),
    "delete_schedule": ("deleteSchedule", "schedules"),
    "list_handlers": ("listHandlers", "handlers"),
    "pause_handler": ("pauseHandler", "handlers"),
    "resume_handler": ("resumeHandler", "handlers"),
    "stats": ("getStats", "stats"),
    "throughput": ("getThroughput", "stats"),
    "metrics": ("getMetrics", "stats"),
    "new_session": ("newSession", "service"),
    "healthz": ("getHealth", "service"),
    "readyz": ("getReadiness", "service"),
    "dashboard": ("getDashboard", "service"),
}
"""Each route's operation id (what generated clients name their methods) and tag, by the name
of its function."""


def _name_operations(app: FastAPI) -> None:
    for route in app.routes:
        if isinstance(route, APIRoute):
            route.operation_id, tag = OPERATIONS[route.name]
            route.tags = [tag]


def _with_bearer_auth(schema: dict[str, Any]) -> dict[str, Any]:
    """Document the bearer token every route but ``/healthz`` takes (when the server has one)."""
    schema.setdefault("components", {})["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "The server's token (`conveyor serve --token`), or a dashboard "
            "session from `POST /session`. Needed only when the server has a token.",
        }
    }
    schema["security"] = [{"bearerAuth": []}, {}]
    for path in (*OPEN_PATHS, "/"):  # the dashboard's page holds no data
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation["security"] = [{}]
    return schema


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


def _add_error_handlers(app: FastAPI, service: Service) -> None:
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
        if service.stopped is not None:
            return _problem_response(_stopped_problem(service.stopped))
        return _problem_response(
            Problem(500, "internal", f"{type(exc).__name__} while serving {request.url.path}")
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ConveyorError, on_conveyor_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
