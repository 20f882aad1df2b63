"""A job's value as the outside world takes it: JSON-ready, for web routes and the API."""

from __future__ import annotations

import json

import attrs

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
