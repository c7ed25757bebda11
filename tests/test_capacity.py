"""GPU capacity follows the rollout (issue 10): replicas per stage, capacity before traffic
going up, weight before capacity going down, a rollback record keeps the pods, the hold
after finish, and the GPU-hours the plan reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import PROJECT, listener_weights, synth
from weightshift.cli import main
from weightshift.config import CapacityConfig, ConfigError, load
from weightshift.preview.plan import build_plan, diff
from weightshift.preview.synth import Graph, apply_overrides, stack_config, synthesize
from weightshift.rollout import capacity
from weightshift.rollout.record import RollbackRecord
from weightshift.stages import Strategy, schedule

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
OLD = "support-assistant/v1.4.2-424ef6470390"
NEW = "support-assistant/v1.5.0-d80719af096e"


def replicas(graph: Graph, colour: str) -> int:
    spec: dict[str, Any] = graph.named(colour, "Deployment").inputs["spec"]
    return int(spec["replicas"])


def depends(graph: Graph, name: str, kind: str, on: str, on_kind: str) -> bool:
    return graph.named(on, on_kind).urn in graph.named(name, kind).dependencies


# --- sizing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "mirror", "expected"),
    [
        (Strategy.CANARY, 10.0, [1, 1, 1, 2, 4, 6]),
        (Strategy.BLUE_GREEN, 10.0, [6, 6]),
        (Strategy.SHADOW, 10.0, [1, 1]),
        (Strategy.SHADOW, 15.0, [1, 2]),
    ],
)
def test_candidate_replicas_follow_its_share_with_headroom_and_a_floor(
    strategy: Strategy, mirror: float, expected: list[int]
) -> None:
    settings = CapacityConfig()
    found = [
        capacity.candidate_replicas(strategy, stage, 6, settings)
        for stage in schedule(strategy, mirror)
    ]
    assert found == expected


def test_throughput_sizing_uses_the_peak_and_one_replicas_throughput() -> None:
    settings = CapacityConfig(
        sizing="throughput", peak_requests_per_second=100, replica_requests_per_second=20
    )
    found = [
        capacity.candidate_replicas(Strategy.CANARY, stage, 6, settings)
        for stage in schedule(Strategy.CANARY)
    ]
    # load 5 replicas, 25 % headroom: 1 % -> 1 (floor), 25 % -> 1.5625 -> 2, 50 % -> 4,
    # 100 % -> 6.25, capped at the colour's full size.
    assert found == [1, 1, 1, 2, 4, 6]


def test_replicas_round_up_to_whole_nodes() -> None:
    """Two replicas fill a 4-GPU node of 2-GPU replicas: a node's GPUs are paid for anyway,
    and the second replica keeps serving when one fails."""
    found = [
        capacity.candidate_replicas(Strategy.CANARY, stage, 6, CapacityConfig(), per_node=2)
        for stage in schedule(Strategy.CANARY)
    ]
    assert found == [2, 2, 2, 2, 4, 6]
    # Never above the colour's full size, even when a node would hold more.
    assert (
        capacity.candidate_replicas(
            Strategy.CANARY, schedule(Strategy.CANARY)[5], 5, CapacityConfig(), per_node=4
        )
        == 5
    )


def test_floor_and_headroom_are_configurable() -> None:
    settings = CapacityConfig(floor=2, headroom_percent=100)
    found = [
        capacity.candidate_replicas(Strategy.CANARY, stage, 6, settings)
        for stage in schedule(Strategy.CANARY)
    ]
    assert found == [2, 2, 2, 3, 6, 6]


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["rollout.capacity.sizing=throughput"], "sizing throughput needs peakRequestsPerSecond"),
        (
            ["rollout.capacity.peakRequestsPerSecond=50"],
            "size only sizing throughput",
        ),
        (
            [
                "rollout.capacity.sizing=throughput",
                "rollout.capacity.peakRequestsPerSecond=200",
                "rollout.capacity.replicaRequestsPerSecond=20",
            ],
            "blue.replicas is 6, but rollout.capacity says the peak",
        ),
        (["rollout.capacity.floor=0"], "rollout.capacity.floor"),
        (["rollout.capacity.headroomPercent=yes"], "rollout.capacity.headroomPercent"),
    ],
)
def test_capacity_config_errors_name_the_field(sets: list[str], message: str) -> None:
    values = apply_overrides(stack_config(PROJECT, "prod"), sets)
    with pytest.raises(ConfigError, match=message):
        load(values, source="test")


# --- the program ----------------------------------------------------------------------------


def test_the_stable_colour_keeps_full_size_and_the_candidate_follows_each_stage() -> None:
    # prod: 2-GPU replicas on 4-GPU nodes, so the candidate comes in pairs.
    for stage, expected in enumerate([2, 2, 2, 2, 4, 6]):
        graph = synth(f"rollout.stage={stage}")
        assert replicas(graph, "blue") == 6
        assert replicas(graph, "green") == expected
        inference = graph.outputs["inference"]
        assert inference["green"]["replicas"] == expected
        assert inference["green"]["gpus"] == 2 * expected


@pytest.mark.parametrize("stage", [1, 2, 3, 4, 5])
def test_going_up_the_listener_waits_for_the_candidates_deployment(stage: int) -> None:
    graph = synth(f"rollout.stage={stage}")
    assert depends(graph, "traffic-https", "Listener", "green", "Deployment")
    assert not depends(graph, "green", "Deployment", "traffic-https", "Listener")
    # The stable colour's pods do not hold the listener back.
    assert not depends(graph, "traffic-https", "Listener", "blue", "Deployment")


def test_the_shadow_mirror_waits_for_the_candidates_deployment() -> None:
    graph = synth("rollout.strategy=shadow", "rollout.stage=1")
    assert listener_weights(graph)["mirror"] > 0
    assert depends(graph, "traffic-https", "Listener", "green", "Deployment")


def test_going_down_weight_leaves_before_capacity() -> None:
    """Stage 0 is reached only by abort, ack or finish (promotion moves one stage up): the
    candidate's Deployment waits for the listener, so its pods go after their weight."""
    graph = synth("rollout.stage=0")
    assert depends(graph, "green", "Deployment", "traffic-https", "Listener")
    assert not depends(graph, "traffic-https", "Listener", "green", "Deployment")
    assert not depends(graph, "blue", "Deployment", "traffic-https", "Listener")


