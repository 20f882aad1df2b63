"""The state machine on PostgreSQL judges dead owners by their lease, and checks it.

On PostgreSQL no lock file tells that a process died: the jobs of a crashed queue process, or
of a second owner that died, are taken over once its lease (two heartbeats) lapsed, at a
heartbeat of the queue (``Model.leases_only``). These replays pin that the model expects
exactly that, and that the machine catches a store that takes a dead owner over early (as if
a lock had told, the way SQLite's does). Skipped without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conveyor._storage.postgres import PgWriter
from machine import PostgresQueueMachine
from postgres_schemas import postgres_unreachable

from model import Behaviour, Spec

RETURN = Behaviour("return")
LONG = Behaviour("sleep", duration=100.5)


@pytest.fixture(autouse=True)
def _server() -> None:
    reason = postgres_unreachable()
    if reason is not None:
        pytest.skip(reason)


def job(*script: Behaviour) -> Spec:
    return Spec("alpha", 0, 5, 0.0, None, None, None, (*script, *[RETURN] * (4 - len(script))))


def a_crashed_process_keeps_its_jobs_until_its_lease_lapses(state: PostgresQueueMachine) -> None:
    state.open_queue(workers=1)
    state.enqueue(job(LONG))
    state.advance_time(3.0)  # renewed at 2
    state.crash_and_reopen(workers=1)  # at 3: job 1 is still the crashed process's
    state.cancel_job(1)  # asked of the crashed process: settled by the takeover
    state.advance_time(2.0)  # the new process's first heartbeat, at 5: the lease holds
    state.advance_time(1.0)  # at 6 its lease lapsed, found at the heartbeat at 7


def a_dead_second_owner_keeps_its_jobs_until_its_lease_lapses(
    state: PostgresQueueMachine,
) -> None:
    state.open_queue(workers=1)
    state.enqueue(job(LONG))
    state.enqueue(job(LONG))
    state.advance_time(1.0)
    state.second_owner_claims()  # job 2, its heartbeat at 1
    state.second_owner_dies()
    state.advance_time(3.0)  # heartbeats at 2 and 4: the lease holds until 5
    state.advance_time(2.0)  # taken over at the heartbeat at 6


CASES: list[tuple[Callable[[PostgresQueueMachine], None], str]] = [
    # (the steps, what the machine reports when a dead owner is taken over at once)
    (
        a_crashed_process_keeps_its_jobs_until_its_lease_lapses,
        r"job 1: real \{'status': 'completed', 'attempts': 2.* != model \{'status': 'running', "
        r"'attempts': 1",
    ),
    (
        a_dead_second_owner_keeps_its_jobs_until_its_lease_lapses,
        r"job 2: real \{'status': 'pending'.* != model \{'status': 'running'",
    ),
]
IDS = [steps.__name__ for steps, _ in CASES]


def replay(steps: Callable[[PostgresQueueMachine], None]) -> None:
    machine = PostgresQueueMachine()
    try:
        steps(machine)
    finally:
        machine.teardown()


@pytest.mark.parametrize(("steps", "report"), CASES, ids=IDS)
def test_the_steps_pass_on_postgres(
    steps: Callable[[PostgresQueueMachine], None], report: str
) -> None:
    replay(steps)


@pytest.fixture
def dead_owners_found_at_once() -> Iterator[None]:
    """A store that takes any silent owner for dead, as if a lock had said so."""
    alive = PgWriter._owner_alive
    PgWriter._owner_alive = lambda self, owner: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        PgWriter._owner_alive = alive  # type: ignore[method-assign]


@pytest.mark.usefixtures("dead_owners_found_at_once")
@pytest.mark.parametrize(("steps", "report"), CASES, ids=IDS)
def test_the_machine_catches_a_takeover_before_the_lease_lapsed(
    steps: Callable[[PostgresQueueMachine], None], report: str
) -> None:
    with pytest.raises(AssertionError, match=report):
        replay(steps)
