"""RFC 9457 problem details: every error the HTTP API answers with, and how core errors map.

Pure: no I/O. :func:`problem_for` turns a :class:`conveyor.ConveyorError` into the status and
problem a client sees, so that a refusal by the queue is always a 4xx (or 503 while the queue
or its database cannot take work), never a 500.
"""

from __future__ import annotations

import json
from typing import Final

from .._errors import (
    ConveyorError,
    DatabaseError,
    IdempotencyConflict,
    InvalidArgument,
    JobNotFound,
    NotJSONSerializable,
    QueueClosed,
    QueueFull,
    UnknownHandler,
)

PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
RETRY_AFTER: Final = 5
"""Seconds a client is told to wait (``Retry-After``) before it retries after a 503."""

_TITLES: Final[dict[str, str]] = {
    "bad-request": "The request is malformed",
    "unauthorized": "Missing or wrong bearer token",
    "cross-origin": "A state-changing request must come from the service's own pages",
    "unsupported-media-type": "The body must be JSON",
    "wrong-host": "The Host header names a host this server does not serve",
    "body-timeout": "The request body did not arrive in time",
    "not-found": "No such job",
    "schedule-not-found": "No schedule has that key",
    "handler-not-found": "No handler of that name is registered or paused",
    "no-token": "This server takes no token: its API needs no login",
    "unknown-job": "A job the request runs after does not exist",
    "no-route": "No such route",
    "method-not-allowed": "Method not allowed on this route",
    "conflict": "The job is not in a state that allows this",
    "idempotency-conflict": "The idempotency key is held by a job of other work",
    "too-large": "The request body is too large",
    "invalid": "The request is well-formed but invalid",
    "unknown-handler": "No handler of that name is registered",
    "not-json": "A value cannot be stored as JSON",
    "queue-full": "The queue is full",
    "unavailable": "The queue is not taking work",
    "database-unavailable": "The queue's database cannot serve this request now; retry later",
    "internal": "Internal error",
}


class Problem(Exception):
    """An error answer: HTTP ``status``, a ``slug`` naming its type, and the precise ``detail``.

    Raise it from a route to answer with it; the app renders it as ``application/problem+json``.
    ``errors`` lists field-level reasons (where in the request, and what is wrong there).
    """

    def __init__(
        self, status: int, slug: str, detail: str, *, errors: list[dict[str, object]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.errors = errors

    def body(self) -> dict[str, object]:
        """The problem-details JSON object."""
        body: dict[str, object] = {
            "type": f"urn:conveyor:problem:{self.slug}",
            "title": _TITLES[self.slug],
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return body

    def encode(self) -> bytes:
        return json.dumps(self.body(), ensure_ascii=False, default=str).encode()

    def headers(self) -> dict[str, str]:
        """Headers the answer carries besides its content type: a 503 says when to retry."""
        return {"retry-after": str(RETRY_AFTER)} if self.status == 503 else {}


def problem_for(error: ConveyorError) -> Problem:
    """The problem a client sees for an error the queue raised."""
    if isinstance(error, IdempotencyConflict):
        return Problem(409, "idempotency-conflict", str(error))
    if isinstance(error, UnknownHandler):
        return Problem(422, "unknown-handler", str(error))
    if isinstance(error, NotJSONSerializable):
        return Problem(422, "not-json", str(error))
    if isinstance(error, InvalidArgument):
        return Problem(422, "invalid", str(error))
    if isinstance(error, JobNotFound):
        return Problem(404, "not-found", str(error))
    if isinstance(error, QueueFull):
        return Problem(503, "queue-full", str(error))
    if isinstance(error, QueueClosed):
        return Problem(503, "unavailable", str(error))
    if isinstance(error, DatabaseError):
        # Full, locked or failing: the store keeps running and the request may succeed later.
        return Problem(503, "database-unavailable", str(error))
    return Problem(500, "internal", f"{type(error).__name__}: {error}")
