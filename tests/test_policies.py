"""The policy pack, called directly (PolicyPack(...) starts a server, so it is never imported)."""

from __future__ import annotations

import copy
import functools
import json
import runpy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import ResourceValidationPolicy

from policies.rules import POLICIES
from tests.conftest import PROJECT, synth
from weightshift.preview.policy import (
    BASE_RULE,
    PACK_CONFIG,
    PackConfig,
    PolicyConfigError,
    base_settings,
    check,
    check_every_stage,
    load_pack_config,
    load_policies,
    parse_pack_config,
    rule_names,
    validation_args,
)
from weightshift.preview.synth import Graph, Resource

BY_NAME = {policy.name: policy for policy in POLICIES}


def violations(policy: str, type_: str, props: dict[str, Any]) -> list[str]:
    found: list[str] = []
    resource = Resource("urn:pulumi:t::p::x::r", type_, "r", None, None, True, props)

    def report(message: str, _urn: str | None = None) -> None:
        found.append(message)

    rule = BY_NAME[policy]
    assert isinstance(rule, ResourceValidationPolicy)
    rule.validate(validation_args(resource), report)
    return found


def forward(*weights: int) -> dict[str, Any]:
    groups = [{"arn": f"arn:tg/{i}", "weight": w} for i, w in enumerate(weights)]
    return {"defaultActions": [{"type": "forward", "forward": {"targetGroups": groups}}]}


LISTENER = "aws:lb/listener:Listener"


def test_legal_weights_pass() -> None:
    assert violations("alb-forward-weights-legal", LISTENER, forward(990, 10)) == []


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((1000, 0), "outside the ALB's 0..999"),
        ((0, 0), "every target group has weight 0"),
        ((1, 1, 1, 1, 1, 1), "names 6 target groups"),
        ((-1, 5), "outside"),
    ],
)
def test_weights_the_alb_would_reject_are_caught(weights: tuple[int, ...], expected: str) -> None:
    found = violations("alb-forward-weights-legal", LISTENER, forward(*weights))
    assert any(expected in message for message in found), found


def test_old_tls_and_plain_http_forwarding_are_refused() -> None:
    old = violations(
        "alb-tls-only",
        LISTENER,
        {"protocol": "HTTPS", "sslPolicy": "ELBSecurityPolicy-2016-08", "certificateArn": "x"},
    )
    assert len(old) == 1
    assert "allows old protocols" in old[0]
    plain = violations("alb-tls-only", LISTENER, {"protocol": "HTTP", **forward(999, 0)})
    assert plain == ["a plain HTTP listener may only redirect to HTTPS."]
    redirect = {
        "protocol": "HTTP",
        "defaultActions": [{"type": "redirect", "redirect": {"protocol": "HTTPS"}}],
    }
    assert violations("alb-tls-only", LISTENER, redirect) == []


def test_public_buckets_and_plain_http_bucket_access_are_refused() -> None:
    block = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
    half = {"blockPublicAcls": True, "blockPublicPolicy": False, "ignorePublicAcls": True}
    (found,) = violations("s3-no-public-access", block, half)
    assert "blockPublicPolicy" in found
    assert "restrictPublicBuckets" in found
    allow_all = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject"}]}
    assert violations(
        "s3-tls-only", "aws:s3/bucketPolicy:BucketPolicy", {"policy": json.dumps(allow_all)}
    )


def test_only_https_may_be_open_to_the_internet() -> None:
    rule = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
    assert (
        violations(
            "sg-only-https-open", rule, {"cidrIpv4": "0.0.0.0/0", "fromPort": 443, "toPort": 443}
        )
        == []
    )
    assert violations(
        "sg-only-https-open", rule, {"cidrIpv4": "0.0.0.0/0", "fromPort": 22, "toPort": 22}
    )
    assert (
        violations(
            "sg-only-https-open", rule, {"cidrIpv4": "10.0.0.0/8", "fromPort": 22, "toPort": 22}
        )
        == []
    )


def test_target_groups_must_drain_in_flight_generations() -> None:
    group = "aws:lb/targetGroup:TargetGroup"
    ok = {"deregistrationDelay": 120, "healthCheck": {"enabled": True, "path": "/health"}}
    assert violations("target-group-drains", group, ok) == []
    assert violations("target-group-drains", group, {**ok, "deregistrationDelay": 0})


