"""The whole program, synthesized offline: what `pulumi up` would be asked to create."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from tests.conftest import listener_weights, synth
from weightshift.preview.plan import diff
from weightshift.preview.synth import UNKNOWN
from weightshift.stages import Colour, Strategy, schedule, weights_for

STRATEGY_SETS = {
    Strategy.CANARY: ["rollout.strategy=canary"],
    Strategy.BLUE_GREEN: ["rollout.strategy=blue-green"],
    Strategy.SHADOW: ["rollout.strategy=shadow", "rollout.mirrorPercent=15"],
}
CANDIDATE_SETS = {
    Colour.GREEN: [],
    Colour.BLUE: [
        "rollout.candidate=blue",
        "blue.version=support-assistant/v1.5.0-d80719af096e",
        "green.version=support-assistant/v1.4.2-424ef6470390",
    ],
}
CASES = [
    (strategy, candidate, stage.index)
    for strategy in STRATEGY_SETS
    for candidate in Colour
    for stage in schedule(strategy)
]


@pytest.mark.parametrize(("strategy", "candidate", "stage"), CASES)
def test_listener_weights_match_the_stage(
    strategy: Strategy, candidate: Colour, stage: int
) -> None:
    graph = synth(*STRATEGY_SETS[strategy], *CANDIDATE_SETS[candidate], f"rollout.stage={stage}")
    expected = weights_for(strategy, stage, candidate, 15)
    found = listener_weights(graph)
    assert found["blue"] == expected.blue
    assert found["green"] == expected.green
    assert found.get("mirror", 0) == expected.mirror
    assert graph.outputs["rollout"]["weights"] == {
        "blue": expected.blue,
        "green": expected.green,
        "mirror": expected.mirror,
    }


@pytest.mark.parametrize("strategy", list(STRATEGY_SETS))
@pytest.mark.parametrize("candidate", list(Colour))
def test_each_stage_change_touches_only_the_listener_alarm_actions_and_candidate_capacity(
    strategy: Strategy, candidate: Colour
) -> None:
    graphs = [
        synth(*STRATEGY_SETS[strategy], *CANDIDATE_SETS[candidate], f"rollout.stage={stage.index}")
        for stage in schedule(strategy)
    ]
    assert len(graphs) >= 2
    flips = 0
    for before_stage, (before, after) in enumerate(itertools.pairwise(graphs)):
        expected: list[tuple[str, str, tuple[str, ...]]] = [
            ("traffic-https", "update", ("defaultActions",))
        ]
        if (
            before.outputs["rollback"]["actionsEnabled"]
            != after.outputs["rollback"]["actionsEnabled"]
        ):
            # The candidate starts (or stops) receiving traffic: alarm actions turn on (off).
            # The alarms themselves do not change: the dead man's switch counts what the
            # candidate is sent, so it needs no stage-dependent setting.
            flips += 1
            expected += [("rollback", "update", ("actionsEnabled",))]
        # The candidate's Deployment: its stage marker (metadata: no pod restarts) at every
        # stage, and its replicas where capacity follows the stage; nothing else.
        replicas = [
            graph.outputs["inference"][candidate.value]["replicas"] for graph in (before, after)
        ]
        keys = ("metadata", "spec") if replicas[0] != replicas[1] else ("metadata",)
        expected += [(candidate.value, "update", keys)]
        deployments = [g.named(candidate.value, "Deployment").inputs for g in (before, after)]
        assert {**deployments[0]["spec"], "replicas": 0} == {
            **deployments[1]["spec"],
            "replicas": 0,
        }
        assert [d["metadata"]["annotations"]["weightshift.io/stage"] for d in deployments] == [
            f"{strategy.value} {stage}" for stage in (before_stage, before_stage + 1)
        ]
        changes = diff(before, after)
        assert sorted((c.name, c.action, c.keys) for c in changes) == sorted(expected)
    assert flips == 1


@pytest.mark.parametrize("candidate", list(Colour))
def test_shadow_serves_its_mirror_target_group_from_the_stable_colour(candidate: Colour) -> None:
    """The mirror target group gets weight at shadow's stage 1; the stable colour's gateways
    (their mirror listener) are registered in it, so the ALB never answers that share 503."""
    graph = synth(*STRATEGY_SETS[Strategy.SHADOW], *CANDIDATE_SETS[candidate], "rollout.stage=1")
    stable = candidate.other.value
    arns = graph.outputs["targetGroupArns"]
    (binding,) = [
        r
        for r in graph.of_type("kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding")
        if r.inputs["spec"]["targetGroupARN"] == arns["mirror"]
    ]
    assert binding.name == f"{stable}-mirror"
    assert binding.inputs["metadata"]["namespace"] == f"support-assistant-prod-{stable}"
    assert binding.inputs["spec"]["serviceRef"] == {"name": "inference", "port": 8001}
    assert graph.named("traffic-mirror", "TargetGroup").inputs["port"] == 8001
    assert listener_weights(graph)["mirror"] == 150


@pytest.mark.parametrize("strategy", [Strategy.CANARY, Strategy.BLUE_GREEN])
def test_no_mirror_target_group_without_shadow(strategy: Strategy) -> None:
    graph = synth(*STRATEGY_SETS[strategy])
    names = {r.name for r in graph.of_type("aws:lb/targetGroup:TargetGroup")}
    assert names == {"traffic-blue", "traffic-green"}
    assert not [r for r in graph.resources if r.name.endswith("-mirror") and "Binding" in r.type]


def test_stickiness_follows_config_and_can_be_off() -> None:
    (sticky,) = synth("rollout.stage=2").named("traffic-https").inputs["defaultActions"]
    assert sticky["forward"]["stickiness"] == {"enabled": True, "duration": 900}
    (plain,) = (
        synth("rollout.stage=2", "rollout.stickinessSeconds=0")
        .named("traffic-https")
        .inputs["defaultActions"]
    )
    assert plain["forward"]["stickiness"]["enabled"] is False


def test_stickiness_is_off_while_the_candidate_has_no_weight() -> None:
    """ALB stickiness overrides the weights: at 0 % a client stuck to the candidate would
    stay on pods that the same update then removes."""
    (action,) = synth("rollout.stage=0").named("traffic-https").inputs["defaultActions"]
    assert action["forward"]["stickiness"]["enabled"] is False


def test_https_listener_uses_the_certificate_and_a_modern_tls_policy() -> None:
    https = synth().named("traffic-https").inputs
    assert https["protocol"] == "HTTPS"
    assert https["port"] == 443
    assert https["sslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-Res-2021-06"
    assert https["certificateArn"].startswith("arn:aws:acm:us-east-1:")
    assert https["routingHttpResponseStrictTransportSecurityHeaderValue"].startswith("max-age=")


def test_http_only_redirects_to_https() -> None:
    http = synth().named("traffic-http").inputs
    assert http["port"] == 80
    (action,) = http["defaultActions"]
    assert action["type"] == "redirect"
    assert action["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}


def test_the_load_balancer_is_hardened_and_logs_to_its_own_bucket() -> None:
    graph = synth()
    alb = graph.named("traffic-alb", "LoadBalancer").inputs
    assert alb["dropInvalidHeaderFields"] is True
    assert alb["enableDeletionProtection"] is True
    assert alb["internal"] is False
    assert alb["idleTimeout"] == 600
    bucket = graph.named("traffic-logs", "Bucket")
    assert alb["accessLogs"]["enabled"] is True
    assert alb["accessLogs"]["bucket"] == f"traffic-logs-{_physical_suffix(graph, bucket.urn)}"
    public_subnets = [r for r in graph.of_type("aws:ec2/subnet:Subnet") if "public" in r.name]
    assert len(alb["subnets"]) == len(public_subnets) == 3


def _physical_suffix(graph: Any, urn: str) -> str:
    from weightshift.preview.synth import _digest

    resource = graph.by_urn()[urn]
    return _digest(resource.type, resource.name)[:8]


def test_log_bucket_is_private_tls_only_and_accepts_only_alb_delivery() -> None:
    graph = synth()
    block = graph.named("traffic-logs-public-access").inputs
    assert all(
        block[k] is True
        for k in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )
    ownership = graph.named("traffic-logs-ownership").inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    policy = json.loads(graph.named("traffic-logs-policy").inputs["policy"])
    statements = {s["Sid"]: s for s in policy["Statement"]}
    deny = statements["DenyInsecureTransport"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    for sid in ("AlbLogDelivery", "AlbLogDeliveryLegacyRegion"):
        assert statements[sid]["Action"] == "s3:PutObject"
        assert statements[sid]["Resource"].endswith("/alb/AWSLogs/*")
    assert statements["AlbLogDeliveryLegacyRegion"]["Principal"] == {
        "AWS": "arn:aws:iam::127311923021:root"
    }


def test_target_groups_drain_and_check_the_serving_health_path() -> None:
    graph = synth()
    for colour in ("blue", "green"):
        group = graph.named(f"traffic-{colour}").inputs
        assert group["targetType"] == "ip"
        assert group["port"] == 8000
        assert group["deregistrationDelay"] == 180
        assert group["loadBalancingAlgorithmType"] == "least_outstanding_requests"
        assert group["healthCheck"]["path"] == "/health"
        assert group["healthCheck"]["matcher"] == "200"


def test_test_route_sends_the_header_from_allowed_sources_to_one_colour() -> None:
    graph = synth()
    arns = graph.outputs["targetGroupArns"]
    priorities = set()
    for colour in ("blue", "green"):
        rule = graph.named(f"traffic-route-{colour}").inputs
        priorities.add(rule["priority"])
        header, source = rule["conditions"]
        assert header["httpHeader"] == {
            "httpHeaderName": "x-weightshift-colour",
            "values": [colour],
        }
        # The ALB is internet-facing: callers in the VPC arrive from the NAT gateways'
        # addresses (the rule matches the connection's source, not X-Forwarded-For).
        assert source["sourceIp"]["values"] == [f"{ip}/32" for ip in graph.outputs["natPublicIps"]]
        assert len(source["sourceIp"]["values"]) == 3
        assert rule["actions"] == [{"type": "forward", "targetGroupArn": arns[colour]}]
    assert len(priorities) == 2
    custom = synth("traffic.testRouteCidrs=[203.0.113.0/24]").named("traffic-route-green").inputs
    assert custom["conditions"][1]["sourceIp"]["values"] == ["203.0.113.0/24"]
    internal = synth("traffic.internal=true").named("traffic-route-green").inputs
    assert internal["conditions"][1]["sourceIp"]["values"] == ["10.40.0.0/16"]


def test_alb_security_group_opens_only_client_ports_and_the_serving_port_to_the_vpc() -> None:
    graph = synth()
    ingress = sorted(
        r.inputs["fromPort"]
        for r in graph.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.name.startswith("traffic-")
    )
    assert ingress == [80, 443]
    (egress,) = graph.of_type("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    assert (egress.inputs["fromPort"], egress.inputs["toPort"]) == (8000, 8000)
    assert egress.inputs["cidrIpv4"] == "10.40.0.0/16"


def test_required_tags_are_set_once_on_the_provider() -> None:
    graph = synth()
    (provider,) = graph.of_type("pulumi:providers:aws")
    tags = provider.inputs["defaultTags"]
    if isinstance(tags, str):
        tags = json.loads(tags)
    assert tags["tags"] == {
        "owner": "ml-platform",
        "cost-center": "cc-4471",
        "data-classification": "confidential",
        "weightshift:model": "support-assistant",
        "weightshift:stack": "prod",
        "managed-by": "pulumi",
    }
    aws_resources = [r for r in graph.resources if r.type.startswith("aws:")]
    assert aws_resources
    assert all(r.provider and r.provider.startswith(provider.urn) for r in aws_resources)


def test_new_vpc_has_private_and_public_subnets_in_every_zone_with_nat_and_flow_logs() -> None:
    graph = synth()
    subnets = graph.of_type("aws:ec2/subnet:Subnet")
    zones = {r.inputs["availabilityZone"] for r in subnets}
    assert zones == {"us-east-1a", "us-east-1b", "us-east-1c"}
    assert all(r.inputs["mapPublicIpOnLaunch"] is False for r in subnets if "public" in r.name)
    assert len(graph.of_type("aws:ec2/natGateway:NatGateway")) == 3
    (flow,) = graph.of_type("aws:ec2/flowLog:FlowLog")
    assert flow.inputs["trafficType"] == "ALL"
    (default_sg,) = graph.of_type("aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert "ingress" not in default_sg.inputs or default_sg.inputs["ingress"] == []
    single = synth("network.natGateways=single")
    assert len(single.of_type("aws:ec2/natGateway:NatGateway")) == 1


def test_existing_vpc_creates_no_network_resources() -> None:
    graph = synth(
        "network={vpcId: vpc-0123456789abcdef0, vpcCidr: 10.9.0.0/16, "
        "publicSubnetIds: [subnet-00000000000000001, subnet-00000000000000002], "
        "privateSubnetIds: [subnet-00000000000000003, subnet-00000000000000004], "
        "publicSubnetCidrs: [10.9.0.0/24, 10.9.1.0/24], "
        "privateSubnetCidrs: [10.9.32.0/19, 10.9.64.0/19]}",
        "traffic.testRouteCidrs=[203.0.113.0/24]",
    )
    network = graph.named("network")
    assert [r.name for r in graph.resources if r.parent == network.urn] == []
    assert not graph.of_type("aws:ec2/vpc:Vpc")
    assert graph.named("traffic-alb", "LoadBalancer").inputs["subnets"] == [
        "subnet-00000000000000001",
        "subnet-00000000000000002",
    ]
    assert graph.named("traffic-blue").inputs["vpcId"] == "vpc-0123456789abcdef0"


def test_internal_load_balancer_uses_private_subnets() -> None:
    graph = synth("traffic.internal=true")
    alb = graph.named("traffic-alb", "LoadBalancer").inputs
    assert alb["internal"] is True
    private = {r.urn for r in graph.of_type("aws:ec2/subnet:Subnet") if "private" in r.name}
    assert len(alb["subnets"]) == len(private)
    assert all(s.startswith("subnet-") for s in alb["subnets"])


PHYSICAL_NAMES = ("name", "alarmName")
"""Inputs that set a resource's own name in the account (Pulumi autonames the rest); an S3
bucket's is ``bucket``."""