def test_a_rollback_record_keeps_the_candidates_capacity_and_removes_weight_first() -> None:
    record = RollbackRecord(
        incident="4f1c0a9e3b2d7c65",
        candidate=NEW,
        alarm="support-assistant-prod-green-rollback",
        reason="errors went to ALARM",
        stage=4,
        at="2026-11-25T09:12:04+00:00",
    )
    values = apply_overrides(stack_config(PROJECT, "prod"), ["rollout.stage=4"])
    graph = synthesize(PROJECT, "prod", values, record=record)
    assert listener_weights(graph) == {"blue": 999, "green": 0}
    assert replicas(graph, "green") == 4  # stage 4's, kept for the investigation
    # The record changes nothing on the candidate's pods, and nothing waits for them (they
    # may be the broken ones): the same stage marker, and no await.
    annotations = graph.named("green", "Deployment").inputs["metadata"]["annotations"]
    assert annotations["weightshift.io/stage"] == "canary 4"
    assert annotations["pulumi.com/skipAwait"] == "true"
    live = synth("rollout.stage=4").named("green", "Deployment").inputs["metadata"]
    assert "pulumi.com/skipAwait" not in live["annotations"]  # going up: the listener waits
    (action,) = graph.named("traffic-https").inputs["defaultActions"]
    assert action["forward"]["stickiness"]["enabled"] is False
    assert depends(graph, "green", "Deployment", "traffic-https", "Listener")


def _after_finish(*sets: str) -> Graph:
    """The stack as `rollout finish` leaves it: green (the new version) is stable, blue
    (the old one) the candidate slot at stage 0, held."""
    return synth(
        "rollout.candidate=blue",
        "rollout.stage=0",
        f"blue.version={OLD}",
        f"green.version={NEW}",
        f"rollout.hold.version={OLD}",
        *sets,
    )


UNTIL = f"rollout.hold.until={(NOW + timedelta(hours=3)).isoformat()}"


def test_after_finish_the_old_stable_colour_is_held_then_released() -> None:
    held = _after_finish(UNTIL)
    assert replicas(held, "blue") == 6
    assert replicas(held, "green") == 6
    assert listener_weights(held) == {"blue": 0, "green": 999}
    # The release is config (rollout release), never the clock: a preview and its update,
    # and two syntheses of one config, agree.
    assert _after_finish(UNTIL).to_json() == held.to_json()
    released = _after_finish(UNTIL, "rollout.hold.released=true")
    assert replicas(released, "blue") == 0
    assert listener_weights(released) == {"blue": 0, "green": 999}


def test_the_hold_size_is_configurable() -> None:
    graph = _after_finish(UNTIL, "rollout.capacity.holdReplicas=2")
    assert replicas(graph, "blue") == 2


def test_a_hold_for_another_version_does_not_apply() -> None:
    """A new release put on the held colour ends the hold: it is sized as a candidate."""
    graph = synth("rollout.stage=0", f"rollout.hold.version={OLD}", UNTIL)
    assert replicas(graph, "green") == 2


# --- the plan -------------------------------------------------------------------------------