def test_artifact_locks_must_be_compliance_mode() -> None:
    lock = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
    ok = {"rule": {"defaultRetention": {"mode": "COMPLIANCE", "days": 365}}}
    assert violations("s3-object-lock-compliance", lock, ok) == []
    weak = {"rule": {"defaultRetention": {"mode": "GOVERNANCE", "days": 365}}}
    (found,) = violations("s3-object-lock-compliance", lock, weak)
    assert "GOVERNANCE locks can be bypassed" in found
    assert violations(
        "s3-object-lock-compliance", lock, {"rule": {"defaultRetention": {"mode": "COMPLIANCE"}}}
    )


def test_nodes_must_require_imdsv2_and_encrypt_volumes() -> None:
    template = "aws:ec2/launchTemplate:LaunchTemplate"
    ok = {
        "metadataOptions": {"httpTokens": "required", "httpPutResponseHopLimit": 1},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "true"}}],
    }
    assert violations("nodes-imdsv2-encrypted", template, ok) == []
    weak = {
        "metadataOptions": {"httpTokens": "optional", "httpPutResponseHopLimit": 2},
        "blockDeviceMappings": [{"deviceName": "/dev/xvda", "ebs": {"encrypted": "false"}}],
    }
    assert len(violations("nodes-imdsv2-encrypted", template, weak)) == 3


