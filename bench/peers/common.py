"""Shared harness for the peer benchmarks (issue #5).

Each ``<system>_peer.py`` defines one ``Peer`` object named ``PEER`` and ends with
``if __name__ == "__main__": common.main(__file__)``.  ``main`` imports the script
again under its module name (so task names never contain ``__main__``), then runs
one measure and prints ONE JSON object on the last stdout line.

Protocol (also what ``conveyor_peer.py`` / ``conveyor_http_peer.py`` must follow):

    python <system>_peer.py --measure {bulk,single,concurrent,drain,latency,crash}
                            --n N [--quick] [--tuned]
    -> last stdout line: {"system": ..., "measure": ..., <figures>} or
                         {"system": ..., "measure": ..., "error": "why"}

``--tuned`` runs the system's second row, ``<system>_tuned``: the best settings its own
documentation gives for this workload (``Peer.tuning`` says what and why), durability
unchanged.  It sets ``$PEERS_TUNED`` before the peer module is imported, so the module,
and every worker process it starts, reads the variant with :func:`tuned`.

Figures by measure: bulk/single/concurrent -> ``jobs_per_s``; drain ->
``jobs_per_s``, ``peak_rss_mb``, ``lost``, ``twice``; latency -> ``p50_ms``,
``p99_ms``, ``offered_per_s``; crash -> ``lost``, ``twice``, ``rerun``, ...

Handlers record what they do by calling :func:`record` (``S`` at start, ``E`` at
end) in a file named by ``$PEERS_RECORD``: one line ``kind id t_enq t pid``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

PEERS_DIR = Path(__file__).resolve().parent
STATE_ROOT = Path(os.environ.get("PEERS_STATE", "/tmp/conveyor-peers"))
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
# dedicated to the bench: FLUSHDB'd before every run; a second run_all at the same time
# takes another database (PEERS_REDIS_DB) so that neither flushes the other's jobs
REDIS_DB = int(os.environ.get("PEERS_REDIS_DB", "15"))
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"

MEASURES = ("bulk", "single", "concurrent", "drain", "latency", "crash")
CONCURRENT_PRODUCERS = 50
LATENCY_RATE = 500  # offered jobs/s
LATENCY_WARMUP = 5  # jobs run before the measured ones (ids above them)
CRASH_JOBS = 5000
CRASH_JOB_S = 0.005
CRASH_KILL_FRACTION = 0.4
BULK_CHUNK = 1000  # jobs per batch-API call
TUNED_ENV = "PEERS_TUNED"
TUNED_SUFFIX = "_tuned"


def tuned() -> bool:
    """Whether this process runs the system's tuned row (``--tuned``)."""
    return os.environ.get(TUNED_ENV) == "1"


# --------------------------------------------------------------------------
# Records written by handlers
# --------------------------------------------------------------------------

_record_fd: int | None = None
_record_lock = threading.Lock()


def _fd() -> int:
    global _record_fd
    if _record_fd is None:
        with _record_lock:
            if _record_fd is None:
                path = os.environ["PEERS_RECORD"]
                _record_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _record_fd


def record(kind: str, job_id: int, t_enq: float) -> None:
    """Append one event line; one write(2) on an O_APPEND fd is atomic here."""
    os.write(_fd(), f"{kind} {job_id} {t_enq!r} {time.time()!r} {os.getpid()}\n".encode())


def run_job_sync(job_id: int, t_enq: float, sleep_s: float) -> None:
    """The benchmark job body for synchronous handlers."""
    record("S", job_id, t_enq)
    if sleep_s:
        time.sleep(sleep_s)
    record("E", job_id, t_enq)


async def run_job_async(
    job_id: int, t_enq: float, sleep_s: float, sleep: Callable[[float], Awaitable[Any]]
) -> None:
    """The benchmark job body for async handlers (``sleep`` of the handler's loop)."""
    record("S", job_id, t_enq)
    if sleep_s:
        await sleep(sleep_s)
    record("E", job_id, t_enq)