def physical_names(graph: Any) -> set[tuple[str, str]]:
    """(type, name) of every resource of the graph whose name is fixed in the account or in
    the cluster (namespaces: stacks may share an existing cluster)."""
    found = set()
    for resource in graph.resources:
        if resource.type.startswith("aws:"):
            keys = ("bucket",) if resource.type == "aws:s3/bucket:Bucket" else PHYSICAL_NAMES
            for key in keys:
                if isinstance(resource.inputs.get(key), str):
                    found.add((resource.type, resource.inputs[key]))
        if resource.type == "kubernetes:core/v1:Namespace":
            found.add((resource.type, resource.inputs["metadata"]["name"]))
    return found


def test_two_stacks_in_one_account_and_region_share_no_physical_name() -> None:
    """A second stack (staging beside prod) must not collide: the EKS cluster was once
    named "cluster" in every stack."""
    from tests.conftest import PROJECT
    from weightshift.preview.synth import apply_overrides, stack_config, synthesize

    values = apply_overrides(
        stack_config(PROJECT, "prod"), ["artifacts.bucketName=support-assistant-staging-art"]
    )
    staging = synthesize(PROJECT, "staging", values)
    prod = synth()
    shared = physical_names(prod) & physical_names(staging)
    assert shared == set()
    assert ("aws:eks/cluster:Cluster", "support-assistant-prod") in physical_names(prod)
    assert ("aws:eks/cluster:Cluster", "support-assistant-staging") in physical_names(staging)