def test_plan_shows_replicas_gpus_and_gpu_hours_against_a_static_pair() -> None:
    plan = build_plan(PROJECT, "prod").to_json()
    assert [stage["replicas"] for stage in plan["stages"]] == [
        {"blue": 6, "green": green} for green in [2, 2, 2, 2, 4, 6]
    ]
    assert [stage["gpus"]["green"] for stage in plan["stages"]] == [4, 4, 4, 4, 8, 12]
    hours = plan["extraGpuHours"]
    # In whole 4-GPU nodes (2 replicas each): the candidate holds 1 node for 1 + 4 + 24 h
    # and 2 nodes for 48 h = 500; the hold: 3 nodes x 4 GPUs x 24 h = 288. Static pair:
    # 3 nodes x 4 GPUs x 77 h + 288 = 1212.
    assert hours == {
        "rollout": 788.0,
        "staticPair": 1212.0,
        "ratio": 0.65,
        "hours": 101.0,
        "hold": 288.0,
    }
    assert hours["ratio"] <= 0.70  # the target
    assert plan["hold"] == {
        "colour": "blue",
        "version": OLD,
        "replicas": 6,
        "gpus": 12,
        "hours": 24.0,
        "until": None,
        "released": False,
    }


def test_plan_lists_the_candidates_deployment_where_its_replicas_change() -> None:
    plan = build_plan(PROJECT, "prod")
    changed = {row.index: sorted((c.name, c.action) for c in row.changes) for row in plan.rows[1:]}
    # Every stage updates the candidate's Deployment: its stage marker (pulumi-kubernetes
    # then checks its pods are ready before the listener moves), and 2 -> 4 -> 6 replicas.
    assert all(("green", "update") in changed[i] for i in (1, 2, 3, 4, 5))
    replicas_changed = [
        any(c.name == "green" and "spec" in c.keys for c in row.changes) for row in plan.rows[1:]
    ]
    assert replicas_changed == [False, False, False, True, True]


def test_plan_text_shows_the_replicas_and_the_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "prod"]) == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert "pods b/g" in text
    assert "6/2" in text
    assert "6/4" in text
    assert "held warm at 6 replicas (12 GPUs) for 24 h" in text
    assert "788 with capacity following the rollout, 1,212 for a static pair (65 %)" in text
    assert main(["plan", "--stack", "prod", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extraGpuHours"]["ratio"] == 0.65


def test_within_the_hold_a_late_regression_is_rolled_back_by_moving_only_the_listener() -> None:
    held = _after_finish(UNTIL)
    back = _after_finish(UNTIL, "rollout.stage=5")
    assert listener_weights(back) == {"blue": 999, "green": 0}
    changes = {c.name: c for c in diff(held, back)}
    # The held pods already carry everything: only their stage marker and await change.
    assert set(changes["blue"].summary) == {
        "stage canary 0 → canary 5",
        "skipAwait true → (none)",  # the listener waits for them
    }
    assert "traffic-https" in changes


def test_the_await_the_listener_relies_on_counts_every_replica() -> None:
    """pulumi-kubernetes calls a Deployment ready when it is Available, which allows
    ``maxUnavailable`` missing pods: the listener waits for all of them only with 0."""
    graph = synth("rollout.stage=4")
    strategy = graph.named("green", "Deployment").inputs["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    listener = graph.named("traffic-https", "Listener")
    bindings = [graph.named("green", "TargetGroupBinding").urn]
    assert bindings
    assert set(bindings) <= set(listener.dependencies)


def test_every_colours_target_group_is_in_use_so_readiness_gates_can_pass() -> None:
    """The load balancer controller sets a pod's readiness gate only once its target is
    healthy, and a target group no listener or rule uses never reports healthy: at stage 0
    the candidate's pods would never be ready, and the listener would wait for them forever.
    The test-route rules keep both colours' target groups in use at every stage."""
    graph = synth("rollout.stage=0")
    arns = graph.outputs["targetGroupArns"]
    routed = {
        r.inputs["actions"][0]["targetGroupArn"]
        for r in graph.resources
        if r.type == "aws:lb/listenerRule:ListenerRule"
    }
    assert {arns["blue"], arns["green"]} <= routed


def test_a_colour_never_shares_a_node_with_the_other_and_packs_its_own() -> None:
    graph = synth("rollout.stage=3")
    for colour, other in (("green", "blue"), ("blue", "green")):
        spec = graph.named(colour, "Deployment").inputs["spec"]["template"]["spec"]
        (away,) = spec["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert away["topologyKey"] == "kubernetes.io/hostname"
        assert away["labelSelector"]["matchLabels"]["weightshift.io/colour"] == other
        assert away["namespaces"] == [f"support-assistant-prod-{other}"]
        (near,) = spec["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert (
            near["podAffinityTerm"]["labelSelector"]["matchLabels"]["weightshift.io/colour"]
            == colour
        )
        keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone"}  # no spreading over nodes


def test_a_colours_size_changes_its_replicas_not_its_pod_template() -> None:
    """A template change rolls every pod of a colour (hours for a GPU stack): resizing must
    only scale."""
    before = synth("rollout.stage=0").named("blue", "Deployment").inputs["spec"]
    after = synth("rollout.stage=0", "blue.replicas=8").named("blue", "Deployment").inputs["spec"]
    assert (before["replicas"], after["replicas"]) == (6, 8)
    assert before["template"] == after["template"]
