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

    def resume_from_last_tick(self: Writer, now: float) -> int:
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


MUTANTS: Final[dict[str, Callable[[], contextlib.AbstractContextManager[None]]]] = {
    "released_on_failure": released_on_failure,
    "released_early": released_early,
    "tick_twice_after_crash": tick_twice_after_crash,
    "tick_early": tick_early,
}


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
