"""The ASGI layer in front of the app: Host check, auth, CSRF defence, body limits, headers.

Pure ASGI (no per-request objects beyond what is needed) because every request passes here.
What it enforces, in order, and why:

1. **Host.** A request whose ``Host`` header names neither the address the server listens on nor
   an allowed name is refused (421): a page on ``attacker.example``, a name the attacker later
   points at 127.0.0.1 (DNS rebinding), would otherwise read and change jobs as same-origin.
2. **Auth.** With a token, every route but ``/healthz`` and the dashboard's own files (``/``,
   ``/static/...``: the same for everyone, they hold no data) needs ``Authorization: Bearer``
   with the token (compared in constant time) or a dashboard session. No cookie is set or read:
   cookies ignore ports, so a server on another port of the same host would receive one. The
   dashboard trades the token for a session value (``POST /session``: an HMAC of an expiry
   keyed by the token, never the token), keeps it in ``sessionStorage``, which is per origin
   and so per port, and sends it as the bearer value.
3. **CSRF.** A state-changing request not authenticated by the token itself (so by a session,
   or on a server without a token) is refused (403) if its ``Origin`` is not this server's; with
   a session and no ``Origin`` it must carry :data:`CSRF_HEADER`, which the dashboard sends and
   which a foreign page cannot add without a CORS preflight this server never grants. Bodies of
   the types an HTML form or a no-CORS ``fetch`` can send are refused (415): the API takes JSON.
4. **Body.** A body must fit in ``max_body`` bytes (413) and arrive within ``body_timeout``
   seconds (408), so a client trickling bytes cannot hold a request open.
5. **Headers.** Every answer carries a Content-Security-Policy that allows only this server's own
   scripts, styles and requests and no framing, ``X-Frame-Options: DENY``,
   ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, TypeVar

import anyio
import attrs
import sniffio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._problems import PROBLEM_MEDIA_TYPE, Problem

T = TypeVar("T")

OPEN_PATHS: Final = frozenset({"/healthz"})
"""Answered to anyone, whatever the ``Host``: they reveal nothing (health checkers)."""
PAGE_PATHS: Final = frozenset({"/"})
PAGE_PREFIX: Final = "/static/"
"""The dashboard's page and files: answered without auth (a browser cannot send a header when
it loads a page, and they hold no data), but only for this server's hosts."""
OLD_COOKIES: Final = ("conveyor_session", "conveyor_token")
"""Cookies earlier versions set (the session value; before it, the raw token): the dashboard's
page clears them, since a browser sends a host's cookies to every port of it."""
SESSION_SECONDS: Final = 24 * 3600
"""How long a dashboard login lasts."""
AUTH_SCOPE_KEY: Final = "conveyor.auth"
"""Where the guard tells the app how a request was authenticated: ``"token"``, ``"session"``,
or ``None`` (the server has no token)."""
CSRF_HEADER: Final = "X-Conveyor-Request"
"""Sent by the dashboard with every request; a foreign page cannot add it."""
DEFAULT_BODY_TIMEOUT: Final = 30.0

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_TYPES: Final = frozenset(
    {b"application/x-www-form-urlencoded", b"multipart/form-data", b"text/plain"}
)
"""The body types a cross-site form or no-CORS fetch can send without a preflight."""
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_DEFAULT_PORTS: Final = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
_HOST_NAME: Final = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")


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


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _normal_name(name: str) -> str:
    return name.strip().strip("[]").rstrip(".").lower()


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header value (port and IPv6 brackets dropped, lower case).

    ``None`` when it is not of the form ``name``, ``name:port``, ``[v6]`` or ``[v6]:port``.
    """
    if header.startswith("["):
        address, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return address.lower() if isinstance(_ip(address), ipaddress.IPv6Address) else None
    name, colon, port = header.partition(":")
    if colon and not port.isdigit():
        return None
    name = name.rstrip(".").lower()
    return name if _HOST_NAME.fullmatch(name) else None


@attrs.frozen
class Hosts:
    """Which ``Host`` header values this server answers.

    The address it listens on; on a loopback address also ``localhost`` and every loopback
    address; on a wildcard address (``0.0.0.0``, ``::``) every IP address, since a browser that
    addressed the server by IP is on the server's own origin (only a name can be rebound); and
    the ``allowed`` names, where ``*.example.com`` allows every subdomain and ``*`` any host
    (which turns the check off).
    """

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    any_host: bool = False
    any_address: bool = False
    loopback: bool = False

    @classmethod
    def of(cls, bound: str, allowed: Iterable[str] = ()) -> Hosts:
        """The hosts of a server listening on ``bound`` with these ``allowed`` names.

        Raises ``ValueError`` naming an allowed name that is not a bare host name or address.
        """
        names = set()
        suffixes = []
        any_host = False
        for given in allowed:
            name = _normal_name(given)
            if name == "*":
                any_host = True
            elif name.startswith("*.") and _plain(name[2:]):
                suffixes.append(name[1:])
            elif _plain(name):
                names.add(name)
            else:
                raise ValueError(
                    f"an allowed host is a host name or address without scheme, port or path "
                    f"(queue.internal, *.example.com, or * for any), not {given!r}"
                )
        bound_name = _normal_name(bound)
        address = _ip(bound_name)
        any_address = bound_name == "" or (address is not None and address.is_unspecified)
        if not any_address:
            names.add(bound_name)
        return cls(
            frozenset(names),
            tuple(suffixes),
            any_host,
            any_address,
            is_loopback(bound_name),
        )

    def allows(self, header: str) -> bool:
        """Whether a request with this ``Host`` header value is for this server."""
        name = host_name(header)
        if name is None:
            return False
        if self.any_host or name in self.names or name.endswith(self.suffixes):
            return True
        address = _ip(name)
        if address is None:
            return self.loopback and name == "localhost"
        return self.any_address or (self.loopback and address.is_loopback)


def _plain(name: str) -> bool:
    """Whether ``name`` is a bare host name or IP address (no scheme, port, path or wildcard)."""
    if _ip(name) is not None:
        return True
    return bool(name) and not any(c in name for c in "/:@?#* ")


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers, first value of each."""
    found: dict[bytes, bytes] = {}
    for key, value in scope["headers"]:
        found.setdefault(key, value)
    return found


