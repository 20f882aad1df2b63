"""The model's two orders of a tie: a claim at the instant attempts end (no event loop)."""

from __future__ import annotations

from model import Behaviour, HandlerLimits, Model, Spec

SLEEP_LONG = Behaviour("sleep", duration=100.5)
KEYED_AND_RATED = {"alpha": HandlerLimits(key_concurrency=1, rate=(1, 3.0))}


def keyed(priority: int, delay: float, key: str, timeout: float | None = None) -> Spec:
    return Spec("alpha", 0, priority, delay, 1, timeout, None, (SLEEP_LONG,) * 4, (), (), key)


def model_at_the_tie() -> Model:
    """Job 1 (key a1) starts at 1 and times out at 4, when the rate limit's window that its
    start opened ends; at 4 job 2 (key a1, the better priority) and job 3 (key a2) wait."""
    model = Model(workers=4, limits=KEYED_AND_RATED)
    model.enqueue([keyed(4, 1.0, "a1", timeout=3.0), keyed(1, 2.0, "a1"), keyed(9, 3.0, "a2")])
    model.advance_to(3.5)
    return model


def started_at(model: Model, time: float) -> list[int]:
    return [start.job_id for start in model.starts if start.time == time]


def test_attempts_that_end_at_an_instant_free_their_limits_for_its_claim() -> None:
    model = model_at_the_tie()
    model.advance_to(4.0)
    assert started_at(model, 4.0) == [2]


def test_a_claim_made_before_the_ends_at_its_instant_passes_over_their_keys() -> None:
    model = model_at_the_tie()
    model.advance_to(4.0, claim_before_ends=True)
    assert started_at(model, 4.0) == [3]
