"""Counterexamples the state machine found, replayed as fixed step sequences.

Each is the short sequence that exposed a planted bug (see the issue note), written the way
Hypothesis prints a failing case; each passes on a correct queue and fails on its bug. The
teardown drains the queue and checks invariants 1-7, as at the end of every generated case.
"""

from __future__ import annotations

from collections.abc import Callable

import conveyor
from machine import QueueMachine

from model import Behaviour, HandlerLimits, Spec

RETURN = Behaviour("return")


def job(
    *script: Behaviour,
    priority: int = 5,
    delay: float = 0.0,
    max_attempts: int | None = None,
    key: str | None = None,
) -> Spec:
    steps = (*script, *[RETURN] * (4 - len(script)))
    return Spec("alpha", 0, priority, delay, max_attempts, None, key, steps)


def replay(steps: Callable[[QueueMachine], None]) -> None:
    machine = QueueMachine()
    try:
        steps(machine)
    finally:
        machine.teardown()


def test_a_job_queued_later_with_a_better_priority_starts_first() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("sleep", duration=2.5)))
        state.enqueue(job(priority=9))
        state.enqueue(job(priority=1))
        state.advance_time(3.0)

    replay(steps)


def test_a_job_cancelled_while_it_waits_for_a_slot_never_starts() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("sleep", duration=1.5)))
        state.enqueue(job())
        state.cancel_job(2)
        state.advance_time(2.0)

    replay(steps)


def test_a_job_with_one_attempt_that_raises_fails_without_a_retry() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("raise"), max_attempts=1))

    replay(steps)


def test_a_retry_waits_for_its_backoff() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("raise"), Behaviour("raise")))
        state.advance_time(0.5)
        state.advance_time(3.0)

    replay(steps)


def test_a_job_running_at_a_crash_runs_again_with_the_attempt_counted() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("sleep", duration=5.5), max_attempts=2))
        state.crash_and_reopen(workers=1)

    replay(steps)


def test_a_job_whose_last_attempt_a_crash_interrupted_ends_failed() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=2)
        state.enqueue(job(Behaviour("sleep", duration=5.5), max_attempts=1))
        state.crash_and_reopen(workers=1)

    replay(steps)


def test_two_enqueues_with_one_key_yield_one_job() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(delay=5.0, key="k1"))
        state.enqueue_many([job(key="k1"), job(key="k2"), job(key="k2")])

    replay(steps)


def test_an_outcome_from_an_attempt_a_crash_interrupted_changes_nothing() -> None:
    def steps(state: QueueMachine) -> None:
        state.open_queue(workers=1)
        state.enqueue(job(Behaviour("sleep", duration=5.5), Behaviour("sleep", duration=5.5)))
        state.crash_and_reopen(workers=1)
        state.deliver_stale(1, 1, conveyor.Event.COMPLETED)
        state.deliver_stale(1, 1, conveyor.Event.RETRIED)

    replay(steps)


def test_a_claim_at_the_instant_a_keyed_attempt_times_out_may_come_before_its_end() -> None:
    # Found by the thorough profile (2026-12-07): the model settled the ends first, while the
    # queue's timer (the rate window opening) and its worker (the timeout) wake at the same
    # instant of the test's clock, in either order.
    sleep = Behaviour("sleep", duration=100.5)

    def steps(state: QueueMachine) -> None:
        state.open_queue(
            workers=4, limits={"alpha": HandlerLimits(key_concurrency=1, rate=(1, 3.0))}
        )
        state.enqueue(Spec("alpha", 0, 4, 1.0, None, 3.0, None, (sleep,) * 4, (), (), "a1"))
        state.enqueue(Spec("alpha", 0, 9, 3.0, 2, None, None, (sleep,) * 4, (), (), "a2"))
        state.enqueue(Spec("alpha", 0, 1, 2.0, None, 5.0, None, (sleep,) * 4, (), (), "a1"))

    replay(steps)