def test_the_cluster_api_must_not_be_open_to_the_internet() -> None:
    cluster = "aws:eks/cluster:Cluster"
    ok = {
        "vpcConfig": {"endpointPublicAccess": False},
        "encryptionConfig": {"resources": ["secrets"]},
        "enabledClusterLogTypes": ["api", "audit"],
    }
    assert violations("eks-private-encrypted-audited", cluster, ok) == []
    (found,) = violations(
        "eks-private-encrypted-audited",
        cluster,
        {**ok, "vpcConfig": {"endpointPublicAccess": True}},
    )
    assert "open to the internet" in found
    listed = {"endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}
    assert violations("eks-private-encrypted-audited", cluster, {**ok, "vpcConfig": listed}) == []


def test_container_images_must_be_pinned_by_digest() -> None:
    digest = "vllm/vllm-openai@sha256:" + "a" * 64

    def deployment(image: str) -> dict[str, Any]:
        pod = {"containers": [{"name": "server", "image": image}]}
        return {"spec": {"template": {"spec": pod}}}

    kind = "kubernetes:apps/v1:Deployment"
    assert violations("images-pinned-by-digest", kind, deployment(digest)) == []
    (found,) = violations("images-pinned-by-digest", kind, deployment("vllm/vllm-openai:v0.10"))
    assert "container server: image 'vllm/vllm-openai:v0.10' is not pinned by digest" in found


def test_policies_ignore_other_resource_types() -> None:
    for name, policy in BY_NAME.items():
        if isinstance(policy, ResourceValidationPolicy):
            assert violations(name, "aws:iam/role:Role", {"anything": 1}) == []


@pytest.mark.parametrize(
    "overrides",
    [(), ("rollout.stage=5",), ("rollout.strategy=blue-green", "rollout.stage=1")],
)
def test_the_prod_stack_passes_every_policy(overrides: tuple[str, ...]) -> None:
    assert check(synth(*overrides), load_policies(PROJECT)) == []


def stack_violations(policy: str, graph: Graph) -> list[str]:
    found = [v for v in check(graph, [BY_NAME[policy]]) if v.policy == policy]
    return [v.message for v in found]


def without(graph: Graph, *names: str, kind: str | None = None) -> Graph:
    """``graph`` without the resources called ``names`` (of ``kind``)."""
    kept = [
        r
        for r in graph.resources
        if not (r.name in names and (kind is None or r.type.endswith(f":{kind}")))
    ]
    return Graph(graph.stack, graph.config, kept, graph.outputs)


def edited(graph: Graph, resource: str, kind: str, **inputs: Any) -> Graph:
    """``graph`` with inputs of one resource replaced (outputs follow, as a provider's would)."""
    changed = [
        replace(r, inputs={**r.inputs, **inputs}, outputs={**r.outputs, **inputs})
        if r.name == resource and r.type.endswith(f":{kind}")
        else r
        for r in graph.resources
    ]
    return Graph(graph.stack, graph.config, changed, graph.outputs)


def test_an_on_call_topic_without_a_subscription_is_a_violation() -> None:
    assert stack_violations("on-call-topic-subscribed", synth()) == []
    (found,) = stack_violations("on-call-topic-subscribed", synth("rollback.onCall=[]"))
    assert "topic rollback-on-call has no subscription" in found
    assert "weightshift:rollback.onCall" in found


def test_a_subscription_known_only_by_where_its_topic_came_from_counts() -> None:
    """In a first preview the topic's ARN is unknown; the subscription's ``topic`` input
    still depends on the topic resource."""
    graph = synth()
    (topic,) = graph.of_type("aws:sns/topic:Topic")
    unknown = edited(graph, "rollback-on-call-0", "TopicSubscription", topic="(unknown)")
    assert stack_violations("on-call-topic-subscribed", unknown) == []
    cut = [
        replace(r, property_dependencies={}) if r.type.endswith(":TopicSubscription") else r
        for r in unknown.resources
    ]
    found = stack_violations(
        "on-call-topic-subscribed", Graph(graph.stack, graph.config, cut, graph.outputs)
    )
    assert found
    assert topic.name in found[0]


def test_weight_to_a_target_group_nothing_registers_in_is_a_violation() -> None:
    live = synth("rollout.stage=1")
    assert stack_violations("listener-weight-reaches-targets", live) == []
    unbound = without(live, "green", kind="TargetGroupBinding")
    (found,) = stack_violations("listener-weight-reaches-targets", unbound)
    assert "sends weight 10 to target group traffic-green" in found
    assert "503" in found
    # At stage 0 the candidate's target group has weight 0: nothing to register yet.
    idle = without(synth("rollout.stage=0"), "green", kind="TargetGroupBinding")
    assert stack_violations("listener-weight-reaches-targets", idle) == []


def test_pods_schedulable_catches_the_device_plugins_default_affinity() -> None:
    """Chart 0.17.1's default affinity needs node-feature-discovery labels; without our
    override the device plugin lands nowhere, so no node advertises GPUs and the inference
    pods land nowhere either."""
    graph = synth()
    assert stack_violations("pods-schedulable", graph) == []
    release = graph.named("cluster-nvidia-device-plugin", "Release")
    values = dict(release.inputs["values"])
    del values["affinity"]
    found = stack_violations(
        "pods-schedulable", edited(graph, release.name, "Release", values=values)
    )
    assert any(
        m.startswith(
            "cluster-nvidia-device-plugin/DaemonSet nvidia-device-plugin can land on no node group"
        )
        and "required node affinity matches no label" in m
        for m in found
    ), found
    assert any(
        m.startswith("green can land on no node group") and "no device plugin" in m for m in found
    ), found


def test_a_release_of_a_chart_without_recorded_facts_cannot_pass() -> None:
    graph = synth()
    found = stack_violations(
        "pods-schedulable", edited(graph, "cluster-autoscaler", "Release", version="9.99.0")
    )
    assert found == [
        "cannot check where its pods run: cluster-autoscaler: no recorded facts for chart "
        "cluster-autoscaler 9.99.0 (recorded: 9.59.0)"
    ]


def test_policy_check_covers_every_stage_of_every_strategy() -> None:
    results = check_every_stage(PROJECT, "prod", load_policies(PROJECT))
    checked = [(r.strategy, r.stage) for r in results if not r.refused]
    assert checked == [("canary", i) for i in range(6)] + [
        ("blue-green", 0),
        ("blue-green", 1),
        ("shadow", 0),
        ("shadow", 1),
    ]
    assert all(r.violations == [] for r in results)
    assert [r for r in results if r.refused] == []
    bad = check_every_stage(PROJECT, "prod", load_policies(PROJECT), ["rollback.onCall=[]"])
    assert {(r.strategy, r.stage) for r in bad if r.violations} == set(checked)


def test_a_weakened_stack_is_caught_over_the_graph() -> None:
    graph = synth("traffic.deletionProtection=false")
    found = check(graph, load_policies(PROJECT))
    assert [(v.policy, v.level, v.name) for v in found] == [
        ("alb-deletion-protection", "advisory", "traffic-alb")
    ]


def test_a_role_whose_inline_policies_exceed_what_iam_takes_is_a_violation() -> None:
    graph = synth()
    assert stack_violations("iam-inline-policies-fit", graph) == []
    policy = json.loads(graph.named("green-pods", "RolePolicy").inputs["policy"])
    policy["Statement"][0]["Resource"] += [
        f"arn:aws:s3:::b/blobs/sha256/{i:064x}" for i in range(100)
    ]
    big = edited(graph, "green-pods", "RolePolicy", policy=json.dumps(policy))
    (found,) = stack_violations("iam-inline-policies-fit", big)
    assert "inline policies green-gateway, green-guardrail, green-pods of one role total" in found
    assert "IAM allows 10240 per role" in found


def test_the_same_security_group_rule_declared_twice_is_a_violation() -> None:
    """One rule per colour once admitted the ALB to the same cluster security group twice:
    EC2 refuses the second (InvalidPermission.Duplicate)."""
    graph = synth()
    assert stack_violations("sg-rules-unique", graph) == []
    rule = graph.named("serving-from-alb", "SecurityGroupIngressRule")
    twin = replace(rule, name="green-from-alb", urn=rule.urn.replace("serving-from", "green-from"))
    doubled = Graph(graph.stack, graph.config, [*graph.resources, twin], graph.outputs)
    (found,) = stack_violations("sg-rules-unique", doubled)
    assert found.startswith("green-from-alb is the same rule as serving-from-alb")
    # Another port is another rule.
    other = replace(twin, inputs={**twin.inputs, "fromPort": 9000, "toPort": 9000})
    other = replace(other, outputs={**other.outputs, "fromPort": 9000, "toPort": 9000})
    moved = Graph(graph.stack, graph.config, [*graph.resources, other], graph.outputs)
    assert stack_violations("sg-rules-unique", moved) == []


FINISHED = (
    "rollout.candidate=blue",
    "rollout.stage=0",
    'rollout.hold={"version": "support-assistant/v1.4.2-424ef6470390", '
    '"until": "2026-12-08T00:00:00+00:00"}',
)
"""The prod stack after `rollout finish` of canary: green stable, blue held at stage 0."""


def transition_violations(before: Graph, after: Graph) -> list[str]:
    from policies.rules import TRANSITION_POLICIES
    from weightshift.preview.policy import check_transition

    return [str(v) for v in check_transition(before, after, TRANSITION_POLICIES, "finish")]


def test_finish_keeps_the_on_call_topic_its_subscriptions_and_the_rollback_logs() -> None:
    last, finished = synth("rollout.stage=5"), synth(*FINISHED)
    assert transition_violations(last, finished) == []
    # A topic named after the candidate colour (as it was) is replaced at finish.
    renamed = edited(
        finished, "rollback-on-call", "Topic", name="support-assistant-prod-blue-on-call"
    )
    (found,) = transition_violations(last, renamed)
    assert "paging-and-logs-survive-stage-changes" in found
    assert "would be replaced" in found
    assert "'support-assistant-prod-on-call' -> 'support-assistant-prod-blue-on-call'" in found
    moved = edited(finished, "rollback-function", "LogGroup", name="/aws/lambda/x-blue-rollback")
    assert any(
        "LogGroup rollback-function would be replaced" in v
        for v in transition_violations(last, moved)
    )
    gone = Graph(
        finished.stack,
        finished.config,
        [r for r in finished.resources if r.name != "rollback-on-call-0"],
        finished.outputs,
    )
    assert any(
        "TopicSubscription rollback-on-call-0 would be deleted" in v
        for v in transition_violations(last, gone)
    )


def test_policy_check_runs_the_transition_rules_up_to_finish() -> None:
    from policies.rules import TRANSITION_POLICIES, TransitionPolicy

    def spy(before: Any, after: Any, report: Any) -> None:
        report("planted")

    results = check_every_stage(
        PROJECT,
        "prod",
        [],
        transitions=[*TRANSITION_POLICIES, TransitionPolicy("spy", spy)],
    )
    steps = [v.message for r in results for v in r.violations if v.policy == "spy"]
    # Canary: 5 stage changes and a finish; blue-green: 1 and a finish; shadow: 1, no finish.
    assert len(steps) == 5 + 1 + 1 + 1 + 1
    assert sum("(at rollout finish)" in s for s in steps) == 2
    assert [v for r in results for v in r.violations if v.policy != "spy"] == []


# --- weights are a stage, one stage per change, alarms wired, least privilege, locked ----

HTTPS = "traffic-https"


@functools.cache
def staged(*overrides: str) -> Graph:
    """``synth`` once per set of overrides for this module (graphs are edited by copy)."""
    return synth(*overrides)


def with_weights(graph: Graph, **by_target: int) -> Graph:
    """``graph`` with the HTTPS listener's weights set by target (blue, green, mirror)."""
    arns = graph.outputs["targetGroupArns"]
    actions = copy.deepcopy(graph.named(HTTPS).inputs["defaultActions"])
    for group in actions[0]["forward"]["targetGroups"]:
        for target, weight in by_target.items():
            if group["arn"] == arns[target]:
                group["weight"] = weight
    return edited(graph, HTTPS, "Listener", defaultActions=actions)


def test_listener_weights_must_be_the_marked_stage() -> None:
    rule = "listener-weights-are-a-stage"
    for overrides in [
        ("rollout.stage=0",),
        ("rollout.stage=3",),
        ("rollout.strategy=shadow", "rollout.stage=1"),
        ("rollout.strategy=blue-green", "rollout.stage=1"),
    ]:
        assert stack_violations(rule, staged(*overrides)) == [], overrides
    one = staged("rollout.stage=1")
    # 5 % is a stage of canary, but not the stage the candidate is marked with.
    (found,) = stack_violations(rule, with_weights(one, blue=950, green=50))
    assert "forwards stable 950, candidate 50, which is not stage 1 of canary" in found
    assert "(stable 990, candidate 10)" in found
    assert stack_violations(rule, with_weights(one, blue=900, green=100))
    # A rollback record holds the candidate at 0 whatever the marked stage: allowed.
    assert stack_violations(rule, with_weights(staged("rollout.stage=3"), blue=999, green=0)) == []


def test_weights_without_a_readable_stage_marker_are_a_violation() -> None:
    graph = staged("rollout.stage=1")
    green = graph.named("green", "Deployment")
    metadata = copy.deepcopy(green.inputs["metadata"])
    metadata["annotations"]["weightshift.io/stage"] = "canary eleven"
    found = stack_violations(
        "listener-weights-are-a-stage", edited(graph, "green", "Deployment", metadata=metadata)
    )
    marker = "'canary eleven' with colour 'green' is not '<strategy> <stage>'"
    assert any(marker in m for m in found), found
    assert any("has no Deployment marked with weightshift.io/stage" in m for m in found), found


def base(strategy: str = "canary", stage: int = 1, candidate: str = "green") -> PackConfig:
    version = {"green": "support-assistant/v1.5.0-d80719af096e"}.get(
        candidate, "support-assistant/v1.4.2-424ef6470390"
    )
    return PackConfig().with_settings(
        BASE_RULE,
        {
            "baseStrategy": strategy,
            "baseStage": stage,
            "baseCandidate": candidate,
            "baseVersion": version,
        },
    )


def one_step(graph: Graph, config: PackConfig) -> list[str]:
    return [v.message for v in check(graph, [BY_NAME[BASE_RULE]], config)]


def test_a_change_moves_at_most_one_stage_from_the_base() -> None:
    assert one_step(staged("rollout.stage=2"), base(stage=1)) == []  # promote
    assert one_step(staged("rollout.stage=1"), base(stage=1)) == []  # unchanged
    assert one_step(staged("rollout.stage=0"), base(stage=3)) == []  # abort
    (jump,) = one_step(staged("rollout.stage=4"), base(stage=1))
    assert "moves from canary stage 1 to canary stage 4" in jump
    assert "forward one stage or back to stage 0" in jump
    # Down, but not to 0, is no abort the program knows.
    assert one_step(staged("rollout.stage=2"), base(stage=4))
    # Without a base the rule has nothing to compare with.
    assert one_step(staged("rollout.stage=4"), PackConfig()) == []


def test_a_new_candidate_starts_at_stage_0_and_finish_is_allowed() -> None:
    # `rollout finish` after canary 5: blue (the old stable) is the next candidate, at 0.
    assert one_step(synth(*FINISHED), base(stage=5)) == []
    # A new version of the candidate colour must start at 0 too.
    newer = base(stage=0).with_settings(BASE_RULE, {"baseVersion": "support-assistant/v1.4.9"})
    (found,) = one_step(staged("rollout.stage=1"), newer)
    assert "a new candidate (green support-assistant/v1.5.0-d80719af096e) starts at" in found
    assert one_step(staged("rollout.stage=0"), newer) == []
    # Another strategy: only from stage 0, and at most one stage.
    assert one_step(staged("rollout.strategy=blue-green", "rollout.stage=1"), base(stage=0)) == []
    assert one_step(staged("rollout.strategy=blue-green", "rollout.stage=1"), base(stage=2))


def test_a_base_config_the_rule_cannot_read_is_a_violation() -> None:
    broken = PackConfig().with_settings(BASE_RULE, {"baseStrategy": "canary", "baseStage": -1})
    (found,) = one_step(staged("rollout.stage=1"), broken)
    assert found.startswith("the policy config is not a base stage: ")


def test_the_policy_check_catches_a_jump_from_stage_1_to_stage_4(tmp_path: Path) -> None:
    """The pull request's check: the base branch at canary 1, the head at canary 4. The rule
    runs on the configured stage only; every other stage is a later change's."""
    base_file = tmp_path / "Pulumi.prod.yaml"
    text = (PROJECT / "Pulumi.prod.yaml").read_text(encoding="utf-8")
    base_file.write_text(text.replace("    stage: 0\n", "    stage: 1\n"), encoding="utf-8")
    config = PackConfig().with_settings(BASE_RULE, base_settings(base_file))
    results = check_every_stage(
        PROJECT, "prod", load_policies(PROJECT), ["rollout.stage=4"], config=config
    )
    found = [(r.strategy, r.stage, v.policy) for r in results for v in r.violations]
    assert found == [("canary", 4, BASE_RULE)]


def test_a_base_config_that_is_not_a_stack_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match=r"Pulumi.<stack>.yaml"):
        base_settings(tmp_path / "base.yaml")
    bad = tmp_path / "Pulumi.prod.yaml"
    bad.write_text("config:\n  weightshift:rollout: {stage: -3}\n", encoding="utf-8")
    with pytest.raises(PolicyConfigError, match=r"--base-config .*Pulumi.prod.yaml"):
        base_settings(bad)


