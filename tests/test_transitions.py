"""The life cycle table and the functions that execute it: pure, no event loop (DESIGN §2)."""

from __future__ import annotations

import pytest

from conveyor import Event, JobStatus
from conveyor._job import TRANSITIONS, IllegalTransition, decide, end_attempt, sources_of
from conveyor._storage import sqlite as storage


def test_decide_answers_from_the_table() -> None:
    assert decide(JobStatus.PENDING, Event.STARTED) is JobStatus.RUNNING
    assert decide(JobStatus.RUNNING, Event.RETRIED) is JobStatus.PENDING
    assert decide(None, Event.ENQUEUED) is JobStatus.PENDING


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_a_terminal_job_cannot_be_cancelled(status: JobStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"'cancelled' cannot happen to a {status} job"):
        decide(status, Event.CANCELLED)


def test_a_completed_job_cannot_be_requeued() -> None:
    with pytest.raises(IllegalTransition):
        decide(JobStatus.COMPLETED, Event.REQUEUED)


def test_a_pending_job_cannot_complete() -> None:
    with pytest.raises(IllegalTransition):
        decide(JobStatus.PENDING, Event.COMPLETED)


def test_every_status_but_the_new_job_is_reachable() -> None:
    assert set(TRANSITIONS.values()) == set(JobStatus)


def test_terminal_statuses_are_left_only_by_a_requeue() -> None:
    for (source, event), _ in TRANSITIONS.items():
        if source is not None and source.is_terminal:
            # Back to pending, or to waiting while jobs it runs after are unfinished.
            assert event in (Event.REQUEUED, Event.BLOCKED)


def test_sources_of_lists_the_statuses_an_event_may_happen_in() -> None:
    assert sources_of(Event.REQUEUED) == {JobStatus.FAILED, JobStatus.CANCELLED}
    assert sources_of(Event.CANCELLED) == {JobStatus.WAITING, JobStatus.PENDING, JobStatus.RUNNING}
    assert sources_of(Event.ENQUEUED) == frozenset()
    assert sources_of(Event.RELEASED) == {JobStatus.WAITING}


def test_a_cancel_requested_while_running_wins_over_any_ending() -> None:
    for proposed in (Event.COMPLETED, Event.RETRIED, Event.FAILED, Event.INTERRUPTED):
        assert (
            end_attempt(proposed, attempts=1, max_attempts=3, cancel_requested=True)
            is Event.CANCELLED
        )


def test_a_retry_with_no_attempts_left_fails_the_job() -> None:
    assert end_attempt(Event.RETRIED, attempts=3, max_attempts=3, cancel_requested=False) is (
        Event.FAILED
    )
    assert end_attempt(Event.RETRIED, attempts=2, max_attempts=3, cancel_requested=False) is (
        Event.RETRIED
    )


def test_a_crash_on_the_last_attempt_fails_the_job() -> None:
    assert end_attempt(Event.RECOVERED, attempts=1, max_attempts=1, cancel_requested=False) is (
        Event.FAILED
    )


def test_shutdown_gives_the_job_back_even_on_its_last_attempt() -> None:
    assert end_attempt(Event.INTERRUPTED, attempts=3, max_attempts=3, cancel_requested=False) is (
        Event.INTERRUPTED
    )


def test_an_event_that_does_not_end_an_attempt_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="does not end an attempt"):
        end_attempt(Event.STARTED, attempts=1, max_attempts=3, cancel_requested=False)


def test_the_schema_allows_exactly_the_enum_statuses() -> None:
    statuses = ", ".join(f"'{status.value}'" for status in sorted(JobStatus))
    assert f"CHECK (status IN ({statuses}))" in storage._JOBS_TABLE


def test_the_claim_matches_the_statuses_the_table_claims_from() -> None:
    (source,) = sources_of(Event.STARTED)
    assert f"status = '{source.value}'" in storage.Q_CLAIM
    assert f"SET status = '{decide(source, Event.STARTED).value}'" in storage.Q_CLAIM
