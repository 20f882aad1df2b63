"""Handlers in worker processes (``process=True``): the pool of processes, and both sides of
the protocol the queue speaks with them.

A worker process is ``python -c`` running :func:`serve` with the queue's ``sys.path``; it
runs one job at a time, each handler imported by its module and qualified name, and lives
on for the jobs after. The queue talks to it over its standard input and output, one line a
message, and no pickle: job data crosses as JSON text.

- to the worker: a JSON object naming the handler (``module``, ``qualname``) and the job
  (``id``, ``name``, ``attempt``, ``after``: dependency results, ``payload``);
- from the worker: ``P`` + ``[fraction, message]`` for each :meth:`JobContext.set_progress`;
  then one ending: ``R`` + the result's JSON text, or ``E`` + ``{"kind", "error", "delay"}``
  (``kind``: ``fail`` for :class:`Fail`, ``retry`` for :class:`Retry`, ``unserializable``
  for a result that is not JSON, ``error`` for anything else the handler raised).

The user's code in the worker writes to standard error what it prints (its standard output
is redirected there, its standard input is ``/dev/null``), and it ignores SIGINT: Ctrl-C in a
terminal reaches the whole process group, and the queue, not the worker, decides what then
happens to the job. A worker whose queue's process died exits by itself, so a job taken over
by another process never runs twice at once.

Why not :func:`anyio.to_process.run_sync` or trio-parallel: both run a function in a worker
process and kill it on cancellation, but neither tells how a worker died (its exit code or
signal), gives its pid (to watch its memory) or a channel back for progress, and both pickle
the call and re-run the parent's ``__main__`` in every worker. trio-parallel runs on trio
only, and conveyor runs on asyncio too. This module uses the same mechanism as anyio's
(``anyio.open_process`` and pipes) with a JSON protocol; its round trip (≈ 57 µs on trio,
80 µs on asyncio here) matches anyio's (63 / 94 µs) and is half trio-parallel's (141 µs).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, Final, Literal

import anyio
import anyio.abc
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream

from ._context import JobContext, run_with_context
from ._errors import InvalidArgument, NotJSONSerializable
from ._job import JSON, Event, Job, encode_json
from ._retry import Backoff, Fail, Retry
from ._storage.sqlite import Outcome

logger = logging.getLogger("conveyor")

MEMORY_CHECK_INTERVAL: Final = 0.01
"""Seconds between two looks at the memory of a worker running a memory-limited handler."""

MIN_MEMORY_LIMIT: Final = 64 * 2**20
"""The smallest ``memory_limit``: a worker process takes about 30 MB before it runs anything."""

ORPHAN_CHECK_INTERVAL: Final = 0.5
"""Seconds between a worker's looks at whether the queue's process is still its parent."""

CLOSE_PATIENCE: Final = 1.0
"""Seconds an idle worker is given to exit when the pool closes, before it is killed."""

MAX_LINE: Final = 1 << 40
"""The longest message read from a worker: in effect, no limit."""

_UNITS: Final = {
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_SIZE: Final = re.compile(r"([0-9]+) ?([A-Za-z]+)")

_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


# --- registration ---------------------------------------------------------------------------
def parse_memory_limit(value: object) -> int:
    """``value`` (``"512MiB"``, ``"1GiB"``, ``"200MB"``, or an int of bytes) in bytes.

    Strict: a whole number, then (a space and) one unit among B, kB/KB, MB, GB, TB (powers of
    1000) and KiB, MiB, GiB, TiB (powers of 1024), case as written; at least
    :data:`MIN_MEMORY_LIMIT`. :class:`InvalidArgument` naming ``memory_limit`` otherwise.
    """
    units = ", ".join(_UNITS)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(
            f'memory_limit must be a size such as "512MiB" or an int of bytes, not {value!r}'
        )
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is None or match[2] not in _UNITS:
            raise InvalidArgument(
                f"memory_limit must be a whole number and a unit ({units}), such as "
                f'"512MiB" or "200MB", not {value!r}'
            )
        size = int(match[1]) * _UNITS[match[2]]
    else:
        size = value
    if size < MIN_MEMORY_LIMIT:
        raise InvalidArgument(
            f"memory_limit must be at least 64MiB ({MIN_MEMORY_LIMIT} bytes): a worker process "
            f"takes about 30 MB before it runs anything; {value!r} is {format_size(size)}"
            + (" (an int is a number of bytes)" if isinstance(value, int) else "")
        )
    return size


def format_size(size: int) -> str:
    """``size`` bytes in MiB (or GiB from 10 GiB), for messages."""
    if size >= 10 * 2**30:
        return f"{size / 2**30:.1f} GiB"
    return f"{size / 2**20:.1f} MiB"


def reference(function: Callable[..., object]) -> tuple[str, str]:
    """The module and qualified name a worker process imports ``function`` by.

    :class:`InvalidArgument` saying why if it cannot be: an async function, a lambda, a
    function defined inside a function (a closure), an object that is not a function, or a
    function of a script run as ``__main__`` (no other process can import that by name).
    """
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        type(function).__call__
    ):
        raise InvalidArgument(
            f"process=True runs sync handlers in a worker process; {function!r} is async "
            "(an async handler runs in the event loop, where it must not block)"
        )
    if not inspect.isfunction(function):
        raise InvalidArgument(
            f"process=True needs a plain function, defined at the top level of a module, that "
            f"a worker process can import by name; {function!r} is not a function"
        )
    module, qualname = function.__module__, function.__qualname__
    if function.__name__ == "<lambda>":
        raise InvalidArgument(
            f"process=True cannot run the lambda {qualname} of {module}: a worker process "
            "imports its handler by name; define it with def at the top level of a module"
        )
    if "<locals>" in qualname.split("."):
        raise InvalidArgument(
            f"process=True cannot run {qualname} of {module}: it is defined inside a function "
            "(a closure), so a worker process cannot import it by name; define it at the top "
            "level of a module"
        )
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is None or not spec.name or spec.name == "__main__":
            raise InvalidArgument(
                f"process=True cannot run {qualname}: it is defined in the script being run "
                "(__main__), which a worker process cannot import by name; move it into a "
                "module and import it, or run the script with python -m"
            )
        module = spec.name
    return module, qualname


# --- the queue's side -----------------------------------------------------------------------
@attrs.frozen
class Ended:
    """How a worker ended an attempt: a result (``result_json``), what the handler raised
    (``kind``, ``error``, ``delay``), or the worker's death or memory excess (``kind``
    ``error``, with the cause in ``error``)."""

    kind: Literal["completed", "fail", "retry", "error", "unserializable"]
    result_json: str | None = None
    error: str | None = None
    delay: float | None = None

    def outcome(self, job: Job, backoff: Backoff, duration: float) -> Outcome:
        """The outcome to report, as a thread-run handler's would be."""
        if self.kind == "completed":
            return Outcome(job, Event.COMPLETED, self.result_json, duration=duration)
        if self.kind in ("fail", "unserializable"):
            # Unserializable: not retried, as in a thread: running it again would repeat its
            # side effects only to return the same value.
            return Outcome(job, Event.FAILED, error=self.error, duration=duration)
        delay = self.delay
        if delay is None:
            delay = backoff.delay(job.attempts)
        return Outcome(job, Event.RETRIED, error=self.error, retry_delay=delay, duration=duration)