def test_every_colour_with_traffic_is_wired_to_its_rollback() -> None:
    rule = "traffic-colours-alarmed"
    for overrides in [
        ("rollout.stage=0",),
        ("rollout.stage=1",),
        ("rollout.strategy=shadow", "rollout.stage=1"),
        ("rollout.strategy=blue-green", "rollout.stage=1"),
        FINISHED,
    ]:
        assert stack_violations(rule, staged(*overrides)) == [], overrides
    live = staged("rollout.stage=1")
    composite = live.named("rollback", "CompositeAlarm")
    topic_only = [a for a in composite.inputs["alarmActions"] if ":sns:" in a]
    unwired = edited(live, "rollback", "CompositeAlarm", alarmActions=topic_only)
    unwired = Graph(
        unwired.stack,
        unwired.config,
        [
            replace(r, property_dependencies={})
            if r.name == "rollback" and r.type.endswith("CompositeAlarm")
            else r
            for r in unwired.resources
        ],
        unwired.outputs,
    )
    (found,) = stack_violations(rule, unwired)
    assert found == (
        "traffic-green receives traffic but alarm support-assistant-prod-green-rollback does "
        "not invoke rollback-function."
    )
    silent = edited(live, "rollback", "CompositeAlarm", actionsEnabled=False)
    assert any("has its actions disabled" in m for m in stack_violations(rule, silent))
    nobody = edited(
        live, "rollback", "CompositeAlarm", alarmActions=composite.inputs["alarmActions"][:1]
    )
    assert any("does not notify the on-call topic" in m for m in stack_violations(rule, nobody))
    denied = without(live, "rollback-function", kind="Permission")
    assert any("no Lambda permission lets alarm" in m for m in stack_violations(rule, denied))
    # At stage 0 nothing reaches the candidate: its alarm may stay quiet.
    idle = staged("rollout.stage=0")
    assert (
        stack_violations(rule, edited(idle, "rollback", "CompositeAlarm", actionsEnabled=False))
        == []
    )