@dataclass
class Records:
    starts: dict[int, list[float]] = field(default_factory=dict)
    ends: dict[int, list[float]] = field(default_factory=dict)
    t_enq: dict[int, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> Records:
        rec = cls()
        try:
            data = path.read_text()
        except FileNotFoundError:
            return rec
        for line in data.splitlines():
            parts = line.split()
            if len(parts) != 5:
                continue  # torn last line of a killed writer
            kind, jid, t_enq, t = parts[0], int(parts[1]), float(parts[2]), float(parts[3])
            (rec.starts if kind == "S" else rec.ends).setdefault(jid, []).append(t)
            rec.t_enq[jid] = t_enq
        return rec

    def done(self, ids: range) -> int:
        return sum(1 for i in ids if i in self.ends)


def count_lines(path: Path, kind: bytes = b"E") -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.startswith(kind))
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------------
# Worker subprocesses, RSS
# --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 1000:
        p = todo.pop()
        seen.append(p)
        todo.extend(_children(p))
    return seen


def proc_status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Worker:
    """A worker subprocess in its own session, with an RSS sampler.

    Peak RSS = max over time of the sum of VmRSS over the process tree, or the
    VmHWM of any process in it (the high-water mark the kernel keeps), whichever
    is larger.
    """

    def __init__(
        self,
        argv: Sequence[str],
        state: Path,
        record_path: Path,
        tag: str,
        env: dict[str, str] | None = None,
    ) -> None:
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env["PEERS_RECORD"] = str(record_path)
        full_env["PYTHONPATH"] = os.pathsep.join(
            [str(PEERS_DIR)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
        )
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = state / f"worker-{tag}.log"
        self._log = self.log_path.open("ab")
        self.t_spawn = time.time()
        self.proc = subprocess.Popen(
            list(argv),
            cwd=state,
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.peak_kb = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            tree = process_tree(self.proc.pid)
            total = sum(proc_status_kb(p, "VmRSS") for p in tree)
            hwm = max((proc_status_kb(p, "VmHWM") for p in tree), default=0)
            self.peak_kb = max(self.peak_kb, total, hwm)
            self._stop.wait(0.05)

    @property
    def peak_rss_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 5.0) -> None:
        """Graceful stop (SIGTERM to the group), then SIGKILL; always bounded."""
        if self.alive():
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        self.kill(signal.SIGKILL)  # stragglers in the group too
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._stop.set()
        self._sampler.join(timeout=2)
        self._log.close()

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_until(
    pred: Callable[[], bool], timeout_s: float, worker: Worker | None = None, poll_s: float = 0.05
) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        if worker is not None and not worker.alive():
            raise RuntimeError(f"worker exited with {worker.proc.returncode}: {worker.tail()}")
        time.sleep(poll_s)
    return pred()


def run_with_timeout(
    argv: Sequence[str],
    timeout_s: float,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int | None, str, str]:
    """Run a subprocess in its own session; kill its whole group on timeout."""
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        return None, out, err


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def state_dir(system: str) -> Path:
    """The system's scratch directory (created; peers import-time objects may need it)."""
    d = STATE_ROOT / system
    d.mkdir(parents=True, exist_ok=True)
    return d


def remove_sqlite(db: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def flush_redis() -> None:
    """FLUSHDB the bench's own Redis database (never another one)."""
    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    try:
        r.flushdb()
    finally:
        r.close()


def venv_bin(name: str) -> str:
    """A console script installed beside the running interpreter."""
    return str(Path(sys.executable).parent / name)


# --------------------------------------------------------------------------
# The peer interface
# --------------------------------------------------------------------------

Spec = tuple[int, float, float]  # (job id, enqueue timestamp, seconds the job sleeps)


class Peer:
    """What each system provides.  Sync peers override the ``*_sync`` methods;
    async peers set ``is_async`` and override the ``*_async`` ones."""

    name = "?"
    is_async = False
    async_backend = "asyncio"
    #: settings shown in results.md: concurrency, durability, recovery, batch API (of the
    #: row being run: a peer module builds them from :func:`tuned`)
    settings: ClassVar[dict[str, str]] = {}
    #: what the tuned row changes from the default one, each with the documented reason
    tuning: ClassVar[str] = ""
    #: distributions whose versions the results report (pip names)
    dists: tuple[str, ...] = ()
    #: seconds a crashed job may take to be recovered (after the worker restarts)
    recovery_s = 5.0
    #: the system's scratch directory (set by ``main``)
    state: Path = STATE_ROOT
    #: one process per store (conveyor: one writer per SQLite file), so the worker process
    #: enqueues the latency measure's jobs itself, as a program embedding it does: the worker
    #: gets ``$PEERS_PACED_N`` and enqueues LATENCY_WARMUP jobs (ids N..), waits for them, then
    #: N jobs (ids 0..N-1) paced by :func:`paced` at LATENCY_RATE
    produces_in_worker = False
    #: set while a worker of the measure is up (the latency measure): a service's producer
    #: then talks to it instead of starting a server of its own
    serving = False

    def reset(self) -> None:
        """Delete state kept outside ``state_dir`` (Redis, PostgreSQL).  The state
        directory itself is wiped by ``main`` before the peer module is imported."""

    def worker_argv(self, crash: bool) -> list[str]:
        raise NotImplementedError

    def worker_env(self, crash: bool) -> dict[str, str]:
        return {"PEERS_CRASH": "1" if crash else "0"}

    def run_worker(self, crash: bool) -> None:
        """For systems without a worker program: ``python <peer>.py --worker``."""
        raise NotImplementedError

    # sync producers
    def open_producer(self) -> Any:
        return None

    def close_producer(self, prod: Any) -> None:
        return None

    def enqueue_sync(self, prod: Any, spec: Spec) -> None:
        raise NotImplementedError

    def bulk_sync(self, prod: Any, specs: Sequence[Spec]) -> None:
        for s in specs:
            self.enqueue_sync(prod, s)

    # async producers
    async def open_producer_async(self) -> Any:
        return None

    async def close_producer_async(self, prod: Any) -> None:
        return None

    async def enqueue_async(self, prod: Any, spec: Spec) -> None:
        raise NotImplementedError

    async def bulk_async(self, prod: Any, specs: Sequence[Spec]) -> None:
        for s in specs:
            await self.enqueue_async(prod, s)

    def self_worker_argv(self) -> list[str]:
        return [sys.executable, str(PEERS_DIR / f"{self.name}_peer.py"), "--worker"]


# --------------------------------------------------------------------------
# Producer-side drivers (sync and async share the timing logic)
# --------------------------------------------------------------------------


def _chunks(specs: Sequence[Spec], size: int) -> Iterator[Sequence[Spec]]:
    for i in range(0, len(specs), size):
        yield specs[i : i + size]


def _async_run(peer: Peer, fn: Callable[[], Awaitable[Any]]) -> Any:
    import anyio

    return anyio.run(fn, backend=peer.async_backend)


def produce(peer: Peer, specs: Sequence[Spec], mode: str, rate: float | None = None) -> float:
    """Enqueue ``specs``; return seconds spent.  mode: bulk, single, concurrent, paced."""
    if peer.is_async:
        return float(_async_run(peer, lambda: _produce_async(peer, specs, mode, rate)))
    return _produce_sync(peer, specs, mode, rate)


def paced(specs: Sequence[Spec], rate: float) -> Iterator[tuple[float, Spec]]:
    t0 = time.time() + 0.05
    for k, (jid, _, sl) in enumerate(specs):
        yield t0 + k / rate, (jid, 0.0, sl)


def _produce_sync(peer: Peer, specs: Sequence[Spec], mode: str, rate: float | None) -> float:
    if mode == "concurrent":
        parts = [specs[k::CONCURRENT_PRODUCERS] for k in range(CONCURRENT_PRODUCERS)]
        prods = [peer.open_producer() for _ in parts]
        barrier = threading.Barrier(len(parts))

        def one(k: int) -> None:
            barrier.wait(timeout=60)
            for jid, _, sl in parts[k]:
                peer.enqueue_sync(prods[k], (jid, time.time(), sl))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(parts)) as ex:
            for fut in [ex.submit(one, k) for k in range(len(parts))]:
                fut.result(timeout=3600)
        dt = time.perf_counter() - t0
        for p in prods:
            peer.close_producer(p)
        return dt
    prod = peer.open_producer()
    try:
        t0 = time.perf_counter()
        if mode == "bulk":
            for chunk in _chunks(specs, BULK_CHUNK):
                now = time.time()
                peer.bulk_sync(prod, [(j, now, s) for j, _, s in chunk])
        elif mode == "single":
            for jid, _, sl in specs:
                peer.enqueue_sync(prod, (jid, time.time(), sl))
        elif mode == "paced":
            assert rate
            for target, (jid, _, sl) in paced(specs, rate):
                delay = target - time.time()
                if delay > 0:
                    time.sleep(delay)
                peer.enqueue_sync(prod, (jid, time.time(), sl))
        return time.perf_counter() - t0
    finally:
        peer.close_producer(prod)


async def _produce_async(peer: Peer, specs: Sequence[Spec], mode: str, rate: float | None) -> float:
    import anyio

    if mode == "concurrent":
        parts = [specs[k::CONCURRENT_PRODUCERS] for k in range(CONCURRENT_PRODUCERS)]
        prod = await peer.open_producer_async()  # one client (pool) shared by the tasks

        async def one(part: Sequence[Spec]) -> None:
            for jid, _, sl in part:
                await peer.enqueue_async(prod, (jid, time.time(), sl))

        try:
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for part in parts:
                    tg.start_soon(one, part)
            return time.perf_counter() - t0
        finally:
            # also on failure: a producer may own a process (conveyor_http's service)
            await peer.close_producer_async(prod)
    prod = await peer.open_producer_async()
    try:
        t0 = time.perf_counter()
        if mode == "bulk":
            for chunk in _chunks(specs, BULK_CHUNK):
                now = time.time()
                await peer.bulk_async(prod, [(j, now, s) for j, _, s in chunk])
        elif mode == "single":
            for jid, _, sl in specs:
                await peer.enqueue_async(prod, (jid, time.time(), sl))
        elif mode == "paced":
            assert rate
            for target, (jid, _, sl) in paced(specs, rate):
                delay = target - time.time()
                if delay > 0:
                    await anyio.sleep(delay)
                await peer.enqueue_async(prod, (jid, time.time(), sl))
        return time.perf_counter() - t0
    finally:
        await peer.close_producer_async(prod)


# --------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------


def specs(n: int, sleep_s: float = 0.0, start: int = 0) -> list[Spec]:
    return [(i, 0.0, sleep_s) for i in range(start, start + n)]


def _fresh(peer: Peer) -> Path:
    peer.state.mkdir(parents=True, exist_ok=True)
    for p in peer.state.glob("worker-*.log"):
        p.unlink()
    peer.reset()
    rec = peer.state / "records.txt"
    rec.unlink(missing_ok=True)
    return rec


def _start_worker(peer: Peer, rec: Path, tag: str, crash: bool = False) -> Worker:
    return Worker(peer.worker_argv(crash), peer.state, rec, tag, peer.worker_env(crash))


def measure_enqueue(peer: Peer, mode: str, n: int) -> dict[str, Any]:
    _fresh(peer)
    dt = produce(peer, specs(n), mode)
    return {"jobs_per_s": round(n / dt, 1), "n": n}


def measure_drain(peer: Peer, n: int, timeout_s: float) -> dict[str, Any]:
    rec = _fresh(peer)
    produce(peer, specs(n), "bulk")
    w = _start_worker(peer, rec, "drain")
    try:
        ok = wait_until(lambda: count_lines(rec) >= n, timeout_s, w, poll_s=0.2)
    finally:
        rss = w.peak_rss_mb
        w.stop()
        rss = max(rss, w.peak_rss_mb)
    r = Records.read(rec)
    done = r.done(range(n))
    if not r.ends:
        return {"error": f"no job completed in {timeout_s:.0f}s: {w.tail(3)}"}
    t_last = max(max(v) for v in r.ends.values())
    out: dict[str, Any] = {
        "jobs_per_s": round(done / (t_last - w.t_spawn), 1),
        "peak_rss_mb": rss,
        "twice": sum(1 for v in r.ends.values() if len(v) > 1),
        "n": n,
        "done": done,
    }
    if not ok and done < n:
        out["partial"] = f"stopped after {timeout_s:.0f}s with {done}/{n} done"
    return out


def measure_latency(peer: Peer, seconds: float, timeout_s: float) -> dict[str, Any]:
    rec = _fresh(peer)
    n = int(LATENCY_RATE * seconds)
    env = peer.worker_env(False)
    if peer.produces_in_worker:
        env["PEERS_PACED_N"] = str(n)
    w = Worker(peer.worker_argv(False), peer.state, rec, "latency", env)
    try:
        peer.serving = True
        if not peer.produces_in_worker:
            # warm up: the worker is ready once a few jobs ran (ids above the measured ones)
            produce(peer, specs(LATENCY_WARMUP, start=n), "single")
            if not wait_until(lambda: count_lines(rec) >= LATENCY_WARMUP, 60, w, poll_s=0.1):
                return {"error": f"worker not ready after 60s: {w.tail(5)}"}
            produce(peer, specs(n), "paced", rate=LATENCY_RATE)
        wait_until(lambda: count_lines(rec, b"S") >= n + LATENCY_WARMUP, timeout_s, w, poll_s=0.2)
    finally:
        w.stop()
    r = Records.read(rec)
    started = [i for i in range(n) if i in r.t_enq]
    if len(started) < 2:
        return {"error": f"only {len(started)}/{n} jobs started within {timeout_s:.0f}s"}
    # A job not started by the end counts as slower than any that did: a system that cannot
    # keep up still gets its p50 when fewer than half are missing (p99: 1 %); the percentile
    # that falls on a missing job is reported as None (shown as a dash, with a note).
    lat = [(min(r.starts[i]) - r.t_enq[i]) * 1000 for i in started]
    lat += [math.inf] * (n - len(lat))
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    # the offered rate as the enqueue stamps show it, wherever the producer ran
    stamps = [r.t_enq[i] for i in started]
    out: dict[str, Any] = {
        "p50_ms": round(p50, 2) if math.isfinite(p50) else None,
        "p99_ms": round(p99, 2) if math.isfinite(p99) else None,
        "offered_per_s": round((len(stamps) - 1) / (max(stamps) - min(stamps)), 1),
        "n": n,
    }
    if len(started) < n:
        out["partial"] = (
            f"{n - len(started)}/{n} jobs had not started {timeout_s:.0f}s after the last "
            "enqueue (counted as slower than every other)"
        )
    return out


def measure_crash(peer: Peer, n: int, timeout_s: float) -> dict[str, Any]:
    rec = _fresh(peer)
    produce(peer, specs(n, CRASH_JOB_S), "bulk")
    w = _start_worker(peer, rec, "crash1", crash=True)
    try:
        if not wait_until(
            lambda: count_lines(rec) >= n * CRASH_KILL_FRACTION, timeout_s, w, poll_s=0.01
        ):
            return {
                "error": f"first worker did not reach {CRASH_KILL_FRACTION:.0%} in {timeout_s:.0f}s"
            }
        w.kill(signal.SIGKILL)
        t_kill = time.time()
    finally:
        w.stop()
    time.sleep(0.2)
    at_kill = Records.read(rec)
    in_flight = [i for i in at_kill.starts if i not in at_kill.ends]
    w2 = _start_worker(peer, rec, "crash2", crash=True)
    try:
        # until every job completed, or nothing new completed for recovery_s + 10 s
        last_count, last_change = -1, time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            r = Records.read(rec)
            c = r.done(range(n))
            if c >= n:
                break
            if c != last_count:
                last_count, last_change = c, time.monotonic()
            elif time.monotonic() - last_change > peer.recovery_s + 10:
                break
            if not w2.alive():
                break
            time.sleep(0.25)
        time.sleep(0.5)  # a completion may be just about to be written
    finally:
        w2.stop()
    r = Records.read(rec)
    lost_ids = [i for i in range(n) if i not in r.ends]
    return {
        "lost": len(lost_ids),
        "twice": sum(1 for i in range(n) if len(r.ends.get(i, [])) > 1),
        "rerun": sum(1 for i in range(n) if len(r.starts.get(i, [])) > 1),
        "done_at_kill": at_kill.done(range(n)),
        "in_flight_at_kill": len(in_flight),
        "lost_in_flight": len(set(lost_ids) & set(in_flight)),
        "recovery_s": round(max((max(v) for v in r.ends.values()), default=t_kill) - t_kill, 1),
        "n": n,
    }


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _describe(exc: BaseException) -> str:
    """The error itself, not the task group that wraps it (which only says how many)."""
    leaf, groups = exc, 0
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf, groups = leaf.exceptions[0], groups + len(leaf.exceptions)
    text = f"{type(leaf).__name__}: {leaf}"
    return text + (f" (1st of {groups} failures)" if groups > 1 else "")


def main(script: str) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--measure", choices=MEASURES)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--worker", action="store_true", help="internal: run the worker loop")
    ap.add_argument("--describe", action="store_true", help="print settings and versions")
    ap.add_argument("--timeout", type=float, default=None, help="per-phase wait bound, s")
    ap.add_argument("--tuned", action="store_true", help="the system's tuned row")
    args = ap.parse_args()
    if args.tuned:  # before the peer module is imported; inherited by its workers
        os.environ[TUNED_ENV] = "1"
    name = Path(script).stem
    system = name.removesuffix("_peer")
    out: dict[str, Any] = {
        "system": system + (TUNED_SUFFIX if tuned() else ""),
        "measure": args.measure,
    }
    try:
        if args.measure == "crash":
            os.environ["PEERS_CRASH"] = "1"  # producer and worker use the crash settings
        if not args.worker:
            # wipe file state before the module (and any import-time object) opens it
            shutil.rmtree(STATE_ROOT / system, ignore_errors=True)
        sys.path.insert(0, str(PEERS_DIR))
        mod = importlib.import_module(name)
        peer: Peer = mod.PEER
        peer.state = STATE_ROOT / peer.name
        if args.worker:
            peer.run_worker(os.environ.get("PEERS_CRASH") == "1")
            return
        if args.describe:
            out["settings"] = peer.settings | ({"tuning": peer.tuning} if tuned() else {})
            out["versions"] = {d: _version(d) for d in peer.dists}
            print(json.dumps(out), flush=True)
            return
        n = args.n or (2000 if args.quick else 50_000)
        timeout = args.timeout or (180.0 if args.quick else 600.0)
        if args.measure in ("bulk", "single", "concurrent"):
            out.update(measure_enqueue(peer, args.measure, n))
        elif args.measure == "drain":
            out.update(measure_drain(peer, n, timeout))
        elif args.measure == "latency":
            out.update(measure_latency(peer, 5.0 if args.quick else 20.0, timeout))
        elif args.measure == "crash":
            out.update(measure_crash(peer, args.n or (1000 if args.quick else CRASH_JOBS), timeout))
        else:
            ap.error("--measure is required")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        out["error"] = _describe(exc)[:300]
    sys.stdout.flush()
    print(json.dumps(out), flush=True)
