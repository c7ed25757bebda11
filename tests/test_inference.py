"""The GPU cluster and the blue and green inference stacks in the synthesized program."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from components.network import carve
from tests.conftest import PROJECT, synth
from weightshift.bundle import load_local
from weightshift.catalog import LocalCatalog
from weightshift.config import EKS_VERSIONS
from weightshift.plan import diff
from weightshift.synth import Graph, Resource, apply_overrides, stack_config, synthesize
from weightshift.versioning import BundleId, Version

NAME = "support-assistant"
SCHEMAS = Path(__file__).parent / "schemas"


@pytest.fixture(scope="module")
def graph() -> Graph:
    return synth()


def members(graph: Graph, colour: str) -> list[Resource]:
    stack = graph.named(colour, "InferenceStack")
    return [r for r in graph.resources if r.parent == stack.urn]


def copy_bundle(catalog: Path, source: str, version: str) -> BundleId:
    """Put a copy of an example bundle into ``catalog`` under another version."""
    target = catalog / NAME / f"v{version}"
    shutil.copytree(PROJECT / "bundles" / NAME / f"v{source}", target)
    return load_local(target).manifest(Version.parse(version)).id


def synth_with(catalog: Path, *overrides: str) -> Graph:
    values = apply_overrides(stack_config(PROJECT, "prod"), overrides)
    return synthesize(PROJECT, "prod", values, LocalCatalog(catalog))


def test_blue_and_green_are_identical_but_for_colour_names_bundle_and_replicas(
    tmp_path: Path,
) -> None:
    # Same content under two versions: whatever still differs comes from the code, not
    # from the bundles.
    blue = copy_bundle(tmp_path, "1.5.0", "1.5.0")
    green = copy_bundle(tmp_path, "1.5.0", "1.6.0")
    graph = synth_with(
        tmp_path, f"blue.version={blue}", f"green.version={green}", "blue.replicas=3"
    )

    def shape(colour: str, bundle: BundleId) -> list[str]:
        shapes = []
        for resource in members(graph, colour):
            inputs = json.loads(json.dumps(resource.inputs))
            if resource.type == "kubernetes:apps/v1:Deployment":
                assert inputs["spec"].pop("replicas") == (3 if colour == "blue" else 6)
            text = json.dumps({"type": resource.type, "name": resource.name, "in": inputs})
            for value, token in (
                (str(bundle), "<bundle>"),
                (f"v{bundle.version}-{bundle.digest}", "<version>"),
                (f"v{bundle.version}.json", "<manifest>"),
                (colour, "<colour>"),
            ):
                text = text.replace(value, token)
            # Made-up ids and ARNs of the colour's own resources (the mocks hash the name).
            shapes.append(re.sub(r"[0-9a-f]{6,}", "<id>", text))
        return sorted(shapes)

    blue_shape, green_shape = shape("blue", blue), shape("green", green)
    assert len(blue_shape) == 11
    assert blue_shape == green_shape


def test_gpu_nodes_are_tainted_and_only_the_inference_pods_tolerate_them(graph: Graph) -> None:
    gpu = graph.named("cluster-l40s", "NodeGroup").inputs
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["capacityType"] == "ON_DEMAND"
    assert gpu["instanceTypes"] == ["g6e.12xlarge"]
    assert gpu["labels"]["weightshift.io/pool"] == "gpu"
    system = graph.named("cluster-system", "NodeGroup").inputs
    assert "taints" not in system
    for colour in ("blue", "green"):
        pod = graph.named(colour, "Deployment").inputs["spec"]["template"]["spec"]
        assert pod["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        assert term["matchExpressions"] == [
            {"key": "weightshift.io/pool", "operator": "In", "values": ["gpu"]}
        ]
        (server,) = pod["containers"]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_nodes_require_imdsv2_and_encrypted_volumes_sized_for_weights(graph: Graph) -> None:
    template = graph.named("cluster-l40s", "LaunchTemplate").inputs
    assert template["metadataOptions"]["httpTokens"] == "required"
    assert template["metadataOptions"]["httpPutResponseHopLimit"] == 1
    (volume,) = template["blockDeviceMappings"]
    assert volume["ebs"]["encrypted"] == "true"
    assert volume["ebs"]["volumeSize"] == 500


def test_the_cluster_is_private_encrypted_and_logged(graph: Graph) -> None:
    cluster = graph.named("cluster", "Cluster").inputs
    assert cluster["version"] == "1.33"
    assert cluster["vpcConfig"]["endpointPublicAccess"] is False
    assert cluster["vpcConfig"]["endpointPrivateAccess"] is True
    assert cluster["encryptionConfig"]["resources"] == ["secrets"]
    assert set(cluster["enabledClusterLogTypes"]) == {
        "api",
        "audit",
        "authenticator",
        "controllerManager",
        "scheduler",
    }
    addons = {r.inputs["addonName"] for r in graph.of_type("aws:eks/addon:Addon")}
    assert addons == {"eks-pod-identity-agent", "vpc-cni"}
    releases = {
        r.inputs["chart"]: r.inputs["version"]
        for r in graph.of_type("kubernetes:helm.sh/v3:Release")
    }
    assert releases == {"nvidia-device-plugin": "0.17.1", "aws-load-balancer-controller": "1.14.0"}


def test_bottlerocket_needs_no_device_plugin() -> None:
    graph = synth(
        "cluster={gpuNodeGroups: [{name: l40s, instanceTypes: [g6e.12xlarge], "
        "amiType: BOTTLEROCKET_x86_64_NVIDIA, gpusPerNode: 4}]}"
    )
    charts = {r.inputs["chart"] for r in graph.of_type("kubernetes:helm.sh/v3:Release")}
    assert charts == {"aws-load-balancer-controller"}
    (volume,) = graph.named("cluster-l40s", "LaunchTemplate").inputs["blockDeviceMappings"]
    assert volume["deviceName"] == "/dev/xvdb"


def statements(graph: Graph, name: str) -> list[dict[str, Any]]:
    policy = json.loads(graph.named(name, "RolePolicy").inputs["policy"])
    return list(policy["Statement"])


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_the_pod_role_reads_only_its_own_bundle(graph: Graph) -> None:
    bucket = "arn:aws:s3:::support-assistant-artifacts-210987654321-use1"
    for colour in ("blue", "green"):
        bundle = BundleId.parse(str(getattr(graph.config, colour).version))
        folder = PROJECT / "bundles" / NAME / f"v{bundle.version}"
        blobs = sorted(load_local(folder).manifest(bundle.version).blobs())
        found = statements(graph, f"{colour}-pods")
        actions = {a for s in found for a in _listed(s["Action"])}
        assert actions == {
            "s3:GetObject",
            "s3:GetObjectVersion",
            "s3:ListBucketVersions",
            "kms:Decrypt",
        }
        assert all(s["Effect"] == "Allow" for s in found)
        read = next(s for s in found if "s3:GetObject" in _listed(s["Action"]))
        assert read["Resource"] == [
            f"{bucket}/manifests/{NAME}/v{bundle.version}.json",
            *[f"{bucket}/blobs/sha256/{sha}" for sha in blobs],
        ]
        decrypt = next(
            s for s in found if s["Action"] == "kms:Decrypt" or s["Action"] == ["kms:Decrypt"]
        )
        assert decrypt["Resource"] == graph.outputs["artifactKeyArn"]
        assert decrypt["Condition"] == {
            "StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}
        }
        association = graph.named(colour, "PodIdentityAssociation").inputs
        assert association["namespace"] == f"{NAME}-{colour}"
        assert association["serviceAccount"] == "inference"


def test_changing_only_the_candidate_version_changes_only_the_candidate(tmp_path: Path) -> None:
    shutil.copytree(PROJECT / "bundles", tmp_path, dirs_exist_ok=True)
    before = synth_with(tmp_path)
    patched = tmp_path / NAME / "v1.5.1"
    shutil.copytree(tmp_path / NAME / "v1.5.0", patched)
    (patched / "config/generation.json").write_text(
        json.dumps({"temperature": 0.1, "top_p": 0.9, "max_tokens": 1024, "stop": []})
    )
    bundle = load_local(patched).manifest(Version(1, 5, 1)).id
    after = synth_with(tmp_path, f"green.version={bundle}")
    green = after.named("green", "InferenceStack").urn
    rollback = after.named("rollback", "Rollback").urn  # the candidate's alarms and function
    changes = diff(before, after)
    assert changes
    assert {c.urn for c in changes} <= {
        r.urn for r in after.resources if r.parent in (green, rollback)
    }
    by_urn = after.by_urn()
    in_green = {f"{c.name} {c.type}" for c in changes if by_urn[c.urn].parent == green}
    assert in_green == {
        "green kubernetes:apps/v1:Deployment",
        "green-pods aws:iam/rolePolicy:RolePolicy",
    }
    # The candidate's alarms follow its version (the custom metrics carry it), and the
    # function records which version it rolls back.
    in_rollback = {c.name for c in changes if by_urn[c.urn].parent == rollback}
    assert in_rollback == {"rollback", "rollback-quality", "rollback-safety", "rollback-function"}


def test_a_colour_with_no_version_is_not_deployed() -> None:
    graph = synth("green.version=null")
    assert [r.name for r in graph.of_type("weightshift:index:InferenceStack")] == ["blue"]
    assert graph.named("traffic-green", "TargetGroup")


def test_pods_drain_for_the_deregistration_delay(graph: Graph) -> None:
    pod = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "180"]}}
    assert pod["terminationGracePeriodSeconds"] >= 180
    assert (
        server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] == 1800
    )
    args = server["args"]
    overrides = json.loads(args[args.index("--override-generation-config") + 1])
    assert overrides["temperature"] == 0.2
    (init,) = pod["initContainers"]
    assert init["args"][:3] == ["bundle", "pull", graph.config.green.version]
    assert graph.named("green", "PodDisruptionBudget").inputs["spec"]["maxUnavailable"] == 1


def test_only_the_alb_reaches_the_pods(graph: Graph) -> None:
    policy = graph.named("green", "NetworkPolicy").inputs["spec"]
    (rule,) = policy["ingress"]
    public, private = carve("10.40.0.0/16", 3)
    assert [peer["ipBlock"]["cidr"] for peer in rule["from"]] == public
    assert not set(public) & set(private)
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    sg_rule = graph.named("green-from-alb", "SecurityGroupIngressRule").inputs
    alb_sg = graph.named("traffic-alb", "SecurityGroup")
    assert sg_rule["referencedSecurityGroupId"].startswith("sg-")
    assert sg_rule["referencedSecurityGroupId"] != sg_rule["securityGroupId"]
    assert (sg_rule["fromPort"], sg_rule["toPort"]) == (8000, 8000)
    assert alb_sg.type == "aws:ec2/securityGroup:SecurityGroup"


def kubernetes_objects(graph: Graph) -> list[dict[str, Any]]:
    return [
        r.inputs
        for r in graph.resources
        if r.type.startswith("kubernetes:") and r.type != "kubernetes:helm.sh/v3:Release"
    ]


@pytest.mark.parametrize("kubernetes", EKS_VERSIONS)
def test_every_kubernetes_object_validates_against_the_configured_version(
    graph: Graph, kubernetes: str
) -> None:
    configured = synth(f'cluster.version="{kubernetes}"') if kubernetes != "1.33" else graph
    assert configured.named("cluster", "Cluster").inputs["version"] == kubernetes
    version = f"{configured.config.cluster.version}.0"
    objects = kubernetes_objects(configured)
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == [
        "Deployment",
        "Namespace",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "TargetGroupBinding",
    ]
    tgb = json.loads((SCHEMAS / "targetgroupbinding-v1beta1.json").read_text())
    for obj in objects:
        if obj["kind"] == "TargetGroupBinding":
            jsonschema.validate(obj, tgb)
        else:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_validation_catches_a_wrong_field(graph: Graph) -> None:
    deployment = json.loads(json.dumps(graph.named("green", "Deployment").inputs))
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.33.0", strict=True)
    tgb = json.loads(json.dumps(graph.named("green", "TargetGroupBinding").inputs))
    tgb["spec"]["targetGroupArn"] = tgb["spec"].pop("targetGroupARN")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            tgb, json.loads((SCHEMAS / "targetgroupbinding-v1beta1.json").read_text())
        )


def test_an_existing_cluster_is_used_as_it_is() -> None:
    graph = synth(
        "cluster={existing: {name: shared-gpu, endpoint: https://ABCDEF.gr7.us-east-1.eks."
        "amazonaws.com, certificateAuthority: TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJT, "
        "securityGroupId: sg-0123456789abcdef0, gpuNodeLabels: {karpenter.sh/nodepool: gpu}}}"
    )
    assert not graph.of_type("aws:eks/cluster:Cluster")
    assert not graph.of_type("aws:eks/nodeGroup:NodeGroup")
    assert not graph.of_type("kubernetes:helm.sh/v3:Release")
    (provider,) = graph.of_type("pulumi:providers:kubernetes")
    kubeconfig = json.loads(provider.inputs["kubeconfig"])
    assert kubeconfig["clusters"][0]["cluster"]["server"].startswith("https://ABCDEF.")
    assert kubeconfig["users"][0]["user"]["exec"]["args"][:4] == [
        "eks",
        "get-token",
        "--cluster-name",
        "shared-gpu",
    ]
    pod = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "karpenter.sh/nodepool", "operator": "In", "values": ["gpu"]}
    ]
    rule = graph.named("green-from-alb", "SecurityGroupIngressRule").inputs
    assert rule["securityGroupId"] == "sg-0123456789abcdef0"
    association = graph.named("green", "PodIdentityAssociation").inputs
    assert association["clusterName"] == "shared-gpu"
