"""The reference model and conveyor share one life cycle (DESIGN §2)."""

from __future__ import annotations

from conveyor._job import TRANSITIONS

from model import LEGAL


def test_conveyor_s_table_makes_exactly_the_moves_of_design() -> None:
    assert {(source, target) for (source, _), target in TRANSITIONS.items()} == LEGAL
