"""The real queue against the reference model, under any interleaving Hypothesis can find.

The machine (``machine.py``) drives a real queue on a SQLite file under virtual time: enqueues
one by one and in batches, workflows (random DAGs of up to six steps that run after earlier
steps and after stored jobs, now and then one that does not exist), schedules (``every`` and
``cron`` in two time zones, each catch-up), cancels and requeues (one by one, of the job whose
failure cancelled others, and in bulk), time passing, crashes (with or without time passing
before the file is opened again), cancels racing a claim or a crash, stale outcomes, pauses
and resumes, and a second owner (another process's writer on the file) that claims jobs,
renews its lease or misses its heartbeats, dies, and ends its attempts late; each handler is
drawn with or without limits (``concurrency``, ``key_concurrency`` over the jobs' concurrency
keys, a rate limit, a ``retry_priority_step``). The model (``model.py``) says what each step
must do. What is checked, by invariant of DESIGN §4:

After every step, the real jobs (status, attempts, run_at, created_at, result, error, progress,
the jobs they run after, their schedule), the stored schedules (next tick, last tick, last job)
and the handler starts are what the model allows:

- 4 and 5, order and time: every attempt starts at its exact virtual time, in exact order where
  one worker runs, never before its ``run_at``;
- 9, dependencies: a job waits until the last job it runs after completed, then starts (its
  delay counted from then); a job that fails or is cancelled cancels the waiting jobs below it
  (and no other), with an error naming it; its requeue brings them back to waiting; the requeue
  of a job whose dependency failed is refused;
- 10, schedules: each tick enqueues its job at its time, as many as the catch-up says for ticks
  that fell while no process had the file open;
- 11, limits: a ready job whose handler is paused or has no room under its limits stays
  ``pending`` in its place while the jobs after it (of the other handler, or of another key)
  start in free slots; it starts the moment the room opens (a rate window's end wakes the
  queue); a retry runs at its lowered priority;
- 12, leases: the second owner's running jobs are taken over exactly when the queue's heartbeat
  finds it dead or two heartbeats silent (never while it lives and renews), as interrupted
  attempts; its outcome after that changes nothing, even when the queue runs the same attempt
  number of the job again; its heartbeat is refused and it registers anew.

At the end the schedules are removed, time runs until every job is finished, and these are
checked on what the real queue did:

1. No loss: every job whose enqueue returned is finished.
2. and 6. Each attempt runs once, in order, at most ``max_attempts`` of them; a completed job
   never runs again.
3. After a successful cancel, no attempt starts but the one already claimed.
7. Two enqueues with one idempotency key yield one job.
9. A job never starts before all of its dependencies completed (each dependency finished at or
   before the start, and the handler saw each one's result); a job one of whose dependencies
   ended failed or cancelled is cancelled; a job cancelled because of a dependency names one
   that is upstream of it and did end failed or cancelled: a failed or cancelled dependency
   cancels every transitive dependent and nothing else.
10. Each schedule tick yields exactly one job across crashes and reopens, and none is enqueued
    before its time (its job was created at or after the tick).
11. From the handlers' own log of starts and ends: never more attempts of a handler running at
    once than its concurrency, or of one key than its key concurrency; never more starts in a
    window than its rate limit; no start of a paused handler's job between the return of
    ``pause`` and that of ``resume``, across crashes.

On PostgreSQL (``TestQueueMatchesTheModelOnPostgres``, a fresh schema per example) all of this
is checked the same; the model only knows that a dead owner, the second one or the queue's own
crashed process, is found by its lapsed lease rather than at once by its lock (12).

``mutants.py`` plants bugs against invariants 9, 10, each part of 11, and 12 (an outcome
accepted without the owner check; a live owner's jobs taken over): ``test_mutants.py`` shows
each one caught.
"""

from __future__ import annotations

from typing import ClassVar, Final

import hypothesis
import pytest

from machine import FullSyncQueueMachine, PostgresQueueMachine, QueueMachine
from postgres_schemas import postgres_unreachable

TIMEOUT: Final = 900 if hypothesis.settings.get_current_profile_name() == "ci" else 7200
"""Seconds each machine may take: under ``ci`` generation stays well within a minute and
shrinking a failure may take a few more; ``thorough`` runs 20 times the examples (the machine
on PostgreSQL alone took more than 900 s of them)."""

TestQueueMatchesTheModel = QueueMachine.TestCase
TestQueueMatchesTheModel.pytestmark = [pytest.mark.timeout(TIMEOUT)]  # type: ignore[attr-defined]


def examples(by_profile: dict[str, int]) -> int:
    """The examples to run under the current Hypothesis profile: ``by_profile``'s count for
    it, else the profile's own."""
    return by_profile.get(
        hypothesis.settings.get_current_profile_name(), hypothesis.settings.default.max_examples
    )


FULL_SYNC_EXAMPLES: Final = {"ci": 60}
"""The examples of the machine at ``synchronous="full"`` under ``ci``: it shares every step
with the one above, and differs only in when a batch is answered."""


class TestQueueMatchesTheModelAtFullSync(FullSyncQueueMachine.TestCase):
    """The same machine at ``synchronous="full"`` (see ``FullSyncQueueMachine``)."""

    settings = hypothesis.settings(
        FullSyncQueueMachine.TestCase.settings,
        max_examples=examples(FULL_SYNC_EXAMPLES),
    )
    pytestmark: ClassVar = [pytest.mark.timeout(TIMEOUT)]


POSTGRES_EXAMPLES: Final = {"ci": 120}
"""The examples of the machine on PostgreSQL, by Hypothesis profile, where fewer than the
profile's: each step there makes round trips to the server, and ``ci`` keeps this test near a
minute on two cores. Other profiles (``thorough``) run their full count."""


class TestQueueMatchesTheModelOnPostgres(PostgresQueueMachine.TestCase):
    """The same machine with the queue in a fresh schema on PostgreSQL for each example (see
    ``PostgresQueueMachine``): every check above holds there too, a crashed process's jobs
    taken over once its lease lapses rather than at once. Skipped without a server."""

    settings = hypothesis.settings(
        PostgresQueueMachine.TestCase.settings,
        max_examples=examples(POSTGRES_EXAMPLES),
    )
    pytestmark: ClassVar = [pytest.mark.timeout(TIMEOUT)]

    def setUp(self) -> None:
        reason = postgres_unreachable()
        if reason is not None:
            pytest.skip(reason)
