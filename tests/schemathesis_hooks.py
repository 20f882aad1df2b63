"""Schemathesis hooks for tests/test_service_schemathesis.py (``SCHEMATHESIS_HOOKS``)."""

from __future__ import annotations

from typing import Any

import schemathesis

LONGEST_POLL = 1.0
"""Seconds a generated long poll may wait: less than the client's request timeout."""


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A long poll (``/jobs/{id}/wait``, ``/jobs/progress``) on a stored job that is not
    finished holds its request for its ``timeout`` (up to 60 s): cap a valid one at
    :data:`LONGEST_POLL`, so that it answers before the client gives up. An invalid one goes as
    generated."""
    query = case.query
    if not query or "timeout" not in query:
        return
    try:
        seconds = float(query["timeout"])
    except (TypeError, ValueError):
        return
    if seconds > LONGEST_POLL:
        query["timeout"] = LONGEST_POLL
