"""The ASGI layer in front of the app: bearer-token auth and the request-body size limit.

Pure ASGI (no per-request objects beyond what is needed) because every request passes here.
The token is compared in constant time. Browsers cannot send a bearer header when they load a
page, so ``/?token=...`` with the right token sets an HttpOnly, SameSite=Strict cookie that
authenticates the dashboard's own requests from then on.
"""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import PROBLEM_MEDIA_TYPE, Problem

OPEN_PATHS: Final = frozenset({"/healthz"})
COOKIE: Final = "conveyor_token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str | None) -> None:
    """Refuse (``ValueError`` saying why) a token that is set but blank."""
    if token is not None and not token.strip():
        raise ValueError(
            "the token is empty: a blank token would match requests that carry none. Give a "
            "non-empty --token (or CONVEYOR_TOKEN), or none to serve on a loopback address only"
        )


def check_bind(host: str, token: str | None) -> None:
    """Refuse (``ValueError`` saying why) to serve on a non-loopback address without a token."""
    check_token(token)
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone who can reach that address "
            f"could enqueue, cancel and read jobs. Pass --token (or set CONVEYOR_TOKEN) so that "
            f"every request must carry 'Authorization: Bearer <token>', or listen on 127.0.0.1"
        )


class Guard:
    """Wraps ``app``: requires the ``token`` (when one is set) and bounds request bodies."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int) -> None:
        check_token(token)
        self._app = app
        self._token = None if token is None else token.encode()
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self._token is not None and scope["path"] not in OPEN_PATHS:
            if scope["path"] == "/" and self._login(scope):
                await _redirect_with_cookie(send, self._token)
                return
            if not self._authorized(scope):
                await _answer(
                    send,
                    Problem(
                        401,
                        "unauthorized",
                        "this server requires 'Authorization: Bearer <token>' (the token given "
                        "to conveyor serve with --token or CONVEYOR_TOKEN)",
                    ),
                    [(b"www-authenticate", b'Bearer realm="conveyor"')],
                )
                return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(scope, receive)
            if body is None:
                await _answer(
                    send,
                    Problem(
                        413,
                        "too-large",
                        f"the request body exceeds {self._max_body} bytes (the server's "
                        f"--max-body limit)",
                    ),
                )
                return
            receive = _replay(body, receive)
        await self._app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        assert self._token is not None
        given = b""
        for key, value in scope["headers"]:
            if key == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
                break
            if key == b"cookie":
                given = _cookie(value) or given
        return hmac.compare_digest(given, self._token)

    def _login(self, scope: Scope) -> bool:
        assert self._token is not None
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
        given = query.get("token", [""])[0].encode("latin-1", "replace")
        return bool(given) and hmac.compare_digest(given, self._token)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def _cookie(header: bytes) -> bytes | None:
    for part in header.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE.encode():
            return urllib.parse.unquote_to_bytes(value)
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then defers to the server's."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _answer(
    send: Send, problem: Problem, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = problem.encode()
    await send(
        {
            "type": "http.response.start",
            "status": problem.status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _redirect_with_cookie(send: Send, token: bytes) -> None:
    cookie = f"{COOKIE}={urllib.parse.quote_from_bytes(token)}; Path=/; HttpOnly; SameSite=Strict"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", b"/"),
                (b"set-cookie", cookie.encode()),
                (b"content-length", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})
