"""rollout.shadowSample: during a canary's stages between 0 and 100 %, the stable colour's
load balancer share is sampled into the ``mirror`` target group, answered by the stable
colour's mirror listener and copied to the candidate (shadow-period monitoring): the
weights, the graph (listener, target group, binding, rollback, capacity), the plan, and the
policy pack at every stage."""

from __future__ import annotations

import functools

import pytest

from policies.rules import POLICIES
from tests.conftest import PROJECT, listener_weights, synth
from weightshift.preview.plan import build_plan, render
from weightshift.preview.policy import (
    BASE_RULE,
    PackConfig,
    check,
    check_every_stage,
    load_policies,
)
from weightshift.preview.synth import Graph
from weightshift.stages import Colour, Strategy, schedule, split, weights_for

BY_NAME = {policy.name: policy for policy in POLICIES}


def test_the_mirror_is_the_sampled_stable_share_at_canary_stages_with_traffic() -> None:
    shares = [(s.served_percent, s.mirror_percent) for s in schedule(Strategy.CANARY, 10, 0.1)]
    assert shares == [
        (0.0, 0.0),
        (1.0, pytest.approx(9.9)),
        (5.0, pytest.approx(9.5)),
        (25.0, pytest.approx(7.5)),
        (50.0, pytest.approx(5.0)),
        (100.0, 0.0),
    ]
    weights = [weights_for(Strategy.CANARY, i, Colour.GREEN, 10, 0.1) for i in range(6)]
    assert [(w.blue, w.green, w.mirror) for w in weights] == [
        (999, 0, 0),
        (891, 10, 99),
        (855, 50, 95),
        (675, 250, 75),
        (450, 500, 50),
        (0, 999, 0),
    ]
    # What the candidate receives, served or mirrored, and what reaches the stable colour.
    assert [w.reaching(Colour.GREEN) for w in weights] == [0, 109, 145, 325, 550, 999]
    # Without a sample, and for the other strategies, nothing changes.
    for strategy in Strategy:
        assert schedule(strategy, 10) == schedule(strategy, 10, 0.0)
    assert schedule(Strategy.SHADOW, 10, 0.5) == schedule(Strategy.SHADOW, 10)
    # Everything mirrored: the stable colour answers the whole of its share by its mirror
    # listener.
    assert weights_for(Strategy.CANARY, 1, Colour.BLUE, 10, 1.0) == split(1.0, 99.0, Colour.BLUE)
    with pytest.raises(ValueError, match="not a fraction"):
        schedule(Strategy.CANARY, 10, 1.5)


@functools.cache
def staged(*overrides: str) -> Graph:
    return synth(*overrides)


SAMPLED = ("rollout.shadowSample=0.1",)


def test_a_canary_stage_with_a_sample_mirrors_through_the_stable_colour() -> None:
    graph = staged(*SAMPLED, "rollout.stage=2")
    assert listener_weights(graph) == {"blue": 855, "green": 50, "mirror": 95}
    mirror = graph.outputs["targetGroupArns"]["mirror"]
    # The stable colour's mirror listener is registered in the mirror target group: the
    # mirrored share reaches pods (listener-weight-reaches-targets).
    bindings = {
        r.name: r.inputs["spec"]
        for r in graph.of_type("kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding")
    }
    assert bindings["blue-mirror"]["targetGroupARN"] == mirror
    assert bindings["blue-mirror"]["serviceRef"] == {"name": "inference", "port": 8001}
    assert "green-mirror" not in bindings
    # A rollback empties the mirror too, and reads the stage off served plus mirrored weight.
    settings = graph.outputs["rollback"]["settings"]
    assert settings["MIRROR_TARGET_GROUP_ARN"] == mirror
    assert settings["STAGE_WEIGHTS"] == "0,109,145,325,550,999"
    assert graph.outputs["rollback"]["actionsEnabled"] is True


def test_the_candidate_is_sized_for_the_copies_it_answers() -> None:
    plain = staged("rollout.stage=3")
    sampled = staged("rollout.shadowSample=0.5", "rollout.stage=3")
    # 25 % served, plus (75 %) * 0.5 mirrored: 62.5 % of the load.
    assert listener_weights(sampled) == {"blue": 375, "green": 250, "mirror": 375}
    replicas = {
        name: graph.outputs["inference"]["green"]["replicas"]
        for name, graph in (("plain", plain), ("sampled", sampled))
    }
    assert replicas["sampled"] > replicas["plain"]