def test_two_stacks_on_one_existing_cluster_use_their_own_namespaces() -> None:
    existing = (
        "cluster={existing: {name: shared, endpoint: 'https://ABC.gr7.us-east-1.eks.amazonaws."
        "com', certificateAuthority: TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ==,"
        " securityGroupId: sg-0123456789abcdef0, gpuNodeLabels: {pool: gpu}}}"
    )
    from tests.conftest import PROJECT
    from weightshift.preview.synth import apply_overrides, stack_config, synthesize

    prod = synth(existing)
    staging = synthesize(
        PROJECT,
        "staging",
        apply_overrides(
            stack_config(PROJECT, "prod"),
            [existing, "artifacts.bucketName=support-assistant-staging-art"],
        ),
    )
    namespaces = {
        graph.stack: {
            r.inputs["metadata"]["name"] for r in graph.of_type("kubernetes:core/v1:Namespace")
        }
        for graph in (prod, staging)
    }
    assert namespaces["prod"].isdisjoint(namespaces["staging"])


def unknown_inputs(graph: Any) -> list[str]:
    found: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        elif value == UNKNOWN:
            found.append(path)

    for resource in graph.resources:
        walk(resource.inputs, resource.name)
    return found


def test_every_input_the_engine_would_receive_is_in_the_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An input whose value comes from another resource's output appears, as a placeholder
    naming that output when only the provider knows it (the KMS alias's target key). In a
    preview synthesis an output no mock provides is unknown, and there must be none."""
    from tests.conftest import PROJECT
    from weightshift.preview.synth import apply_overrides, stack_config, synthesize

    graph = synth()
    alias = graph.named("artifacts-key", "Alias")
    assert alias.inputs["targetKeyId"] == "(known after deploy: artifacts-key.keyId)"
    values = apply_overrides(stack_config(PROJECT, "prod"), ["rollout.stage=2"])
    assert unknown_inputs(synthesize(PROJECT, "prod", values, preview=True)) == []
    # Without the placeholders the alias's target is unknown in a preview, and silently
    # missing from the graph otherwise.
    import weightshift.preview.synth as synth_module

    original = synth_module.computed_strings
    monkeypatch.setattr(
        synth_module,
        "computed_strings",
        lambda type_: () if type_ == "aws:kms/key:Key" else original(type_),
    )
    assert "artifacts-key.targetKeyId" in unknown_inputs(
        synthesize(PROJECT, "prod", values, preview=True)
    )
    assert "targetKeyId" not in synth().named("artifacts-key", "Alias").inputs


def test_the_program_synthesizes_after_an_asyncio_run_in_the_same_process() -> None:
    """``asyncio.run`` leaves the main thread with no current event loop; Pulumi's runtime
    needs one (a test of the gateway's parts ran before synthesis and broke it)."""
    import asyncio

    async def nothing() -> None:
        return None

    before = synth()  # the runtime's state is bound to the loop it ran on
    asyncio.run(nothing())
    assert synth().resources == before.resources
