"""Hypothesis profiles for the property suite, chosen by the HYPOTHESIS_PROFILE variable.

``ci`` (the default) is bounded so that the whole suite stays within a few minutes on two
cores; ``thorough`` runs twenty times as many examples, by hand. No deadline: examples
run a real SQLite file, and their virtual time says nothing about their real time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

settings.register_profile("ci", _COMMON, max_examples=150, stateful_step_count=30)
settings.register_profile("thorough", _COMMON, max_examples=3000, stateful_step_count=30)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
