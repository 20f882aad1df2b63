"""Bugs planted in conveyor on purpose, to show that the property suite catches each of them.

Each mutant is a context manager that monkeypatches one part of the core, the way a plausible
bug would break it, and undoes the patch on exit. ``test_mutants.py`` replays, under each mutant,
the counterexample the state machine printed when it found it, and expects it to fail; the same
replays pass on the real queue (``test_found_regressions.py``). To let the state machine hunt
one down again (without the replay), plant it for a whole run::

    CONVEYOR_MUTANT=released_on_failure .venv/bin/pytest property_tests/test_state_machine.py

The names of the mutants are the keys of :data:`MUTANTS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from conveyor import JobStatus
from conveyor._events import Change
from conveyor._job import MAX_PRIORITY
from conveyor._limits import Limits
from conveyor._schedule import Cadence, CatchUp, Schedule, due_ticks
from conveyor._storage import sqlite
from conveyor._storage.sqlite import NewJob, Writer


@contextlib.contextmanager
def released_on_failure() -> Iterator[None]:
    """Invariant 9: a dependent is released when its dependency *fails*, as if it completed
    (instead of being cancelled with everything below it)."""
    after_end = Writer._after_end

    def mutant(self: Writer, job_id: int, name: str, status: JobStatus, now: float) -> list[Change]:
        if status is JobStatus.FAILED:
            return self._release_dependents(job_id, now)
        return after_end(self, job_id, name, status, now)

    with _patched(Writer, "_after_end", mutant):
        yield


@contextlib.contextmanager
def released_early() -> Iterator[None]:
    """Invariant 9: a dependent is released when all but one of its dependencies completed."""
    release = sqlite.Q_RELEASE
    assert "blockers <= 0" in release
    with _patched(sqlite, "Q_RELEASE", release.replace("blockers <= 0", "blockers <= 1")):
        yield


@contextlib.contextmanager
def tick_twice_after_crash() -> Iterator[None]:
    """Invariant 10: after a crash, a schedule resumes from its last tick (as if the advance
    past it had not been committed with the tick's job), and nothing recognises the tick's job
    (it is stored without its idempotency key): the last tick is enqueued again."""
    recover_running = Writer.recover_running
    tick_job = sqlite._tick_job

    def resume_from_last_tick(self: Writer, now: float) -> list[Change]:
        self._conn.execute(
            "UPDATE schedules SET next_run_at = last_run_at WHERE last_run_at IS NOT NULL"
        )
        self.next_tick = self._conn.execute(sqlite.Q_NEXT_TICK).fetchone()[0]
        return recover_running(self, now)

    def without_key(schedule: Schedule, tick: float, key: str) -> NewJob:
        return attrs.evolve(tick_job(schedule, tick, key), idempotency_key=None)

    with (
        _patched(Writer, "recover_running", resume_from_last_tick),
        _patched(sqlite, "_tick_job", without_key),
    ):
        yield


@contextlib.contextmanager
def tick_early() -> Iterator[None]:
    """Invariant 10: a tick due within the next three seconds is enqueued already."""

    def mutant(
        cadence: Cadence, next_run_at: float, now: float, catch_up: CatchUp
    ) -> tuple[list[float], float]:
        ticks, following = due_ticks(cadence, next_run_at, now, catch_up)
        if following - now <= 3.0:
            ticks, following = [*ticks, following], cadence.first_after(following)
        return ticks, following

    with _patched(sqlite, "due_ticks", mutant):
        yield


@contextlib.contextmanager
def concurrency_ignores_running() -> Iterator[None]:
    """Invariant 11: a handler's concurrency counts only the jobs of the claim at hand, not
    those already running."""
    statement = sqlite.Q_RUNNING_BY_NAME
    assert "GROUP BY name" in statement
    with _patched(sqlite, "Q_RUNNING_BY_NAME", statement.replace("GROUP BY", "AND 0 GROUP BY")):
        yield


@contextlib.contextmanager
def key_concurrency_ignores_running() -> Iterator[None]:
    """Invariant 11: a key's concurrency counts only the jobs of the claim at hand."""
    with _patched(sqlite, "Q_RUNNING_BY_KEY", sqlite.Q_RUNNING_BY_KEY + " AND 0"):
        yield


@contextlib.contextmanager
def rate_window_forgets_early() -> Iterator[None]:
    """Invariant 11: a rate limit stops counting a start one second before its window ends."""
    statement = sqlite.Q_FORGET_STARTS
    assert statement.endswith("at <= ?")
    with _patched(sqlite, "Q_FORGET_STARTS", statement + " + 1"):
        yield


@contextlib.contextmanager
def pause_not_stored() -> Iterator[None]:
    """Invariant 11: a pause holds in the process that made it, but is not written: after a
    restart, the handler's jobs start again."""
    with _patched(sqlite, "Q_SET_PAUSED", "SELECT ?, ?"):
        yield


@contextlib.contextmanager
def held_job_blocks_the_line() -> Iterator[None]:
    """Invariant 11: a claim with limits looks no further than the first ready job, so one
    held back by its handler's limit keeps every job after it waiting."""
    with _patched(sqlite, "CLAIM_SCAN_LIMIT", 1):
        yield


@contextlib.contextmanager
def retry_priority_capped_at_nine() -> Iterator[None]:
    """Invariant 11's retry rule: a retry's lowered priority is capped one short of the
    lowest priority."""

    def mutant(self: Limits, priority: int) -> int:
        return min(priority + self.retry_priority_step, MAX_PRIORITY - 1)

    with _patched(Limits, "retry_priority", mutant):
        yield


@contextlib.contextmanager
def outcome_without_fencing() -> Iterator[None]:
    """Invariant 12: an outcome is checked against the job's attempt, but not against the
    owner holding it: an owner whose jobs were taken over can end another owner's attempt of
    the same number."""
    statement = sqlite.Q_COMPLETE_ALL
    assert "AND jobs.owner = ?" in statement
    with (
        _patched(sqlite, "fenced_out", lambda holder, owner: False),
        _patched(sqlite, "Q_COMPLETE_ALL", statement.replace("AND jobs.owner = ?", "AND ? > 0")),
    ):
        yield


@contextlib.contextmanager
def live_owner_taken_over() -> Iterator[None]:
    """Invariant 12: an owner is taken for dead when its lock cannot be checked, and its
    running jobs are taken over while it lives and renews its lease."""
    with _patched(sqlite, "owner_process_alive", lambda path, owner: False):
        yield


MUTANTS: Final[dict[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "released_on_failure": released_on_failure,
    "released_early": released_early,
    "tick_twice_after_crash": tick_twice_after_crash,
    "tick_early": tick_early,
    "concurrency_ignores_running": concurrency_ignores_running,
    "key_concurrency_ignores_running": key_concurrency_ignores_running,
    "rate_window_forgets_early": rate_window_forgets_early,
    "pause_not_stored": pause_not_stored,
    "held_job_blocks_the_line": held_job_blocks_the_line,
    "retry_priority_capped_at_nine": retry_priority_capped_at_nine,
    "outcome_without_fencing": outcome_without_fencing,
    "live_owner_taken_over": live_owner_taken_over,
}


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
