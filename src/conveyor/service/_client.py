"""The CLI's client for a running service: one call per command, answers as :class:`Answer`.

Sync httpx: each CLI command is one short-lived process making a few requests.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from typing import Any, Final

import attrs
import httpx

DEFAULT_URL: Final = "http://127.0.0.1:8327"
LONG_POLL: Final = 30.0


class Exit(enum.IntEnum):
    """The CLI's exit codes."""

    OK = 0
    ERROR = 1  # the service could not be reached, or failed (5xx)
    USAGE = 2  # the command line is wrong (click's own code)
    NOT_FOUND = 3  # no such job
    REFUSED = 4  # the service refused: invalid request, wrong state, auth, queue full
    TIMEOUT = 5  # wait gave up before the job finished


@attrs.frozen
class Answer:
    """A response: the exit code it means, its JSON body, and a one-line reason if it failed."""

    exit: Exit
    body: Any
    reason: str = ""


class ServiceError(Exception):
    """The service could not be reached; the message names the URL and the cause."""


class Client:
    """Talks to the service at ``url``, sending ``token`` as a bearer token if given."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._url = url
        self._http = httpx.Client(base_url=url, headers=headers, timeout=LONG_POLL + 10)

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One request; raises :class:`ServiceError` only if no answer came."""
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params={k: v for k, v in (params or {}).items() if v is not None},
                headers=headers,
            )
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the conveyor service at {self._url}: {exc} (is `conveyor serve` "
                f"running there? pass --url otherwise)"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.is_success:
            return Answer(Exit.OK, body)
        reason = body.get("detail", response.text) if isinstance(body, dict) else response.text
        if response.status_code == 404:
            return Answer(Exit.NOT_FOUND, body, reason)
        if 400 <= response.status_code < 500 or response.status_code == 503:
            return Answer(Exit.REFUSED, body, reason)
        return Answer(Exit.ERROR, body, f"HTTP {response.status_code}: {reason}")

    def wait(self, job_id: int, timeout: float | None) -> Answer:
        """Long-poll until the job is finished; :attr:`Exit.TIMEOUT` after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = LONG_POLL if deadline is None else deadline - time.monotonic()
            poll = max(min(LONG_POLL, left), 0.0)
            answer = self.call("GET", f"/jobs/{job_id}/wait", params={"timeout": poll})
            if answer.exit is not Exit.OK or answer.body["status"] in (
                "completed",
                "failed",
                "cancelled",
            ):
                return answer
            if deadline is not None and time.monotonic() >= deadline:
                return Answer(
                    Exit.TIMEOUT,
                    answer.body,
                    f"job {job_id} did not finish within {timeout:g} s",
                )

    def progress(self, job_ids: list[int], timeout: float | None) -> Iterator[Answer]:
        """Follow a batch: each answer of ``GET /jobs/progress`` as its counts change (long
        polls), until every job is finished; the last answer is an error, the finished batch,
        or (after ``timeout`` s) :attr:`Exit.TIMEOUT` with the batch as it is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ids = ",".join(str(job_id) for job_id in job_ids)
        since: str | None = None
        while True:
            left = LONG_POLL if deadline is None else deadline - time.monotonic()
            params = {"ids": ids, "since": since, "timeout": max(min(LONG_POLL, left), 0.0)}
            answer = self.call("GET", "/jobs/progress", params=params)
            body = answer.body
            if answer.exit is not Exit.OK or body["finished"] >= body["total"]:
                yield answer
                return
            if deadline is not None and time.monotonic() >= deadline:
                yield Answer(
                    Exit.TIMEOUT,
                    body,
                    f"{body['total'] - body['finished']} of the {body['total']} jobs did not "
                    f"finish within {timeout:g} s",
                )
                return
            yield answer
            since = body["state"]
