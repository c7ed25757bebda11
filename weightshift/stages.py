"""Rollout strategies and their stage schedules, as data.

A strategy is a list of stages. Each stage says what share of live requests the
candidate serves, what share is mirrored to it (shadow), how long the stage must
bake, and the criterion that must hold before the next stage. The traffic
component never knows which strategy is running: it receives the ALB weights
computed here. Adding a strategy is adding an entry to ``_SCHEDULES``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

ALB_WEIGHT_MAX = 999
"""AWS: a forward action's target group weight is 0..999."""
ALB_MAX_TARGET_GROUPS = 5
"""AWS: a forward action names at most 5 target groups."""
_UNITS = 1000
"""Weights are tenths of a percent: 1 % is 10 units, the rest of 1000 goes to the other side."""

DEFAULT_MIRROR_PERCENT = 10.0
SAMPLE_SIZE_FOR_LATENCY = 10_000
"""Requests needed to detect a latency regression with 95 % confidence (seed, exercise 2)."""


class Strategy(enum.StrEnum):
    CANARY = "canary"
    BLUE_GREEN = "blue-green"
    SHADOW = "shadow"


class Colour(enum.StrEnum):
    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Colour:
        return Colour.GREEN if self is Colour.BLUE else Colour.BLUE


@dataclass(frozen=True)
class Stage:
    """One step of a rollout."""

    index: int
    served_percent: float
    """Share of live requests answered by the candidate."""
    mirror_percent: float
    """Share of live requests copied to the candidate, whose answers are discarded."""
    duration: timedelta | None
    """Minimum time in the stage before promotion; None where the stage does not bake."""
    gate: str
    """What must hold before leaving this stage."""
    min_requests: int | None = None
    """Minimum requests seen by the candidate in this stage before its metrics are trusted."""


def _canary(shadow_sample: float) -> tuple[Stage, ...]:
    hour = timedelta(hours=1)
    n = SAMPLE_SIZE_FOR_LATENCY
    if not 0.0 <= shadow_sample <= 1.0:
        raise ValueError(f"shadow sample {shadow_sample} is not a fraction: allowed 0 to 1")

    def mirrored(served: float) -> float:
        # Shadow-period monitoring: the stable colour's own share, sampled, is copied to the
        # candidate; nothing at stage 0 (no candidate traffic yet) or at 100 % (no stable).
        return (100.0 - served) * shadow_sample if 0.0 < served < 100.0 else 0.0

    return (
        Stage(0, 0.0, 0.0, None, "All tests pass (offline evaluation gates)"),
        Stage(1, 1.0, mirrored(1.0), 1 * hour, "Latency p99 < threshold", n),
        Stage(2, 5.0, mirrored(5.0), 4 * hour, "Quality metrics stable", n),
        Stage(3, 25.0, mirrored(25.0), 24 * hour, "No safety regressions", n),
        Stage(4, 50.0, mirrored(50.0), 48 * hour, "User satisfaction maintained", n),
        Stage(5, 100.0, 0.0, None, "Full rollout"),
    )


def _blue_green() -> tuple[Stage, ...]:
    return (
        Stage(
            0,
            0.0,
            0.0,
            None,
            "Standby warm: all tests pass and the candidate answers on the test route",
        ),
        Stage(1, 100.0, 0.0, None, "Switched: stable kept warm for instant rollback"),
    )


def _shadow(mirror_percent: float) -> tuple[Stage, ...]:
    return (
        Stage(0, 0.0, 0.0, None, "All tests pass; candidate answers on the test route"),
        Stage(
            1,
            0.0,
            mirror_percent,
            timedelta(hours=24),
            "Mirrored outputs agree with stable; latency and safety within thresholds",
            SAMPLE_SIZE_FOR_LATENCY,
        ),
    )


def schedule(
    strategy: Strategy,
    mirror_percent: float = DEFAULT_MIRROR_PERCENT,
    shadow_sample: float = 0.0,
) -> tuple[Stage, ...]:
    """The stages of ``strategy`` in order; ``mirror_percent`` only shapes shadow, and
    ``shadow_sample`` (``rollout.shadowSample``) only canary: at a canary stage serving
    ``s`` % it mirrors ``(100 - s) * shadow_sample`` % (the stable colour's own requests)."""
    if strategy is Strategy.CANARY:
        return _canary(shadow_sample)
    if strategy is Strategy.BLUE_GREEN:
        return _blue_green()
    return _shadow(mirror_percent)


