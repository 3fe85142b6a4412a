"""converter.budget: how the time budget sizes eval samples, races and the search's own share."""

from __future__ import annotations

from converter import budget


def test_a_slow_model_is_judged_on_fewer_samples_but_never_below_the_floor() -> None:
    fast = budget.TimeBudget(60.0, call_seconds=0.001)
    slow = budget.TimeBudget(60.0, call_seconds=0.5)
    assert budget.plan_eval_samples(fast, 512) == 512
    assert budget.plan_eval_samples(slow, 512) == budget.MIN_EVAL_SAMPLES
    assert budget.plan_eval_samples(slow, 8) == 8


def test_races_shrink_with_the_call_time_and_the_search_leaves_a_reserve() -> None:
    b = budget.TimeBudget(60.0, call_seconds=0.05, eval_samples=32)
    assert budget.MIN_RACE_ROUNDS <= b.race_rounds(6) < budget.MAX_RACE_ROUNDS
    assert budget.TimeBudget(60.0, call_seconds=1e-5).race_rounds(6) == budget.MAX_RACE_ROUNDS
    assert 1.0 <= b.search_seconds() < 60.0 - budget.PACKAGE_SECONDS
    assert b.search_seconds() + b.reserve_seconds() == 60.0


def test_outside_a_conversion_the_defaults_hold() -> None:
    assert budget.active() is None
    assert budget.race_rounds(5, 30) == 30
    assert budget.samples_within(0.1, 256, 16) == 256
    assert budget.candidate_seconds() == 0.0
    with budget.running(budget.TimeBudget(10.0, call_seconds=0.1, eval_samples=16)):
        assert budget.race_rounds(5, 30) < 30
        assert budget.samples_within(0.1, 256, 16) == 16
        assert budget.candidate_seconds() > 0


def test_the_next_candidate_is_expected_to_take_as_long_as_the_longest_so_far() -> None:
    import io
    import time

    from converter import progress

    tracker = progress.Progress(60.0, stream=io.StringIO(), tty=False)
    with (
        budget.running(budget.TimeBudget(60.0, call_seconds=1e-4, eval_samples=16)),
        progress.tracking(tracker),
    ):
        planned = budget.candidate_seconds()
        progress.candidate("slow")
        time.sleep(0.3)
        progress.candidate("next")
        assert budget.candidate_seconds() >= 0.3 > planned
