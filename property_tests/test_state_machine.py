"""The real queue against the reference model, under any interleaving Hypothesis can find."""

from __future__ import annotations

import pytest

from machine import QueueMachine

TestQueueMatchesTheModel = QueueMachine.TestCase
# Generation stays well within a minute; shrinking a failure may take Hypothesis a few more.
TestQueueMatchesTheModel.pytestmark = [pytest.mark.timeout(900)]  # type: ignore[attr-defined]
