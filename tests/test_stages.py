"""Strategies as data: schedules, weights in ALB units, legal transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weightshift.stages import (
    ALB_WEIGHT_MAX,
    Colour,
    Strategy,
    Weights,
    all_stable,
    is_legal_transition,
    next_stages,
    schedule,
    split,
    stage_of,
    weights_for,
)


def test_canary_is_the_seed_ramp() -> None:
    stages = schedule(Strategy.CANARY)
    assert [s.served_percent for s in stages] == [0, 1, 5, 25, 50, 100]
    hours = [s.duration / timedelta(hours=1) if s.duration else None for s in stages]
    assert hours == [None, 1, 4, 24, 48, None]
    assert [s.gate for s in stages] == [
        "All tests pass (offline evaluation gates)",
        "Latency p99 < threshold",
        "Quality metrics stable",
        "No safety regressions",
        "User satisfaction maintained",
        "Full rollout",
    ]


@pytest.mark.parametrize(
    ("stage", "green", "blue"),
    [(0, 0, 999), (1, 10, 990), (2, 50, 950), (3, 250, 750), (4, 500, 500), (5, 999, 0)],
)
def test_canary_weights_for_every_stage(stage: int, green: int, blue: int) -> None:
    assert weights_for(Strategy.CANARY, stage, Colour.GREEN) == Weights(blue=blue, green=green)
    assert weights_for(Strategy.CANARY, stage, Colour.BLUE) == Weights(blue=green, green=blue)


def test_blue_green_is_standby_then_switch() -> None:
    assert weights_for(Strategy.BLUE_GREEN, 0, Colour.GREEN) == Weights(blue=999, green=0)
    assert weights_for(Strategy.BLUE_GREEN, 1, Colour.GREEN) == Weights(blue=0, green=999)


def test_shadow_serves_nothing_and_mirrors_a_fraction() -> None:
    assert weights_for(Strategy.SHADOW, 0, Colour.GREEN, 10) == Weights(blue=999, green=0, mirror=0)
    stage_one = weights_for(Strategy.SHADOW, 1, Colour.GREEN, 10)
    assert stage_one == Weights(blue=900, green=0, mirror=100)
    assert stage_one.percent("mirror") == pytest.approx(10)
    assert weights_for(Strategy.SHADOW, 1, Colour.BLUE, 2.5) == Weights(
        blue=0, green=975, mirror=25
    )


@given(
    st.sampled_from(list(Strategy)),
    st.sampled_from(list(Colour)),
    st.floats(min_value=0.1, max_value=100),
)
def test_weights_are_alb_legal_and_give_the_stage_share(
    strategy: Strategy, candidate: Colour, mirror: float
) -> None:
    for stage in schedule(strategy, mirror):
        w = weights_for(strategy, stage.index, candidate, mirror)
        assert all(0 <= x <= ALB_WEIGHT_MAX for x in (w.blue, w.green, w.mirror))
        assert w.percent(candidate.value) == pytest.approx(stage.served_percent, abs=0.05)
        assert w.percent("mirror") == pytest.approx(stage.mirror_percent, abs=0.05)


def test_rollback_weights_send_everything_to_stable() -> None:
    assert all_stable(Colour.GREEN) == Weights(blue=999, green=0)
    assert all_stable(Colour.BLUE) == Weights(blue=0, green=999)


def test_split_refuses_shares_over_100_percent() -> None:
    with pytest.raises(ValueError, match="more than 100"):
        split(60, 50, Colour.GREEN)
    with pytest.raises(ValueError, match="share of traffic"):
        split(101, 0, Colour.GREEN)


def test_weights_refuse_values_the_alb_rejects() -> None:
    with pytest.raises(ValueError, match=r"0\.\.999"):
        Weights(blue=1000, green=0)
    with pytest.raises(ValueError, match="at least one"):
        Weights(blue=0, green=0)


@pytest.mark.parametrize("strategy", list(Strategy))
def test_promotion_moves_one_stage_forward_and_stops_at_the_end(strategy: Strategy) -> None:
    last = len(schedule(strategy)) - 1
    for index in range(last):
        assert next_stages(strategy, index) == (index + 1,)
        assert is_legal_transition(strategy, index, index + 1)
        assert not is_legal_transition(strategy, index, index + 2)
    assert next_stages(strategy, last) == ()
    assert is_legal_transition(strategy, last, 0)
    assert not is_legal_transition(strategy, 0, 0)
    assert not is_legal_transition(strategy, 0, last + 1)


def test_unknown_stage_names_the_allowed_range() -> None:
    with pytest.raises(ValueError, match="allowed 0 to 5"):
        stage_of(Strategy.CANARY, 6)