def _authority(netloc: str, scheme: str) -> str:
    """``host[:port]`` in lower case, the scheme's default port dropped."""
    netloc = netloc.lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None and netloc.endswith(":" + default):
        return netloc[: -len(default) - 1]
    return netloc


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether an ``Origin`` header names the server that the ``Host`` header addresses.

    Compares host and port (a proxy in front may terminate TLS, so the schemes may differ);
    ``null`` and anything that is not an http(s) origin is foreign.
    """
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    return _authority(parts.netloc, parts.scheme) == _authority(host, scheme)


def session_value(token: bytes, expires: int) -> str:
    """The dashboard's session value for a login that lasts until ``expires`` (epoch s).

    An HMAC of the expiry keyed by the token: it proves a login without revealing the token,
    and a new token ends every session.
    """
    mac = hmac.new(token, b"conveyor dashboard session %d" % expires, hashlib.sha256)
    return f"{expires}.{mac.hexdigest()}"


def session_valid(token: bytes, value: bytes, now: float) -> bool:
    """Whether ``value`` is a session of ``token`` that has not expired at ``now``."""
    expires_text, _, _ = value.partition(b".")
    if not (0 < len(expires_text) <= 12 and expires_text.isdigit()):
        return False
    expires = int(expires_text)
    if not now < expires <= now + SESSION_SECONDS:
        return False
    return hmac.compare_digest(session_value(token, expires).encode(), value)


@attrs.frozen
class Sessions:
    """Dashboard sessions of ``token``: made by ``POST /session``, checked by the guard;
    ``clock`` gives wall-clock seconds."""

    token: bytes
    clock: Callable[[], float] = time.time

    def new(self) -> tuple[str, int]:
        """A new session value and when it expires (epoch s)."""
        expires = int(self.clock()) + SESSION_SECONDS
        return session_value(self.token, expires), expires

    def valid(self, value: bytes) -> bool:
        return session_valid(self.token, value, self.clock())


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Wraps ``app``: checks the Host, requires the ``token`` (when one is set), refuses
    cross-site writes, bounds request bodies in size and time, and adds security headers.

    ``hosts`` says which ``Host`` values are answered; ``clock`` (wall-clock seconds) dates
    dashboard sessions (:attr:`sessions`, ``None`` without a token).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body: int,
        hosts: Hosts,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_token(token)
        if not body_timeout > 0:
            raise ValueError(f"the body timeout must be > 0 seconds, not {body_timeout!r}")
        self._app = app
        self._token = None if token is None else token.encode()
        self.sessions = None if self._token is None else Sessions(self._token, clock)
        self._max_body = max_body
        self._hosts = hosts
        self._body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        send = _with_security_headers(send)
        problem, extra, auth = self._refusal(scope)
        if problem is not None:
            await _answer(send, problem, extra)
            return
        scope = {**scope, AUTH_SCOPE_KEY: auth}
        if scope["method"] not in SAFE_METHODS:
            read = await self._read_body(scope, receive)
            if isinstance(read, Problem):
                await _answer(send, read, [(b"connection", b"close")])
                return
            receive = replay_body(read, receive)
        await self._app(scope, receive, send)

    def _authenticate(self, headers: dict[bytes, bytes]) -> str | None:
        """``"token"`` or ``"session"``: what the bearer value of the request is, if either."""
        assert self._token is not None
        assert self.sessions is not None
        authorization = headers.get(b"authorization")
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None
        given = authorization[7:].strip()
        if hmac.compare_digest(given, self._token):
            return "token"
        return "session" if self.sessions.valid(given) else None

    def _refusal(
        self, scope: Scope
    ) -> tuple[Problem | None, list[tuple[bytes, bytes]], str | None]:
        """Why the request is refused before it reaches the app (and the answer's headers), and
        how it was authenticated."""
        path = route_path(scope)
        if path in OPEN_PATHS:
            return None, [], None
        headers = _headers(scope)
        host = headers.get(b"host", b"").decode("latin-1")
        if not self._hosts.allows(host):
            return (
                Problem(
                    421,
                    "wrong-host",
                    f"this server does not answer for host {host!r}: give the address it "
                    f"listens on, or start it with --allowed-host NAME for each name clients use",
                ),
                [],
                None,
            )
        auth = None
        if self._token is not None:
            auth = self._authenticate(headers)
            is_page = path in PAGE_PATHS or path.startswith(PAGE_PREFIX)
            if auth is None and not (is_page and scope["method"] in SAFE_METHODS):
                return (
                    Problem(
                        401,
                        "unauthorized",
                        "this server requires 'Authorization: Bearer <token>' (the token given "
                        "to conveyor serve with --token or CONVEYOR_TOKEN); in a browser, open "
                        "the dashboard and give it the token",
                    ),
                    [(b"www-authenticate", b'Bearer realm="conveyor"')],
                    None,
                )
        if scope["method"] in SAFE_METHODS:
            return None, [], auth
        if auth != "token":
            origin = headers.get(b"origin")
            if origin is not None:
                origin_text = origin.decode("latin-1")
                if not same_origin(origin_text, host, scope["scheme"]):
                    return (
                        Problem(
                            403,
                            "cross-origin",
                            f"a {scope['method']} from a page of {origin_text!r} is refused: "
                            f"only this server's own pages may change jobs (API clients send no "
                            f"Origin, or authenticate with 'Authorization: Bearer <token>')",
                        ),
                        [],
                        auth,
                    )
            elif auth == "session" and CSRF_HEADER.lower().encode() not in headers:
                return (
                    Problem(
                        403,
                        "cross-origin",
                        f"a {scope['method']} authenticated by a dashboard session needs a "
                        f"same-origin Origin header or the {CSRF_HEADER} header",
                    ),
                    [],
                    auth,
                )
        content_type = headers.get(b"content-type", b"")
        media_type = content_type.partition(b";")[0].strip().lower()
        if media_type in FORM_TYPES:
            return (
                Problem(
                    415,
                    "unsupported-media-type",
                    f"the body must be application/json, not {media_type.decode('latin-1')}",
                ),
                [],
                auth,
            )
        return None, [], auth

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | Problem:
        too_large = Problem(
            413,
            "too-large",
            f"the request body exceeds {self._max_body} bytes (the server's --max-body limit)",
        )
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self._max_body:
                return too_large
        try:
            body = await _within(self._body_timeout, self._receive_body(receive))
        except _BodyTooLarge:
            return too_large
        if body is not None:
            return body
        return Problem(
            408,
            "body-timeout",
            f"the request body did not arrive within {self._body_timeout:g} s",
        )

    async def _receive_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _within(seconds: float, awaitable: Awaitable[T]) -> T | None:
    """What ``awaitable`` returns, or ``None`` if it takes longer than ``seconds``.

    On asyncio, asyncio's own timeout: anyio's cancel scope there costs about 5 % of a small
    request's time (it looks up the task and keeps a weak map of scopes). Unlike anyio's, it
    does not wait for a shielded scope inside ``awaitable`` to end; the servers' ``receive``
    holds none.
    """
    if sniffio.current_async_library() == "asyncio":
        try:
            async with asyncio.timeout(seconds) as timeout:
                return await awaitable
        except TimeoutError:
            if timeout.expired():
                return None
            raise
    with anyio.move_on_after(seconds):
        return await awaitable
    return None


def route_path(scope: Scope) -> str:
    """The request's path below where the app is mounted (``/queue/jobs`` → ``/jobs`` under a
    mount at ``/queue``): servers give the whole path, with the mount in ``root_path``."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _with_security_headers(send: Send) -> Send:
    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *SECURITY_HEADERS]}
        await send(message)

    return sender


def replay_body(body: bytes, receive: Receive) -> Receive:
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
                *((k.encode(), v.encode()) for k, v in problem.headers().items()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
