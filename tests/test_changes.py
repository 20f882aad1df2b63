"""A batch's changes, as listeners are given them: in order, and those of inserted jobs made
only when read."""

from __future__ import annotations

import pytest

from conveyor import Job, JobStatus
from conveyor._events import Change, Changes, Inserted
from conveyor._job import Event


def stored(job_id: int, status: JobStatus = JobStatus.PENDING) -> Job:
    return Job(job_id, "send", None, status, 5, 0, 3, 0.0, 0.0)


def test_an_inserted_ready_job_reads_as_enqueued() -> None:
    changes = Changes()
    changes += Inserted([stored(1)])
    assert list(changes) == [Change(Event.ENQUEUED, 1, "send", JobStatus.PENDING)]


def test_an_inserted_job_that_waits_for_others_reads_as_blocked() -> None:
    changes = Changes()
    changes += Inserted([stored(2, JobStatus.WAITING)])
    assert list(changes) == [Change(Event.BLOCKED, 2, "send", JobStatus.WAITING)]


def test_changes_read_in_the_order_they_were_added() -> None:
    ended = Change(Event.COMPLETED, 1, "send", JobStatus.COMPLETED)
    started = Change(Event.STARTED, 2, "send", JobStatus.RUNNING)
    changes = Changes()
    changes += [ended]
    changes += Inserted([stored(2)])
    changes += [started]
    assert [(c.event, c.job_id) for c in changes] == [
        (Event.COMPLETED, 1),
        (Event.ENQUEUED, 2),
        (Event.STARTED, 2),
    ]


def test_another_batchs_changes_are_appended_after_these() -> None:
    first, second = Changes(), Changes()
    first += Inserted([stored(1)])
    second += Inserted([stored(2), stored(3)])
    first += second
    assert (len(first), [c.job_id for c in first]) == (3, [1, 2, 3])


def test_their_length_and_truth_need_no_change_made(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Inserted) -> list[Change]:
        raise AssertionError("made the changes")

    monkeypatch.setattr(Inserted, "changes", refuse)
    changes = Changes()
    changes += Inserted([stored(1), stored(2)])
    assert (len(changes), bool(changes), bool(Changes())) == (2, True, False)


def test_an_insert_of_no_job_adds_nothing() -> None:
    changes = Changes()
    changes += Inserted([])
    assert (len(changes), list(changes)) == (0, [])


def test_changes_equal_a_list_of_the_same_changes() -> None:
    changes = Changes()
    changes += Inserted([stored(1)])
    assert changes == [Change(Event.ENQUEUED, 1, "send", JobStatus.PENDING)]
    assert changes != []


def test_they_can_be_indexed_like_a_list() -> None:
    changes = Changes()
    changes += Inserted([stored(1), stored(2)])
    assert (changes[-1].job_id, [c.job_id for c in changes[:1]]) == (2, [1])
