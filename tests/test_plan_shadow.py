"""`weightshift plan` of a shadow rollout: shadow never serves the candidate, so `rollout
finish` refuses it. The plan says so instead of showing a finish and a hold, and counts
no GPU-hours for a hold that cannot happen."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import PROJECT
from weightshift.preview.plan import Plan, build_plan, render, render_markdown
from weightshift.rollout.capacity import finishes
from weightshift.stages import Strategy

OLD = "support-assistant/v1.4.2-424ef6470390"
NEW = "support-assistant/v1.5.0-d80719af096e"
SHADOW = "rollout.strategy=shadow"


@pytest.fixture(scope="module")
def shadow() -> Plan:
    return build_plan(PROJECT, "prod", [SHADOW])


def test_only_a_strategy_that_serves_the_candidate_everything_finishes() -> None:
    assert [s for s in Strategy if finishes(s)] == [Strategy.CANARY, Strategy.BLUE_GREEN]


def test_a_shadow_plan_has_no_hold_and_says_it_cannot_finish(shadow: Plan) -> None:
    document = shadow.to_json()
    assert document["hold"] is None
    assert document["cannotFinish"].startswith("shadow cannot finish: its last stage serves ")
    assert "Switch to blue-green or canary to ship the candidate." in document["cannotFinish"]


def test_a_shadow_plan_counts_no_hold_gpu_hours(shadow: Plan) -> None:
    # The candidate's one 4-GPU node (2 replicas for 10 % mirrored) over the 24 h bake of
    # stage 1; a static pair keeps it at full size, 3 nodes. No hold after: none follows.
    assert shadow.to_json()["extraGpuHours"] == {
        "rollout": 96.0,
        "staticPair": 288.0,
        "ratio": 0.333,
        "hours": 24.0,
        "hold": 0.0,
    }


@pytest.mark.parametrize("render_", [render, render_markdown], ids=["text", "markdown"])
def test_the_shadow_plan_text_shows_no_finish(shadow: Plan, render_: Callable[[Plan], str]) -> None:
    text = " ".join(render_(shadow).split())
    assert "After rollout finish" not in text
    assert "held warm" not in text
    assert "shadow cannot finish" in text
    assert "Switch to blue-green or canary to ship the candidate." in text
    assert "GPU-hours beyond the stable colour's own (bake times, 24 h): 96 " in text


def test_a_canary_plan_still_shows_its_finish_and_hold() -> None:
    plan = build_plan(PROJECT, "prod")
    assert plan.cannot_finish is None
    assert plan.hold is not None
    assert plan.hold["colour"] == "blue"
    assert plan.extra_gpu_hours is not None
    assert plan.extra_gpu_hours.hold == 288.0
    assert "After rollout finish: blue" in " ".join(render(plan).split())


def test_a_hold_left_by_an_earlier_finish_is_still_shown_under_shadow() -> None:
    """The hold is real (the old stable colour runs until released), whatever strategy the
    next candidate will use."""
    plan = build_plan(
        PROJECT,
        "prod",
        [
            SHADOW,
            "rollout.candidate=blue",
            "rollout.stage=0",
            f"blue.version={OLD}",
            f"green.version={NEW}",
            f"rollout.hold.version={OLD}",
            "rollout.hold.until=2026-11-27T12:00:00+00:00",
        ],
    )
    assert plan.hold is not None
    assert (plan.hold["colour"], plan.hold["until"]) == ("blue", "2026-11-27T12:00:00+00:00")
    text = " ".join(render(plan).split())
    assert "is held warm at 6 replicas (12 GPUs) until 2026-11-27T12:00:00+00:00" in text
    assert "shadow cannot finish" in text
