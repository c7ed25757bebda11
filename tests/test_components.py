"""Components on their own, under Pulumi mocks (always @pulumi.runtime.test: see ARCHITECTURE)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest

from components.log_bucket import LogBucket, LogBucketArgs
from components.network import carve
from components.traffic import Traffic, TrafficArgs
from weightshift.config import TrafficConfig
from weightshift.preview.synth import mocked_state
from weightshift.stages import Weights

REGISTERED: dict[str, dict[str, Any]] = {}


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        REGISTERED[f"{args.typ}::{args.name}"] = args.inputs
        return mocked_state(args.typ, args.name, args.inputs, "eu-west-1", "aws")

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        raise AssertionError(f"unexpected invoke {args.token}")


pulumi.runtime.set_mocks(Mocks(), preview=False)

SETTINGS = TrafficConfig(
    certificate_arn="arn:aws:acm:eu-west-1:210987654321:certificate/5b0f3c1e-8d2a-4f6b-9c7e-1a2b3c4d5e6f"
)


def traffic(name: str, weights: Weights, mirror: bool = False) -> Traffic:
    component = Traffic(
        name,
        TrafficArgs(
            settings=SETTINGS,
            weights=weights,
            stickiness_seconds=0,
            mirror=mirror,
            vpc_id="vpc-0123456789abcdef0",
            vpc_cidr="10.1.0.0/16",
            nat_public_ips=["198.51.100.7"],
            subnet_ids=["subnet-00000000000000001", "subnet-00000000000000002"],
            region="eu-west-1",
            partition="aws",
        ),
    )
    component.listen()
    return component


@pulumi.runtime.test
def test_listener_forwards_by_the_given_weights() -> pulumi.Output[None]:
    component = traffic("t1", Weights(blue=750, green=250))

    def check(arns: dict[str, str]) -> None:
        listener = REGISTERED["aws:lb/listener:Listener::t1-https"]
        (action,) = listener["defaultActions"]
        groups = {g["arn"]: g["weight"] for g in action["forward"]["targetGroups"]}
        assert groups == {arns["blue"]: 750, arns["green"]: 250}

    # The listener's ARN resolves only once the listener is registered.
    return pulumi.Output.all(component.listener_arn, component.target_group_arns).apply(
        lambda both: check(both[1])
    )


@pulumi.runtime.test
def test_shadow_adds_a_weighted_mirror_target_group() -> pulumi.Output[None]:
    component = traffic("t2", Weights(blue=900, green=0, mirror=100), mirror=True)

    def check(arns: dict[str, str]) -> None:
        assert set(arns) == {"blue", "green", "mirror"}
        listener = REGISTERED["aws:lb/listener:Listener::t2-https"]
        (action,) = listener["defaultActions"]
        groups = {g["arn"]: g["weight"] for g in action["forward"]["targetGroups"]}
        assert groups[arns["mirror"]] == 100

    # The listener's ARN resolves only once the listener is registered.
    return pulumi.Output.all(component.listener_arn, component.target_group_arns).apply(
        lambda both: check(both[1])
    )


def test_mirror_weight_without_the_mirror_group_is_refused() -> None:
    with pytest.raises(ValueError, match="mirror target group is off"):
        traffic("t3", Weights(blue=900, green=0, mirror=100), mirror=False)


@pulumi.runtime.test
def test_log_bucket_without_elb_grants_only_denies_plain_http() -> pulumi.Output[None]:
    bucket = LogBucket("lb1", LogBucketArgs(region="eu-west-1", partition="aws", retention_days=30))

    def check(arn: str) -> None:
        policy = json.loads(REGISTERED["aws:s3/bucketPolicy:BucketPolicy::lb1-policy"]["policy"])
        assert [s["Sid"] for s in policy["Statement"]] == ["DenyInsecureTransport"]
        assert policy["Statement"][0]["Resource"] == [arn, f"{arn}/*"]
        lifecycle = REGISTERED[
            "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration::lb1-lifecycle"
        ]
        assert lifecycle["rules"][0]["expiration"]["days"] == 30

    return pulumi.Output.all(bucket.arn, bucket.ready.urn).apply(lambda both: check(both[0]))


@pulumi.runtime.test
def test_new_region_log_delivery_uses_the_service_principal_only() -> pulumi.Output[None]:
    bucket = LogBucket(
        "lb2",
        LogBucketArgs(region="eu-south-2", partition="aws", retention_days=30, elb_prefix="alb"),
    )

    def check(_: str) -> None:
        policy = json.loads(REGISTERED["aws:s3/bucketPolicy:BucketPolicy::lb2-policy"]["policy"])
        sids = [s["Sid"] for s in policy["Statement"]]
        assert sids == ["DenyInsecureTransport", "AlbLogDelivery"]

    return pulumi.Output.all(bucket.arn, bucket.ready.urn).apply(lambda both: check(both[0]))


def test_subnets_are_carved_without_overlap_and_private_ones_are_largest() -> None:
    import ipaddress

    public, private = carve("10.40.0.0/16", 3)
    nets = [ipaddress.IPv4Network(n) for n in public + private]
    for i, a in enumerate(nets):
        for b in nets[i + 1 :]:
            assert not a.overlaps(b)
    assert all(ipaddress.IPv4Network(n).prefixlen == 19 for n in private)
    assert all(ipaddress.IPv4Network(n).prefixlen == 22 for n in public)
    public6, private6 = carve("10.0.0.0/20", 6)
    assert len(public6) == len(private6) == 6


# --- ArtifactStore (read policy; the bucket's resources are asserted in test_artifact_store.py)

from weightshift.bundles.versioning import BundleId  # noqa: E402


def test_the_pod_read_policy_names_one_bundle_and_nothing_else() -> None:
    from components.artifact_store import bundle_read_policy

    bundle = BundleId.parse("support-assistant/v1.5.0-a1b2c3d4e5f6")
    digests = ["a" * 64, "b" * 64, "a" * 64]
    policy = json.loads(
        bundle_read_policy(
            "arn:aws:s3:::arts", "arn:aws:kms:eu-west-1:1:key/k", "eu-west-1", bundle, digests
        )
    )
    read, listing, decrypt = policy["Statement"]
    assert read["Action"] == ["s3:GetObject", "s3:GetObjectVersion"]
    assert read["Resource"] == [
        "arn:aws:s3:::arts/manifests/support-assistant/v1.5.0.json",
        f"arn:aws:s3:::arts/blobs/sha256/{'a' * 64}",
        f"arn:aws:s3:::arts/blobs/sha256/{'b' * 64}",
    ]
    assert listing["Condition"] == {
        "StringEquals": {"s3:prefix": "manifests/support-assistant/v1.5.0.json"}
    }
    assert decrypt["Condition"] == {
        "StringEquals": {"kms:ViaService": "s3.eu-west-1.amazonaws.com"}
    }
    actions = [a for st in policy["Statement"] for a in _listed(st["Action"])]
    assert not [a for a in actions if "Put" in a or "Delete" in a or a.endswith("*")]
    resources = [r for st in policy["Statement"] for r in _listed(st["Resource"])]
    assert not [r for r in resources if r.endswith("*")]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


@pulumi.runtime.test
def test_artifact_store_locks_encrypts_blocks_public_access_and_is_tls_only() -> pulumi.Output[
    None
]:
    from components.artifact_store import ArtifactStore, ArtifactStoreArgs
    from weightshift.config import ArtifactsConfig

    store = ArtifactStore(
        "arts1",
        ArtifactStoreArgs(
            settings=ArtifactsConfig(
                bucket_name="arts1-bucket", retention_mode="COMPLIANCE", retention_days=730
            ),
            region="eu-west-1",
            partition="aws",
        ),
    )

    def check(values: list[str]) -> None:
        bucket_arn, key_arn = values[:2]
        prefix = "aws:s3/"
        assert REGISTERED["aws:s3/bucket:Bucket::arts1"]["objectLockEnabled"] is True
        versioning = REGISTERED[f"{prefix}bucketVersioning:BucketVersioning::arts1-versioning"]
        assert versioning["versioningConfiguration"]["status"] == "Enabled"
        lock = REGISTERED[
            f"{prefix}bucketObjectLockConfiguration:BucketObjectLockConfiguration::arts1-object-lock"
        ]
        assert lock["rule"]["defaultRetention"] == {"mode": "COMPLIANCE", "days": 730}
        sse = REGISTERED[
            f"{prefix}bucketServerSideEncryptionConfiguration:"
            "BucketServerSideEncryptionConfiguration::arts1-encryption"
        ]["rules"][0]
        assert sse["applyServerSideEncryptionByDefault"] == {
            "sseAlgorithm": "aws:kms",
            "kmsMasterKeyId": key_arn,
        }
        assert sse["bucketKeyEnabled"] is True
        assert REGISTERED["aws:kms/key:Key::arts1-key"]["enableKeyRotation"] is True
        block = REGISTERED[
            f"{prefix}bucketPublicAccessBlock:BucketPublicAccessBlock::arts1-public-access"
        ]
        assert all(
            block[flag] is True
            for flag in (
                "blockPublicAcls",
                "blockPublicPolicy",
                "ignorePublicAcls",
                "restrictPublicBuckets",
            )
        )
        policy = json.loads(
            REGISTERED[f"{prefix}bucketPolicy:BucketPolicy::arts1-policy"]["policy"]
        )
        tls = next(s for s in policy["Statement"] if s["Sid"] == "DenyInsecureTransport")
        assert tls["Effect"] == "Deny"
        assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert tls["Resource"] == [bucket_arn, f"{bucket_arn}/*"]

    return pulumi.Output.all(
        store.bucket_arn, store.key_arn, *[resource.urn for resource in store.ready]
    ).apply(check)


# --- Rollback, InferenceStack, GpuCluster on their own


@pulumi.runtime.test
def test_rollback_component_wires_the_composite_to_the_function_and_stays_quiet_when_idle() -> (
    pulumi.Output[None]
):
    from components.rollback import Rollback, RollbackArgs
    from weightshift.config import RollbackConfig, Thresholds
    from weightshift.stages import Colour

    tg = "arn:aws:elasticloadbalancing:eu-west-1:210987654321:targetgroup"
    rollback = Rollback(
        "rb1",
        RollbackArgs(
            settings=RollbackConfig(),
            thresholds=Thresholds(),
            model="m",
            stack="s",
            candidate=Colour.BLUE,
            candidate_version="m/v2.0.0-0123456789ab",
            active=False,
            stage_weights=[0, 999],
            listener_arn="arn:aws:elasticloadbalancing:eu-west-1:210987654321:listener/app/a/1/2",
            target_group_arns={"blue": f"{tg}/b/1", "green": f"{tg}/g/2"},
            candidate_target_group_suffix="targetgroup/b/1",
            load_balancer_suffix="app/a/1",
            incident_bucket="arts",
            incident_bucket_arn="arn:aws:s3:::arts",
            incident_key_arn="arn:aws:kms:eu-west-1:210987654321:key/k",
            record_parameter="/weightshift/m/s/rollback",
            region="eu-west-1",
            partition="aws",
            account="210987654321",
        ),
    )

    def check(values: list[Any]) -> None:
        composite_name, function_name, settings = values
        composite = REGISTERED["aws:cloudwatch/compositeAlarm:CompositeAlarm::rb1"]
        assert composite["alarmName"] == composite_name == "m-s-blue-rollback"
        assert composite["actionsEnabled"] is False
        assert composite["alarmActions"][0].endswith(f":function:{function_name}")
        silent = REGISTERED["aws:cloudwatch/metricAlarm:MetricAlarm::rb1-no-answers"]
        assert silent["treatMissingData"] == "notBreaching"
        asked = next(q for q in silent["metricQueries"] if q["id"] == "asked")
        assert asked["metric"]["dimensions"]["TargetGroup"] == "targetgroup/b/1"
        assert settings["STABLE_TARGET_GROUP_ARN"] == f"{tg}/g/2"
        assert settings["CANDIDATE_TARGET_GROUP_ARN"] == f"{tg}/b/1"
        assert settings["STAGE_WEIGHTS"] == "0,999"

    return pulumi.Output.all(
        rollback.composite_alarm_name, rollback.function_name, rollback.settings
    ).apply(check)


@pulumi.runtime.test
def test_inference_stack_tolerates_the_gpu_taint_and_binds_its_target_group() -> pulumi.Output[
    None
]:
    import pulumi_kubernetes as k8s

    from components.inference_stack import InferenceStack, InferenceStackArgs
    from tests.conftest import PROJECT
    from weightshift.bundles.catalog import LocalCatalog
    from weightshift.config import ServingConfig
    from weightshift.stages import Colour

    bundle = LocalCatalog(PROJECT / "bundles").resolve(
        BundleId.parse("support-assistant/v1.5.0-d80719af096e")
    )
    digest = "sha256:" + "1" * 64
    stack = InferenceStack(
        "is1",
        InferenceStackArgs(
            colour=Colour.GREEN,
            model="support-assistant",
            namespace="support-assistant-staging-green",
            bundle=bundle,
            replicas=2,
            serving=ServingConfig(image=f"vllm/vllm-openai@{digest}", puller_image=f"w@{digest}"),
            port=8000,
            health_path="/health",
            deregistration_delay_seconds=120,
            target_group_arn="arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/g/2",
            bucket_name="arts",
            bucket_arn="arn:aws:s3:::arts",
            key_arn="arn:aws:kms:eu-west-1:1:key/k",
            cluster_name="c",
            alb_subnet_cidrs=["10.0.0.0/24"],
            gpu_node_labels={"weightshift.io/pool": "gpu"},
            region="eu-west-1",
            stack="staging",
            other_namespace="support-assistant-staging-blue",
            mirror_port=8001,
            idle_timeout_seconds=300,
            metrics_period_seconds=10,
        ),
        provider=k8s.Provider("is1-k8s", kubeconfig="{}"),
    )

    def check(values: list[str]) -> None:
        assert values[0] == "support-assistant-staging-green"
        deployment = REGISTERED["kubernetes:apps/v1:Deployment::is1"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        # Drain (120 s), then the answers in flight (the bundle's 120 s timeout), then stop.
        assert pod["terminationGracePeriodSeconds"] == 120 + 120 + 30
        gateway = pod["containers"][1]
        assert gateway["name"] == "gateway"
        assert gateway["args"][:2] == ["gateway", "--bundle"]
        assert "--guardrail" in gateway["args"]
        binding = REGISTERED["kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding::is1"]
        assert binding["spec"]["targetGroupARN"].endswith("targetgroup/g/2")
        assert binding["spec"]["serviceRef"] == {"name": "inference", "port": 8000}

    return pulumi.Output.all(stack.namespace, *[r.urn for r in stack.serving]).apply(check)


@pulumi.runtime.test
def test_gpu_cluster_taints_gpu_nodes_and_requires_imdsv2() -> pulumi.Output[None]:
    from components.gpu_cluster import GpuCluster, GpuClusterArgs
    from weightshift.config import ClusterConfig, NodeGroupConfig

    cluster = GpuCluster(
        "gc1",
        GpuClusterArgs(
            settings=ClusterConfig(
                gpu_node_groups=(NodeGroupConfig(name="h100", instance_types=("p5.48xlarge",)),),
                deployer_security_group_ids=("sg-0123456789abcdef0",),
            ),
            vpc_id="vpc-00000000000000001",
            subnet_ids=["subnet-00000000000000001", "subnet-00000000000000002"],
            target_group_arns=["arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/g/2"],
            region="eu-west-1",
            partition="aws",
            account="210987654321",
            cluster_name="m-staging",
        ),
    )

    def check(values: list[Any]) -> None:
        group = REGISTERED["aws:eks/nodeGroup:NodeGroup::gc1-h100"]
        assert group["taints"] == [
            {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
        ]
        template = REGISTERED["aws:ec2/launchTemplate:LaunchTemplate::gc1-h100"]
        assert template["metadataOptions"]["httpTokens"] == "required"
        policy = json.loads(
            REGISTERED["aws:iam/rolePolicy:RolePolicy::gc1-lb-controller"]["policy"]
        )
        register = next(
            s for s in policy["Statement"] if s["Sid"] == "RegisterPodsInOurTargetGroups"
        )
        assert register["Resource"] == ["arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/g/2"]
        assert REGISTERED["aws:eks/cluster:Cluster::gc1"]["name"] == "m-staging"
        assert (
            REGISTERED["aws:cloudwatch/logGroup:LogGroup::gc1-control-plane"]["name"]
            == "/aws/eks/m-staging/cluster"
        )
        deployer = REGISTERED[
            "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule::gc1-deployer-sg-0"
        ]
        assert deployer["referencedSecurityGroupId"] == "sg-0123456789abcdef0"
        assert (deployer["fromPort"], deployer["toPort"]) == (443, 443)
        scale = json.loads(REGISTERED["aws:iam/rolePolicy:RolePolicy::gc1-autoscaler"]["policy"])
        (asg,) = next(s for s in scale["Statement"] if s["Sid"] == "ScaleGpuGroupsOnly")["Resource"]
        assert asg.startswith(
            "arn:aws:autoscaling:eu-west-1:210987654321:autoScalingGroup:*:"
            "autoScalingGroupName/eks-h100-"
        )

    return pulumi.Output.all(
        cluster.cluster_name, *[resource.urn for resource in cluster.ready]
    ).apply(check)