def stage_of(
    strategy: Strategy,
    index: int,
    mirror_percent: float = DEFAULT_MIRROR_PERCENT,
    shadow_sample: float = 0.0,
) -> Stage:
    stages = schedule(strategy, mirror_percent, shadow_sample)
    if not 0 <= index < len(stages):
        raise ValueError(
            f"{index} is not a stage of strategy {strategy.value}: allowed 0 to {len(stages) - 1}"
        )
    return stages[index]


def next_stages(strategy: Strategy, index: int) -> tuple[int, ...]:
    """The stages a promotion may move to from ``index``: the next one, or none at the end."""
    last = len(schedule(strategy)) - 1
    return (index + 1,) if 0 <= index < last else ()


def is_legal_transition(strategy: Strategy, current: int, target: int) -> bool:
    """Forward by exactly one stage, or back to stage 0 (abort to standby)."""
    last = len(schedule(strategy)) - 1
    if not (0 <= current <= last and 0 <= target <= last):
        return False
    return target in next_stages(strategy, current) or (target == 0 and current != 0)


STRATEGY_MOVES: dict[tuple[Strategy, int], tuple[Strategy, int]] = {
    (Strategy.SHADOW, 1): (Strategy.CANARY, 1),
}
"""The forward moves between strategies: a shadow rollout that mirrored long enough (and
whose divergence gate passes, ``weightshift/gates/shadow.py``) becomes a canary at 1 %."""


def next_step(strategy: Strategy, index: int) -> tuple[Strategy, int] | None:
    """Where a promotion from ``index`` goes: the next stage, another strategy's stage
    (:data:`STRATEGY_MOVES`), or None at the end."""
    following = next_stages(strategy, index)
    if following:
        return strategy, following[0]
    return STRATEGY_MOVES.get((strategy, index))


def is_legal_move(strategy: Strategy, current: int, target_strategy: Strategy, target: int) -> bool:
    """:func:`is_legal_transition` within a strategy, or exactly a move of
    :data:`STRATEGY_MOVES` between strategies."""
    if target_strategy is strategy:
        return is_legal_transition(strategy, current, target)
    return STRATEGY_MOVES.get((strategy, current)) == (target_strategy, target)


@dataclass(frozen=True)
class Weights:
    """ALB forward weights (0..999) for each target group of the listener's default action."""

    blue: int
    green: int
    mirror: int = 0

    def __post_init__(self) -> None:
        for colour, weight in (("blue", self.blue), ("green", self.green), ("mirror", self.mirror)):
            if not 0 <= weight <= ALB_WEIGHT_MAX:
                raise ValueError(f"{colour} weight {weight} is outside the ALB's 0..999")
        if self.blue + self.green + self.mirror == 0:
            raise ValueError("at least one target group must have a weight above 0")

    def of(self, colour: Colour) -> int:
        return self.blue if colour is Colour.BLUE else self.green

    def reaching(self, candidate: Colour) -> int:
        """The weight of requests that reach ``candidate``: served, or mirrored to it."""
        return self.of(candidate) + self.mirror

    def percent(self, target: str) -> float:
        """The share of requests the ALB sends to ``target`` (blue, green or mirror)."""
        shares = {"blue": self.blue, "green": self.green, "mirror": self.mirror}
        return 100.0 * shares[target] / sum(shares.values())


def _units(percent: float) -> int:
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"{percent} % is not a share of traffic: allowed 0 to 100")
    return round(percent * _UNITS / 100.0)


def weights_for(
    strategy: Strategy,
    index: int,
    candidate: Colour,
    mirror_percent: float = DEFAULT_MIRROR_PERCENT,
    shadow_sample: float = 0.0,
) -> Weights:
    """The listener weights for one stage: candidate share, mirror share, stable the rest."""
    stage = stage_of(strategy, index, mirror_percent, shadow_sample)
    return split(stage.served_percent, stage.mirror_percent, candidate)


def split(served_percent: float, mirror_percent: float, candidate: Colour) -> Weights:
    """ALB weights giving the candidate ``served_percent`` and the mirror ``mirror_percent``."""
    served = _units(served_percent)
    mirrored = _units(mirror_percent)
    stable = _UNITS - served - mirrored
    if stable < 0:
        raise ValueError("served and mirrored shares add up to more than 100 %")
    clamp = min(ALB_WEIGHT_MAX, stable), min(ALB_WEIGHT_MAX, served), min(ALB_WEIGHT_MAX, mirrored)
    stable_w, candidate_w, mirror_w = clamp
    if candidate is Colour.BLUE:
        return Weights(blue=candidate_w, green=stable_w, mirror=mirror_w)
    return Weights(blue=stable_w, green=candidate_w, mirror=mirror_w)


def all_stable(candidate: Colour) -> Weights:
    """Every request to the stable colour: the state a rollback restores."""
    return split(0.0, 0.0, candidate)