class _WorkerGone(Exception):
    """The worker's output ended before its reply: it died (or was killed)."""


class Memory:
    """Reads how much resident memory a worker process has taken.

    On Linux, the peak since the last :meth:`reset` (``VmHWM`` of ``/proc/PID/status``,
    reset through ``/proc/PID/clear_refs``): an allocation between two looks, even one freed
    before the next, still shows. Elsewhere, or where the reset is refused, the resident size
    at the time of the look (psutil).
    """

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._peak = sys.platform == "linux"

    def reset(self) -> None:
        if not self._peak:
            return
        try:
            with open(f"/proc/{self._pid}/clear_refs", "w") as file:
                file.write("5")
        except OSError:
            self._peak = False

    def read(self) -> int:
        """Bytes; 0 if the process is gone."""
        if self._peak:
            try:
                with open(f"/proc/{self._pid}/status", "rb") as file:
                    for line in file:
                        if line.startswith(b"VmHWM:"):
                            return int(line.split()[1]) * 1024
            except (OSError, ValueError, IndexError):
                pass
            return 0  # gone, or a zombie (no memory left)
        import psutil  # only where /proc cannot tell

        try:
            return int(psutil.Process(self._pid).memory_info().rss)
        except psutil.Error:
            return 0


class Worker:
    """One worker process and its pipes."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.pid = process.pid
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin = process.stdin
        self._stdout = BufferedByteReceiveStream(process.stdout)
        self.memory = Memory(process.pid)
        self._closed = False
        self._ended = False

    @property
    def alive(self) -> bool:
        """Whether the process can run a job: not killed, and not known to have exited
        (asyncio learns of an exit some time after the process's output ends)."""
        return not self._ended and self.process.returncode is None

    async def send(self, line: bytes) -> None:
        await self._stdin.send(line)

    async def receive(self, context: JobContext) -> Ended:
        """The worker's ending of the job it runs; passes its progress to ``context`` on the
        way. :class:`_WorkerGone` if its output ends first."""
        while True:
            try:
                line = await self._stdout.receive_until(b"\n", MAX_LINE)
            except (
                anyio.IncompleteRead,
                anyio.EndOfStream,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ) as exc:
                self._ended = True
                raise _WorkerGone from exc
            tag, body = line[:1], line[1:]
            if tag == b"P":
                fraction, message = json.loads(body)
                context.set_progress(fraction, message)
            elif tag == b"R":
                return Ended("completed", result_json=body.decode())
            elif tag == b"E":
                ending = json.loads(body)
                return Ended(ending["kind"], error=ending["error"], delay=ending["delay"])
            else:
                self.signal_kill()
                raise _WorkerGone(f"sent an unknown message ({line[:80]!r}) and was killed")

    async def how_it_died(self) -> str:
        """Wait (at most a few seconds) for the process to end; how it ended, in words."""
        with anyio.move_on_after(5):
            await self.process.wait()
        code = self.process.returncode
        if code is None:
            await self.kill()
            return "closed its output and did not exit (killed)"
        return describe_exit(code)

    def signal_kill(self) -> None:
        """Send the process SIGKILL (it ends at once; its output ends with it)."""
        self._ended = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def kill(self) -> None:
        """Kill the process and wait for it to be gone. Shielded from cancellation (it is
        quick), so a cancelled caller still leaves no process behind."""
        if self._closed:
            return
        self._closed = True
        self.signal_kill()
        with anyio.CancelScope(shield=True):
            await self.process.aclose()

    async def close(self) -> None:
        """Ask the idle worker to exit (end of its input); kill it if it does not soon."""
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await self._stdin.aclose()
            with anyio.move_on_after(CLOSE_PATIENCE):
                await self.process.wait()
            await self.kill()


def describe_exit(code: int) -> str:
    """A worker's exit status in words: the signal that killed it, or its exit code."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        number = signal.Signals(-code)
    except ValueError:
        return f"was killed by signal {-code}"
    what = signal.strsignal(number) or number.name
    text = f"was killed by {number.name} ({what})"
    if number is signal.SIGKILL:
        text += "; the kernel's OOM killer sends it when the machine runs out of memory"
    return text


class ProcessPool:
    """The worker processes of one queue: started when a process handler first runs, kept
    idle between jobs, replaced when one dies or is killed, and ended by :meth:`aclose`.

    At most one worker per running attempt exists (the queue's slots bound them).
    """

    def __init__(self) -> None:
        self._idle: list[Worker] = []

    async def run(
        self,
        function: Callable[..., JSON],
        memory_limit: int | None,
        context: JobContext,
    ) -> Ended:
        """Run ``function`` (a process handler) on ``context``'s job in a worker process.

        Returns how the attempt ended; a worker that dies on its own (a signal, an exit, the
        OOM killer) or exceeds ``memory_limit`` is a failed attempt whose error says so.

        Cancellation (a cancel, a timeout, shutdown) kills the worker and waits until it is
        gone before the cancellation propagates: the handler stops at once, unlike one in a
        thread.
        """
        module, qualname = reference(function)
        payload = encode_json(context.payload, "the payload of job {}", context.id)
        after = {str(job_id): result for job_id, result in context.dependency_results.items()}
        header = _ENCODER.encode(
            {
                "module": module,
                "qualname": qualname,
                "id": context.id,
                "name": context.name,
                "attempt": context.attempt,
                "after": after,
            }
        )
        line = f'{header[:-1]},"payload":{payload}}}\n'.encode()
        worker = await self._take(memory_limit)
        done = False
        try:
            if memory_limit is not None:
                worker.memory.reset()
            try:
                await worker.send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                # It died while idle: nothing ran yet, so a new worker takes the job.
                await worker.kill()
                worker = await self._spawn()
                if memory_limit is not None:
                    worker.memory.reset()
                await worker.send(line)
            ended = await self._exchange(worker, context, memory_limit)
            done = True
            return ended
        finally:
            if done and worker.alive:
                self._idle.append(worker)
            else:
                if not done:
                    logger.info(
                        "killing worker process %d: the attempt of job %d (%r) was stopped",
                        worker.pid,
                        context.id,
                        context.name,
                    )
                await worker.kill()

    async def _exchange(
        self, worker: Worker, context: JobContext, memory_limit: int | None
    ) -> Ended:
        """The worker's reply; watches its memory meanwhile if ``memory_limit`` is set."""
        if memory_limit is None:
            try:
                return await worker.receive(context)
            except _WorkerGone as gone:
                return await self._died(worker, context, gone)
        # A look at its memory every MEMORY_CHECK_INTERVAL, and once more after its reply
        # (an allocation since the last look shows in the peak). Waiting for the reply is
        # interrupted for each look: a receive cancelled loses no data.
        ended: Ended | _WorkerGone | None = None
        while True:
            with anyio.move_on_after(MEMORY_CHECK_INTERVAL):
                try:
                    ended = await worker.receive(context)
                except _WorkerGone as gone:
                    ended = gone
            if worker.alive and (size := worker.memory.read()) > memory_limit:
                worker.signal_kill()
                error = (
                    f"the worker process exceeded the handler's memory_limit of "
                    f"{format_size(memory_limit)}: it reached {format_size(size)} (resident) "
                    "and was killed"
                )
                logger.warning(
                    "job %d (%r) attempt %d: %s", context.id, context.name, context.attempt, error
                )
                return Ended("error", error=error)
            if isinstance(ended, _WorkerGone):
                return await self._died(worker, context, ended)
            if ended is not None:
                return ended

    async def _died(self, worker: Worker, context: JobContext, gone: _WorkerGone) -> Ended:
        how = str(gone) if gone.args else await worker.how_it_died()
        error = f"the worker process (pid {worker.pid}) running the handler {how}"
        logger.warning(
            "job %d (%r) attempt %d: %s", context.id, context.name, context.attempt, error
        )
        return Ended("error", error=error)

    async def _take(self, memory_limit: int | None) -> Worker:
        """An idle worker (the most recently used) that lives and has room under
        ``memory_limit``, or a new one."""
        while self._idle:
            worker = self._idle.pop()
            if not worker.alive:
                await worker.kill()
                continue
            if memory_limit is not None:
                worker.memory.reset()
                if worker.memory.read() > memory_limit:
                    await worker.close()
                    continue
            return worker
        return await self._spawn()

    async def _spawn(self) -> Worker:
        bootstrap = (
            "import sys, json; sys.path[:] = json.loads(sys.argv[1]); "
            "from conveyor._process import serve; serve()"
        )
        # Shielded: a process started must reach a Worker, so that it is killed with it.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                [sys.executable, "-c", bootstrap, json.dumps(_child_path())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=None,
            )
        logger.debug("started worker process %d", process.pid)
        return Worker(process)

    async def aclose(self) -> None:
        """End the idle workers (the running ones end with their attempts). Shielded.

        Without idle workers it returns at once, without a checkpoint: a queue that ran no
        process handler is torn down exactly as before they existed.
        """
        if not self._idle:
            return
        idle, self._idle = self._idle, []
        with anyio.CancelScope(shield=True):
            async with anyio.create_task_group() as tasks:
                for worker in idle:
                    tasks.start_soon(worker.close)


def _child_path() -> list[str]:
    """The queue's ``sys.path`` for a worker, with the folder this conveyor was imported from
    first, so the worker runs the same conveyor."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [here, *(path for path in sys.path if path != here)]


# --- the worker's side ----------------------------------------------------------------------
class _Replies:
    """The worker's channel back to the queue: whole lines, one writer at a time (a handler
    may report progress from threads of its own)."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb")
        self._lock = threading.Lock()

    def write(self, line: bytes) -> None:
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def progress(self, fraction: float, message: str | None) -> None:
        self.write(b"P" + _ENCODER.encode([fraction, message]).encode() + b"\n")