def test_traffic_to_a_target_group_no_rollback_guards_is_a_violation() -> None:
    live = staged("rollout.stage=1")
    function = live.named("rollback-function", "Function")
    variables = dict(function.inputs["environment"]["variables"])
    variables["CANDIDATE_TARGET_GROUP_ARN"] = "arn:aws:elasticloadbalancing:::targetgroup/other/1"
    moved = edited(live, "rollback-function", "Function", environment={"variables": variables})
    (found,) = stack_violations("traffic-colours-alarmed", moved)
    assert "sends traffic to traffic-green, which no rollback function guards" in found


def role_policy(graph: Graph) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        graph.named("rollback-function", "RolePolicy").inputs["policy"]
    )
    return document


def test_the_rollback_function_has_least_privilege() -> None:
    rule = "rollback-function-least-privilege"
    graph = staged("rollout.stage=1")
    assert stack_violations(rule, graph) == []
    unreserved = edited(graph, "rollback-function", "Function", reservedConcurrentExecutions=None)
    (found,) = stack_violations(rule, unreserved)
    assert "has no reserved concurrency" in found

    def granting(statement: dict[str, Any]) -> Graph:
        policy = role_policy(graph)
        policy["Statement"].append(statement)
        return edited(graph, "rollback-function", "RolePolicy", policy=json.dumps(policy))

    anywhere = {
        "Sid": "X",
        "Effect": "Allow",
        "Action": ["elasticloadbalancing:ModifyListener"],
        "Resource": "*",
    }
    (found,) = stack_violations(rule, granting(anywhere))
    assert "statement X grants elasticloadbalancing:ModifyListener on every resource" in found
    other = {
        **anywhere,
        "Resource": ["arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/other/1"],
    }
    (found,) = stack_violations(rule, granting(other))
    assert "names arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/other/1" in found
    every = {
        "Sid": "Y",
        "Effect": "Allow",
        "Action": "ssm:*",
        "Resource": role_policy(graph)["Statement"][2]["Resource"],
    }
    (found,) = stack_violations(rule, granting(every))
    assert "grants the wildcard action 'ssm:*'" in found
    others = {
        "Sid": "Z",
        "Effect": "Allow",
        "Action": "s3:GetObject",
        "NotResource": "arn:aws:s3:::x/*",
    }
    assert any("NotAction/NotResource" in m for m in stack_violations(rule, granting(others)))
    role = graph.named("rollback-function", "Role")
    attachment = Resource(
        role.urn.replace(
            "aws:iam/role:Role::rollback-function",
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment::admin",
        ),
        "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        "admin",
        role.parent,
        None,
        True,
        {"role": role.outputs["name"], "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
        {"role": role.outputs["name"], "policyArn": "arn:aws:iam::aws:policy/AdministratorAccess"},
        property_dependencies={"role": (role.urn,)},
    )
    attached = Graph(graph.stack, graph.config, [*graph.resources, attachment], graph.outputs)
    (found,) = stack_violations(rule, attached)
    assert "managed policy arn:aws:iam::aws:policy/AdministratorAccess is attached" in found


def test_every_wildcard_the_rollback_role_may_hold_names_its_aws_page() -> None:
    from policies.rules import WILDCARD_ONLY_ACTIONS

    wildcards = [
        action
        for statement in role_policy(staged("rollout.stage=1"))["Statement"]
        if "*" in statement["Resource"]
        for action in statement["Action"]
    ]
    assert wildcards == ["elasticloadbalancing:DescribeListeners"]
    assert all(
        WILDCARD_ONLY_ACTIONS[a].startswith("https://docs.aws.amazon.com/") for a in wildcards
    )


def test_the_policy_check_catches_an_artifact_bucket_without_object_lock() -> None:
    graph = staged("rollout.stage=0")
    pack = load_policies(PROJECT)
    unlocked = without(
        edited(graph, "artifacts", "Bucket", objectLockEnabled=False),
        "artifacts-object-lock",
        kind="BucketObjectLockConfiguration",
    )
    found = [(v.policy, v.level, v.name) for v in check(unlocked, pack)]
    assert sorted(found) == [
        ("artifact-bucket-object-lock", "mandatory", "artifacts"),
        ("artifact-bucket-object-lock", "mandatory", "artifacts"),
    ]
    messages = stack_violations("artifact-bucket-object-lock", unlocked)
    assert any("created without Object Lock" in m for m in messages)
    assert any("has no Object Lock configuration" in m for m in messages)
    weak = edited(
        graph,
        "artifacts-object-lock",
        "BucketObjectLockConfiguration",
        rule={"defaultRetention": {"mode": "GOVERNANCE", "days": 30}},
    )
    (found_weak,) = stack_violations("artifact-bucket-object-lock", weak)
    assert found_weak.startswith("artifact bucket artifacts: default retention mode is GOVERNANCE")
    # Log buckets are not the artifact store: no lock asked of them.
    assert stack_violations("artifact-bucket-object-lock", graph) == []


def test_the_policy_check_catches_an_alarm_not_wired_to_the_function() -> None:
    live = staged("rollout.stage=1")
    composite = live.named("rollback", "CompositeAlarm")
    topic_only = [a for a in composite.inputs["alarmActions"] if ":sns:" in a]
    unwired = edited(live, "rollback", "CompositeAlarm", alarmActions=topic_only)
    cut = [
        replace(r, property_dependencies={}) if r.urn == composite.urn else r
        for r in unwired.resources
    ]
    found = check(Graph(live.stack, live.config, cut, live.outputs), load_policies(PROJECT))
    assert [(v.policy, v.level) for v in found] == [("traffic-colours-alarmed", "mandatory")]


# --- enforcement levels from the pack's config -------------------------------------------


def rules_of_the_pack() -> dict[str, Any]:
    from policies.rules import TRANSITION_POLICIES

    return rule_names(load_policies(PROJECT), TRANSITION_POLICIES)


def test_the_pack_config_sets_a_level_for_every_rule() -> None:
    data = json.loads((PROJECT / PACK_CONFIG).read_text(encoding="utf-8"))
    assert set(data) == set(rules_of_the_pack())
    config = load_pack_config(PROJECT / PACK_CONFIG, rules_of_the_pack())
    assert config.level("alb-deletion-protection", None).value == "advisory"
    assert config.level("traffic-colours-alarmed", None).value == "mandatory"


def test_a_rule_s_level_comes_from_its_entry_then_all_then_the_rule() -> None:
    names = rules_of_the_pack()
    config = parse_pack_config(
        {"all": "advisory", "alb-tls-only": {"enforcementLevel": "mandatory"}}, names, "t"
    )
    from pulumi_policy import EnforcementLevel

    assert config.level("alb-tls-only", EnforcementLevel.ADVISORY) is EnforcementLevel.MANDATORY
    assert config.level("s3-tls-only", EnforcementLevel.MANDATORY) is EnforcementLevel.ADVISORY
    graph = staged("rollout.stage=0")
    off = parse_pack_config({"on-call-topic-subscribed": "disabled"}, names, "t")
    silent = synth("rollback.onCall=[]")
    assert check(silent, load_policies(PROJECT), off) == []
    assert [v.policy for v in check(silent, load_policies(PROJECT))] == ["on-call-topic-subscribed"]
    assert check(graph, load_policies(PROJECT), off) == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"no-such-rule": "advisory"}, "'no-such-rule' is not a rule of the pack"),
        ({"alb-tls-only": "strict"}, "alb-tls-only.enforcementLevel 'strict' is not a level"),
        ({"alb-tls-only": {"maxAge": 3}}, "alb-tls-only has no setting maxAge (it takes none)."),
        (
            {BASE_RULE: {"baseStag": 1}},
            f"{BASE_RULE} has no setting baseStag (it takes baseStrategy",
        ),
        (["alb-tls-only"], "the pack config is a list; it must be a JSON object"),
        ({"alb-tls-only": 3}, "alb-tls-only must be a level or an object with enforcementLevel"),
    ],
)
def test_a_pack_config_that_is_wrong_is_refused_naming_the_field(data: Any, expected: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        parse_pack_config(data, rules_of_the_pack(), "cfg.json")
    assert str(caught.value).startswith("cfg.json: ")
    assert expected in str(caught.value)


def test_the_pack_hands_its_config_to_the_policy_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """policies/__main__.py starts the pack with policies/config.json as its initial config
    (PolicyPack would start a server: it is replaced by a recorder here)."""
    import pulumi_policy
    from pulumi_policy import EnforcementLevel

    seen: dict[str, Any] = {}
    monkeypatch.setattr(pulumi_policy, "PolicyPack", lambda **kwargs: seen.update(kwargs))
    monkeypatch.syspath_prepend(str(PROJECT / "policies"))
    runpy.run_path(str(PROJECT / "policies" / "__main__.py"), run_name="__main__")
    config = seen["initial_config"]
    assert config["alb-deletion-protection"] is EnforcementLevel.ADVISORY
    assert config["traffic-colours-alarmed"] is EnforcementLevel.MANDATORY
    # The stage-change rule runs in `weightshift policy check` only: not the SDK's to know.
    assert "paging-and-logs-survive-stage-changes" not in config
    assert {p.name for p in seen["policies"]} <= set(config)


def test_an_advisory_violation_passes_the_check_and_a_mandatory_one_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightshift.cli import main

    weak = ["--set", "traffic.deletionProtection=false", "--configured-stage-only"]
    command = ["policy", "check", "--project", str(PROJECT), *weak]
    assert main(command) == 0
    assert "[advisory] alb-deletion-protection" in capsys.readouterr().out
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"alb-deletion-protection": "mandatory"}), encoding="utf-8")
    assert main([*command, "--config", str(strict)]) == 1
    assert "[mandatory] alb-deletion-protection" in capsys.readouterr().out
    wrong = tmp_path / "wrong.json"
    wrong.write_text("{not json", encoding="utf-8")
    assert main([*command, "--config", str(wrong)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_policy_check_with_a_base_config_fails_a_jump_and_writes_the_pack_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from weightshift.cli import main

    base_file = tmp_path / "Pulumi.prod.yaml"
    text = (PROJECT / "Pulumi.prod.yaml").read_text(encoding="utf-8")
    base_file.write_text(text.replace("    stage: 0\n", "    stage: 1\n"), encoding="utf-8")
    written = tmp_path / "pack.json"
    command = ["policy", "check", "--project", str(PROJECT), "--configured-stage-only"]
    command += ["--base-config", str(base_file), "--write-pack-config", str(written)]
    assert main([*command, "--set", "rollout.stage=4"]) == 1
    out = capsys.readouterr().out
    assert "[mandatory] stage-moves-one-step" in out
    assert "moves from canary stage 1 to canary stage 4" in out
    pack = json.loads(written.read_text(encoding="utf-8"))
    assert pack[BASE_RULE] == {
        "enforcementLevel": "mandatory",
        "baseStrategy": "canary",
        "baseStage": 1,
        "baseCandidate": "green",
        "baseVersion": "support-assistant/v1.5.0-d80719af096e",
    }
    assert "paging-and-logs-survive-stage-changes" not in pack
    assert main([*command, "--set", "rollout.stage=2"]) == 0
