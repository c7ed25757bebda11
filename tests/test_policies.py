"""The policy pack, called directly (PolicyPack(...) starts a server, so it is never imported)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from policies.rules import POLICIES
from tests.conftest import PROJECT, synth
from weightshift.policy import check, load_policies, validation_args
from weightshift.synth import Resource

BY_NAME = {policy.name: policy for policy in POLICIES}


def violations(policy: str, type_: str, props: dict[str, Any]) -> list[str]:
    found: list[str] = []
    resource = Resource("urn:pulumi:t::p::x::r", type_, "r", None, None, True, props)

    def report(message: str, _urn: str | None = None) -> None:
        found.append(message)

    BY_NAME[policy].validate(validation_args(resource), report)
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
    for policy in BY_NAME:
        assert violations(policy, "aws:iam/role:Role", {"anything": 1}) == []


@pytest.mark.parametrize(
    "overrides", [(), ("rollout.stage=5",), ("rollout.strategy=shadow", "rollout.stage=1")]
)
def test_the_prod_stack_passes_every_policy(overrides: tuple[str, ...]) -> None:
    assert check(synth(*overrides), load_policies(PROJECT)) == []


def test_a_weakened_stack_is_caught_over_the_graph() -> None:
    graph = synth("traffic.deletionProtection=false")
    found = check(graph, load_policies(PROJECT))
    assert [(v.policy, v.level, v.name) for v in found] == [
        ("alb-deletion-protection", "advisory", "traffic-alb")
    ]