def test_without_a_sample_the_canary_graph_has_no_mirror() -> None:
    graph = staged("rollout.stage=2")
    assert set(graph.outputs["targetGroupArns"]) == {"blue", "green"}
    assert "MIRROR_TARGET_GROUP_ARN" not in graph.outputs["rollback"]["settings"]


def test_plan_shows_the_mirror_per_stage() -> None:
    plan = build_plan(PROJECT, "prod", list(SAMPLED))
    assert [round(row.weights.percent("mirror"), 1) for row in plan.rows] == [
        0.0,
        9.9,
        9.5,
        7.5,
        5.0,
        0.0,
    ]
    text = render(plan, columns=200)
    assert "% mirror" in text
    assert "mirror %: answered by the stable colour" in text


def test_the_policy_pack_passes_every_stage_with_a_sample() -> None:
    results = check_every_stage(PROJECT, "prod", load_policies(PROJECT), list(SAMPLED))
    assert [r for r in results if r.refused] == []
    assert {(r.strategy, r.stage): r.violations for r in results if r.violations} == {}
    assert len(results) == 10


def test_a_mirror_weight_beyond_the_stable_share_is_no_stage() -> None:
    """The rule reads the sample off the mirror weight, as it reads a shadow's mirrorPercent;
    a hand-edited split that no sample gives is refused."""
    from tests.test_policies import stack_violations, with_weights

    rule = "listener-weights-are-a-stage"
    graph = staged(*SAMPLED, "rollout.stage=2")
    assert stack_violations(rule, graph) == []
    # Another sample is still a stage (the stable colour answers the mirrored copies).
    assert stack_violations(rule, with_weights(graph, blue=760, green=50, mirror=190)) == []
    (found,) = stack_violations(rule, with_weights(graph, blue=850, green=60, mirror=90))
    assert "which is not stage 2 of canary" in found


def test_promotion_from_shadow_1_to_canary_1_is_one_step_for_the_policy() -> None:
    def base(strategy: str, stage: int) -> PackConfig:
        return PackConfig().with_settings(
            BASE_RULE,
            {
                "baseStrategy": strategy,
                "baseStage": stage,
                "baseCandidate": "green",
                "baseVersion": "support-assistant/v1.5.0-d80719af096e",
            },
        )

    def one_step(graph: Graph, config: PackConfig) -> list[str]:
        return [v.message for v in check(graph, [BY_NAME[BASE_RULE]], config)]

    assert one_step(staged("rollout.stage=1"), base("shadow", 1)) == []
    (jump,) = one_step(staged("rollout.stage=2"), base("shadow", 1))
    assert "moves from shadow stage 1 to canary stage 2" in jump
    (back,) = one_step(staged("rollout.strategy=shadow", "rollout.stage=1"), base("canary", 1))
    assert "a strategy changes only at stage 0" in back


def _stickiness(graph: Graph) -> object:
    (listener,) = [r for r in graph.resources if r.name == "traffic-https"]
    return listener.inputs["defaultActions"][0]["forward"].get("stickiness")


def test_stickiness_is_off_while_requests_are_mirrored() -> None:
    """A sticky client stays on the group it first drew (the ALB's target group stickiness
    overrides the weights), so it would be mirrored always or never: the pairs would be
    sessions, not a random sample of requests."""
    assert _stickiness(staged("rollout.stage=2")) == {"duration": 900, "enabled": True}
    sticky = _stickiness(staged(*SAMPLED, "rollout.stage=2"))
    assert not (isinstance(sticky, dict) and sticky.get("enabled"))


def test_a_sample_above_half_is_refused() -> None:
    from weightshift.cli import main

    assert main(["synth", "--set", "rollout.shadowSample=0.6", "--out", "/dev/null"]) == 2


def test_a_candidate_whose_evaluation_failed_gets_no_copies_of_users_prompts() -> None:
    from weightshift.preview.synth import StageBlocked

    # The example report's toxicity is 8 of 2,000: a ceiling of 0.001 fails it.
    with pytest.raises(StageBlocked, match="evaluation is blocked"):
        staged(
            "rollout.strategy=shadow",
            "rollout.stage=1",
            "rollout.thresholds.maxToxicity=0.001",
        )
