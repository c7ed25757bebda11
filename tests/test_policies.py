"""The policy pack, called directly (PolicyPack(...) starts a server, so it is never imported)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from pulumi_policy import ResourceValidationPolicy

from policies.rules import POLICIES
from tests.conftest import PROJECT, synth
from weightshift.preview.policy import check, check_every_stage, load_policies, validation_args
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