def serve() -> None:
    """A worker process's main loop: run jobs as they come on standard input, until it ends.

    Not for users: the queue starts it (see the module's docstring).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests = os.fdopen(os.dup(0), "rb")
    replies = _Replies(os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    parent = os.getppid()
    threading.Thread(
        target=_exit_when_orphaned, args=(parent,), name="conveyor-orphan-watch", daemon=True
    ).start()
    functions: dict[tuple[str, str], Callable[[Any], JSON]] = {}
    for line in requests:
        replies.write(_run(json.loads(line), functions, replies))


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(ORPHAN_CHECK_INTERVAL)
    os._exit(70)


def _run(
    request: dict[str, Any],
    functions: dict[tuple[str, str], Callable[[Any], JSON]],
    replies: _Replies,
) -> bytes:
    """Run one job; the line that ends it."""
    target = (request["module"], request["qualname"])
    try:
        function = functions.get(target) or resolve(*target)
    except Exception as exc:
        return _ending(
            "error",
            f"the worker process cannot import the handler {target[1]} of module "
            f"{target[0]}:\n{_describe(exc)}",
        )
    functions[target] = function
    payload = request["payload"]
    context = JobContext(
        request["id"],
        request["name"],
        request["attempt"],
        payload,
        replies.progress,
        {int(key): value for key, value in request["after"].items()},
    )
    try:
        result = run_with_context(context, lambda: function(payload))
    except Fail as exc:
        return _ending("fail", _describe(exc))
    except Retry as exc:
        return _ending("retry", _describe(exc), exc.delay)
    except BaseException as exc:
        # As in a thread: whatever the handler raises (SystemExit too) fails the attempt.
        return _ending("error", _describe(exc))
    try:
        text = encode_json(result, "the result of job {} ({!r})", context.id, context.name)
    except NotJSONSerializable as exc:
        return _ending("unserializable", str(exc))
    return b"R" + text.encode() + b"\n"


def resolve(module: str, qualname: str) -> Callable[[Any], JSON]:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"{module}.{qualname} is {found!r}, not a function")
    return found  # type: ignore[no-any-return]


def _ending(kind: str, error: str, delay: float | None = None) -> bytes:
    return b"E" + _ENCODER.encode({"kind": kind, "error": error, "delay": delay}).encode() + b"\n"


def _describe(exc: BaseException) -> str:
    """The exception and its traceback as text SQLite can store (lone surrogates escaped)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    return text.encode("utf-8", "backslashreplace").decode()
