"""A job's value as the outside world takes it: JSON-ready, for web routes and the API."""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs
import pytest

import conveyor


def test_a_job_as_a_dict_holds_every_field_ready_for_json() -> None:
    job = conveyor.Job(
        id=7,
        name="resize",
        payload={"path": "a.png"},
        status=conveyor.JobStatus.COMPLETED,
        priority=3,
        attempts=1,
        max_attempts=3,
        run_at=1.5,
        created_at=1.0,
        result=[1, 2],
        after=(3, 4),
    )
    as_dict = job.to_dict()
    stored = [field.name for field in attrs.fields(conveyor.Job)]
    assert list(as_dict) == [name for name in stored if name != "trace_context"]
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert (as_dict["status"], as_dict["after"]) == ("completed", [3, 4])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "handler name must be a non-empty str"),
        ({"name": "a\x00b"}, "handler name must not hold a NUL"),
        ({"priority": True}, "priority must be an int"),
        ({"priority": 0}, "priority must be within 1..10"),
        ({"delay": -1}, "delay must be >= 0"),
        ({"run_at": 5.0}, "run_at must be epoch seconds"),
        ({"max_attempts": 0}, "max_attempts must be an int within"),
        ({"timeout": float("inf")}, "timeout must be a finite number"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty str"),
        ({"concurrency_key": "\ud800"}, "concurrency_key must be Unicode text"),
        ({"after": "12"}, "after must be a list of job ids"),
        ({"after": [0]}, r"after holds job ids \(ints >= 1\)"),
        ({"delay": 1, "run_at": 2e9}, "give delay or run_at, not both"),
    ],
)
def test_a_job_spec_refuses_a_bad_field_by_name(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(conveyor.InvalidArgument, match=message):
        conveyor.JobSpec(**{"name": "noop", **fields})


def test_a_job_spec_takes_int_subclasses_and_lists_of_ids() -> None:
    class Level(enum.IntEnum):
        HIGH = 1

    spec = conveyor.JobSpec("noop", priority=Level.HIGH, after=[3, 2, 3], max_attempts=2)
    assert (spec.priority, spec.after, spec.max_attempts) == (1, (3, 2), 2)
    assert conveyor.JobSpec("noop", after=[]).after == ()
