"""The suite catches the bugs of ``mutants.py``: one against each part of invariants 9, 10,
11 and 12.

Each case is the short sequence of machine steps that the state machine shrank to when it found
the mutant (planted with ``CONVEYOR_MUTANT``), written the way Hypothesis prints it. It passes on
the real queue, and fails under its mutant with the difference the machine reported. The
teardown drains the queue and checks the invariants, as at the end of every generated case.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from machine import QueueMachine
from mutants import MUTANTS

from model import Behaviour, Cadence, HandlerLimits, ScheduleSpec, Spec

RETURN = Behaviour("return")
LONG = Behaviour("sleep", duration=100.5)


def job(
    *script: Behaviour,
    name: str = "alpha",
    priority: int = 5,
    after_steps: tuple[int, ...] = (),
    delay: float = 0.0,
    concurrency_key: str | None = None,
) -> Spec:
    steps = (*script, *[RETURN] * (4 - len(script)))
    return Spec(
        name,
        0,
        priority,
        delay,
        None,
        None,
        None,
        steps,
        after_steps=after_steps,
        concurrency_key=concurrency_key,
    )


def every(seconds: float) -> ScheduleSpec:
    return ScheduleSpec("s1", "alpha", 0, Cadence(every=seconds), "latest", (RETURN,) * 4)


def a_job_after_one_that_failed_never_starts(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.enqueue_steps([job(Behaviour("fail")), job(after_steps=(0,))])


def a_job_after_two_waits_for_the_second(state: QueueMachine) -> None:
    state.open_queue(workers=2)
    state.enqueue_steps([job(), job(Behaviour("sleep", duration=2.5)), job(after_steps=(0, 1))])
    state.advance_time(3.0)


def a_tick_enqueued_before_a_crash_is_not_enqueued_again(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.set_schedule(every(2.5))
    state.advance_time(3.0)
    state.crash_and_reopen(workers=1)


def a_tick_is_enqueued_at_its_time(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.set_schedule(every(2.5))
    state.advance_time(3.0)


def alpha_limited(**limits: object) -> dict[str, HandlerLimits]:
    return {"alpha": HandlerLimits(**limits)}  # type: ignore[arg-type]


def a_second_job_waits_for_the_concurrency_slot(state: QueueMachine) -> None:
    state.open_queue(workers=2, limits=alpha_limited(concurrency=1))
    state.enqueue(job(LONG))
    state.enqueue(job(LONG))


def a_second_job_of_a_key_waits_for_the_key(state: QueueMachine) -> None:
    state.open_queue(workers=2, limits=alpha_limited(key_concurrency=1))
    state.enqueue(job(LONG, concurrency_key="a1"))
    state.enqueue(job(LONG, concurrency_key="a1"))


def a_rate_limited_job_waits_for_the_whole_window(state: QueueMachine) -> None:
    state.open_queue(workers=2, limits=alpha_limited(rate=(1, 3.0)))
    state.enqueue_many([job(), job()])
    state.advance_time(2.0)
    state.enqueue(job(name="beta"))  # a claim before the window ends


def a_pause_holds_across_a_restart(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.pause("alpha")
    state.enqueue(job())
    state.crash_and_reopen(workers=1)


def another_handler_starts_past_a_held_job(state: QueueMachine) -> None:
    state.open_queue(workers=2, limits=alpha_limited(concurrency=1))
    state.enqueue_many([job(LONG), job(), job(name="beta")])


def a_retry_goes_down_to_the_lowest_priority(state: QueueMachine) -> None:
    state.open_queue(workers=1, limits=alpha_limited(retry_priority_step=4))
    state.enqueue(job(Behaviour("raise"), priority=8))


def a_taken_over_owners_late_outcome_is_refused(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.enqueue(job(LONG))  # keeps the queue's one slot busy
    state.enqueue(attrs.evolve(job(LONG, LONG, LONG, LONG), max_attempts=1))
    state.second_owner_claims()  # job 2, attempt 1
    state.advance_time(4.0)  # its lease lapses: taken over, its one attempt counted: failed
    state.requeue_job(2)
    state.cancel_job(1)  # the queue's slot frees: it runs job 2's attempt 1 itself
    state.second_owner_ends(2, 1)


def a_live_owners_jobs_are_not_taken_over(state: QueueMachine) -> None:
    state.open_queue(workers=1)
    state.enqueue(job(LONG))
    state.enqueue(job(LONG))
    state.second_owner_claims()
    state.advance_time(2.0)  # the queue's first heartbeat: the second owner's lease holds


CASES: list[tuple[str, Callable[[QueueMachine], None], str]] = [
    # (the mutant, the steps that catch it, what the machine reports under it)
    (
        "released_on_failure",
        a_job_after_one_that_failed_never_starts,
        r"job 2: real \{'status': 'completed'.* != model \{'status': 'cancelled'",
    ),
    (
        "released_early",
        a_job_after_two_waits_for_the_second,
        r"job 3: real \{'status': 'completed'.* != model \{'status': 'waiting'",
    ),
    (
        "tick_twice_after_crash",
        a_tick_enqueued_before_a_crash_is_not_enqueued_again,
        r"job ids: real \[1, 2\] != model \[1\]",
    ),
    ("tick_early", a_tick_is_enqueued_at_its_time, r"job ids: real \[1, 2\] != model \[1\]"),
    (
        "concurrency_ignores_running",
        a_second_job_waits_for_the_concurrency_slot,
        r"job 2: real \{'status': 'running'.* != model \{'status': 'pending'",
    ),
    (
        "key_concurrency_ignores_running",
        a_second_job_of_a_key_waits_for_the_key,
        r"job 2: real \{'status': 'running'.* != model \{'status': 'pending'",
    ),
    (
        "rate_window_forgets_early",
        a_rate_limited_job_waits_for_the_whole_window,
        r"job 2: real \{'status': 'completed'.* != model \{'status': 'pending'",
    ),
    (
        "pause_not_stored",
        a_pause_holds_across_a_restart,
        r"job 1: real \{'status': 'completed'.* != model \{'status': 'pending'",
    ),
    (
        "held_job_blocks_the_line",
        another_handler_starts_past_a_held_job,
        r"job 3: real \{'status': 'pending'.* != model \{'status': 'completed'",
    ),
    (
        "retry_priority_capped_at_nine",
        a_retry_goes_down_to_the_lowest_priority,
        r"job 1: real \{[^}]*'priority': 9.* != model \{[^}]*'priority': 10",
    ),
    (
        "outcome_without_fencing",
        a_taken_over_owners_late_outcome_is_refused,
        r"job 2: real \{'status': 'completed'.* != model \{'status': 'running'",
    ),
    (
        "live_owner_taken_over",
        a_live_owners_jobs_are_not_taken_over,
        r"job 2: real \{'status': 'pending'.* != model \{'status': 'running'",
    ),
]


def replay(steps: Callable[[QueueMachine], None]) -> None:
    machine = QueueMachine()
    try:
        steps(machine)
    finally:
        machine.teardown()


@pytest.mark.parametrize(("mutant", "steps", "report"), CASES, ids=[case[0] for case in CASES])
def test_the_steps_that_catch_a_mutant_pass_on_the_real_queue(
    mutant: str, steps: Callable[[QueueMachine], None], report: str
) -> None:
    replay(steps)


@pytest.mark.parametrize(("mutant", "steps", "report"), CASES, ids=[case[0] for case in CASES])
def test_the_machine_catches_the_mutant(
    mutant: str, steps: Callable[[QueueMachine], None], report: str
) -> None:
    with MUTANTS[mutant](), pytest.raises(AssertionError, match=report):
        replay(steps)


def test_every_mutant_has_a_case() -> None:
    assert sorted(MUTANTS) == sorted(case[0] for case in CASES)
