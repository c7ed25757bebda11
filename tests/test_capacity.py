"""GPU capacity follows the rollout (issue 10): replicas per stage, capacity before traffic
going up, weight before capacity going down, a rollback record keeps the pods, the hold
after finish, and the GPU-hours the plan reports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import PROJECT, listener_weights, synth
from weightshift import capacity
from weightshift.cli import main
from weightshift.config import CapacityConfig, ConfigError, load
from weightshift.plan import build_plan, diff
from weightshift.rollback_record import RollbackRecord
from weightshift.stages import Strategy, schedule
from weightshift.synth import Graph, apply_overrides, stack_config, synthesize

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
OLD = "support-assistant/v1.4.2-424ef6470390"
NEW = "support-assistant/v1.5.0-d80719af096e"


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "now", lambda: NOW)


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
    for stage, expected in enumerate([1, 1, 1, 2, 4, 6]):
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


def test_after_finish_the_old_stable_colour_is_held_then_released() -> None:
    held = _after_finish(f"rollout.hold.until={(NOW + timedelta(hours=3)).isoformat()}")
    assert replicas(held, "blue") == 6
    assert replicas(held, "green") == 6
    assert listener_weights(held) == {"blue": 0, "green": 999}
    released = _after_finish(f"rollout.hold.until={(NOW - timedelta(seconds=1)).isoformat()}")
    assert replicas(released, "blue") == 0
    assert listener_weights(released) == {"blue": 0, "green": 999}


def test_the_hold_size_is_configurable() -> None:
    graph = _after_finish(
        f"rollout.hold.until={(NOW + timedelta(hours=3)).isoformat()}",
        "rollout.capacity.holdReplicas=2",
    )
    assert replicas(graph, "blue") == 2


def test_a_hold_for_another_version_does_not_apply() -> None:
    """A new release put on the held colour ends the hold: it is sized as a candidate."""
    graph = synth(
        "rollout.stage=0",
        f"rollout.hold.version={OLD}",
        f"rollout.hold.until={(NOW + timedelta(hours=3)).isoformat()}",
    )
    assert replicas(graph, "green") == 1


# --- the plan -------------------------------------------------------------------------------


def test_plan_shows_replicas_gpus_and_gpu_hours_against_a_static_pair() -> None:
    plan = build_plan(PROJECT, "prod").to_json()
    assert [stage["replicas"] for stage in plan["stages"]] == [
        {"blue": 6, "green": green} for green in [1, 1, 1, 2, 4, 6]
    ]
    assert [stage["gpus"]["green"] for stage in plan["stages"]] == [2, 2, 2, 4, 8, 12]
    hours = plan["extraGpuHours"]
    # Candidate: 1h x 1 + 4h x 1 + 24h x 2 + 48h x 4 replicas, 2 GPUs each = 490; the hold:
    # 6 replicas x 2 GPUs x 24 h = 288. Static pair: 6 x 2 x 77 h + 288 = 1212.
    assert hours == {
        "rollout": 778.0,
        "staticPair": 1212.0,
        "ratio": 0.642,
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
    }


def test_plan_lists_the_candidates_deployment_where_its_replicas_change() -> None:
    plan = build_plan(PROJECT, "prod")
    changed = {row.index: sorted((c.name, c.action) for c in row.changes) for row in plan.rows[1:]}
    deployment = ("green", "update")
    # 1 -> 1 -> 1 -> 2 -> 4 -> 6 replicas.
    assert [deployment in changed[i] for i in (1, 2, 3, 4, 5)] == [False, False, True, True, True]


def test_plan_text_shows_the_replicas_and_the_hold(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--stack", "prod"]) == 0
    out = capsys.readouterr().out
    assert "replicas b/g" in out
    assert "6/2" in out
    assert "6/4" in out
    assert "held warm at 6 replicas (12 GPUs) for 24 h" in out
    assert "778 with capacity following the rollout, 1,212 for a static pair (64 %)" in out
    assert main(["plan", "--stack", "prod", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["extraGpuHours"]["ratio"] == 0.642


def test_within_the_hold_a_late_regression_is_rolled_back_by_moving_only_the_listener() -> None:
    until = f"rollout.hold.until={(NOW + timedelta(hours=3)).isoformat()}"
    held = _after_finish(until)
    back = _after_finish(until, "rollout.stage=5")
    assert listener_weights(back) == {"blue": 999, "green": 0}
    changes = {(c.name, c.action) for c in diff(held, back)}
    assert ("blue", "update") not in changes  # the held pods already carry everything
    assert ("traffic-https", "update") in changes
