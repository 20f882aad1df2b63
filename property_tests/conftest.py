"""Hypothesis profiles for the property suite, chosen by the HYPOTHESIS_PROFILE variable.

``ci`` (the default) is bounded so that the whole suite stays within a few minutes on two
cores (the state machine on PostgreSQL runs fewer examples there: ``POSTGRES_EXAMPLES`` of
``test_state_machine``); ``thorough`` runs twenty times as many examples, by hand. No
deadline: examples run a real SQLite file (or PostgreSQL schema), and their virtual time says
nothing about their real time.

``CONVEYOR_MUTANT=<name>`` plants one of the bugs of ``mutants.py`` for the whole run, to see
the suite catch it (by hand, never in CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from mutants import MUTANTS

_COMMON = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

settings.register_profile("ci", _COMMON, max_examples=150, stateful_step_count=30)
settings.register_profile("thorough", _COMMON, max_examples=3000, stateful_step_count=30)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _planted_mutant() -> Iterator[None]:
    name = os.environ.get("CONVEYOR_MUTANT")
    if not name:
        yield
        return
    with MUTANTS[name]():
        yield
