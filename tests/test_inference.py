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

from components.inference_stack import ZONE_SKEW
from components.network import carve
from tests.conftest import PROJECT, synth
from weightshift.bundles.catalog import LocalCatalog
from weightshift.bundles.manifest import load_local
from weightshift.bundles.versioning import BundleId, Version
from weightshift.config import EKS_VERSIONS
from weightshift.preview.plan import diff
from weightshift.preview.synth import Graph, Resource, apply_overrides, stack_config, synthesize

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
                # Blue is stable at its full size; green the candidate at stage 0, at the
                # capacity floor rounded to a whole node (weightshift/rollout/capacity.py), with its
                # stage marker.
                assert inputs["spec"].pop("replicas") == (3 if colour == "blue" else 2)
                marker = inputs["metadata"]["annotations"].pop("weightshift.io/stage", None)
                assert marker == (None if colour == "blue" else "canary 0")
                (zones,) = inputs["spec"]["template"]["spec"]["topologySpreadConstraints"]
                assert zones["maxSkew"] == ZONE_SKEW  # a constant: a size change rolls no pod
                skip = inputs["metadata"]["annotations"].pop("pulumi.com/skipAwait", None)
                assert skip == (None if colour == "blue" else "true")  # no weight: no wait
            text = json.dumps({"type": resource.type, "name": resource.name, "in": inputs})
            other = "green" if colour == "blue" else "blue"
            for value, token in (
                (str(bundle), "<bundle>"),
                (f"v{bundle.version}-{bundle.digest}", "<version>"),
                (f"v{bundle.version}.json", "<manifest>"),
                (f"v{bundle.version}-", "<version>-"),  # the guardrail's name
                (colour, "<colour>"),
                (other, "<other>"),  # where its mirror copies go, and who may send them
            ):
                text = text.replace(value, token)
            # Made-up ids and ARNs of the colour's own resources (the mocks hash the name).
            shapes.append(re.sub(r"[0-9a-f]{6,}", "<id>", text))
        return sorted(shapes)

    blue_shape, green_shape = shape("blue", blue), shape("green", green)
    assert len(blue_shape) == 13
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
        server, gateway = pod["containers"]
        assert server["resources"]["limits"]["nvidia.com/gpu"] == "2"
        assert "nvidia.com/gpu" not in gateway["resources"]["limits"]


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
    assert releases == {
        "nvidia-device-plugin": "0.17.1",
        "aws-load-balancer-controller": "1.14.0",
        "cluster-autoscaler": "9.59.0",
    }


def test_bottlerocket_needs_no_device_plugin() -> None:
    graph = synth(
        "cluster={gpuNodeGroups: [{name: l40s, instanceTypes: [g6e.12xlarge], "
        "amiType: BOTTLEROCKET_x86_64_NVIDIA, gpusPerNode: 4}], deployerCidrs: [10.20.8.0/22]}"
    )
    charts = {r.inputs["chart"] for r in graph.of_type("kubernetes:helm.sh/v3:Release")}
    assert charts == {"aws-load-balancer-controller", "cluster-autoscaler"}
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
        assert association["namespace"] == f"{NAME}-prod-{colour}"
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
    by_urn = {**before.by_urn(), **after.by_urn()}

    def under(urn: str, root: str) -> bool:
        while urn in by_urn:
            if urn == root:
                return True
            urn = by_urn[urn].parent or ""
        return False

    # Outside the colour and its alarms, only the candidate's target group changes: its tags
    # carry the evaluation verdict for the new bundle (here none: no report for v1.5.1).
    outside = [c for c in changes if not (under(c.urn, green) or under(c.urn, rollback))]
    assert [(c.action, c.name, c.type) for c in outside] == [
        ("update", "traffic-green", "aws:lb/targetGroup:TargetGroup")
    ]
    tags = after.named("traffic-green", "TargetGroup").inputs["tags"]
    assert tags["weightshift:evaluation-decision"] == "missing"
    assert tags["weightshift:evaluation-bundle"] == str(bundle)
    in_green = {
        f"{c.action} {c.name} {c.type.rsplit(':', 1)[-1]}" for c in changes if under(c.urn, green)
    }
    assert in_green == {
        "update green Deployment",
        "update green-pods RolePolicy",
        # The colour's guardrail is renamed for the new bundle; its safety configuration is
        # the same, so it keeps its version (a changed one would get a new version).
        "update green-guardrail Guardrail",
    }
    # The candidate's alarms read its gateways by colour, whichever version they run (a
    # rolling update keeps their heartbeat): only the function, which records the version it
    # rolls back, and the composite's description change.
    in_rollback = {c.name for c in changes if under(c.urn, rollback)}
    assert in_rollback == {"rollback", "rollback-function"}


def test_a_colour_with_no_version_is_not_deployed() -> None:
    graph = synth("green.version=null")
    assert [r.name for r in graph.of_type("weightshift:index:InferenceStack")] == ["blue"]
    assert graph.named("traffic-green", "TargetGroup")


def test_pods_drain_for_the_deregistration_delay(graph: Graph) -> None:
    pod = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]
    server, gateway = pod["containers"]
    # After draining, the gateway finishes the answers in flight (the bundle's timeout); the
    # model server outlives them.
    assert gateway["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "180"]}}
    assert server["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", str(180 + 120)]}}
    assert pod["terminationGracePeriodSeconds"] == 180 + 120 + 30
    assert pod["terminationGracePeriodSeconds"] >= 180
    assert (
        server["startupProbe"]["periodSeconds"] * server["startupProbe"]["failureThreshold"] == 1800
    )
    args = server["args"]
    overrides = json.loads(args[args.index("--override-generation-config") + 1])
    assert overrides["temperature"] == 0.2
    (init,) = pod["initContainers"]
    assert init["args"][:3] == ["bundle", "pull", graph.config.green.version]
    # Re-run over the same volume after a sandbox restart: kept when complete and verified.
    assert "--reuse" in init["args"]
    assert graph.named("green", "PodDisruptionBudget").inputs["spec"]["maxUnavailable"] == 1


def test_only_the_alb_reaches_the_pods(graph: Graph) -> None:
    policy = graph.named("green", "NetworkPolicy").inputs["spec"]
    rule, copies = policy["ingress"]
    public, private = carve("10.40.0.0/16", 3)
    assert [peer["ipBlock"]["cidr"] for peer in rule["from"]] == public
    assert not set(public) & set(private)
    # The gateway's ports only: the model server's port (8080) is never admitted.
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}, {"protocol": "TCP", "port": 8001}]
    assert copies == {
        "from": [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "support-assistant-prod-blue"}
                }
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8000}],
    }
    # Once for the stack: both colours' pods sit behind the cluster security group.
    sg_rule = graph.named("serving-from-alb", "SecurityGroupIngressRule").inputs
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
    rule = graph.named("serving-from-alb", "SecurityGroupIngressRule").inputs
    assert rule["securityGroupId"] == "sg-0123456789abcdef0"
    association = graph.named("green", "PodIdentityAssociation").inputs
    assert association["clusterName"] == "shared-gpu"


def pod_spec(graph: Graph, colour: str) -> dict[str, Any]:
    spec: dict[str, Any] = graph.named(colour, "Deployment").inputs["spec"]["template"]["spec"]
    return spec


def test_pulumi_waits_for_a_rolling_update_as_long_as_one_can_take(graph: Graph) -> None:
    """pulumi-kubernetes gives a Deployment 10 minutes unless told otherwise
    (facts.PULUMI_KUBERNETES_DEFAULT_AWAIT_SECONDS); six replicas loaded one at a time with a
    30-minute load budget each need hours."""
    from weightshift.facts import PULUMI_KUBERNETES_DEFAULT_AWAIT_SECONDS
    from weightshift.rollout.budget import rollout_budget

    for colour in ("blue", "green"):
        deployment = graph.named(colour, "Deployment")
        spec = deployment.inputs["spec"]
        budget = rollout_budget(
            replicas=6,  # the colour's full size: a stage's scale-up never outlasts it
            max_surge=spec["strategy"]["rollingUpdate"]["maxSurge"],
            startup_seconds=1800,
            bundle_bytes=1,
        )
        assert budget.waves == 6
        assert budget.per_pod_seconds >= 1800 + 600  # the load, plus a node and an image
        assert deployment.custom_timeouts == {
            "create": f"{budget.seconds}s",
            "update": f"{budget.seconds}s",
        }
        assert budget.seconds > 6 * 1800 > PULUMI_KUBERNETES_DEFAULT_AWAIT_SECONDS
        # Kubernetes restarts the progress clock whenever a pod turns ready: one pod's time.
        assert spec["progressDeadlineSeconds"] == budget.per_pod_seconds
        assert graph.outputs["inference"][colour]["rolloutBudgetSeconds"] == budget.seconds


def test_the_budget_grows_with_replicas_surge_load_and_bundle() -> None:
    from weightshift.rollout.budget import rollout_budget

    base = rollout_budget(replicas=6, max_surge=1, startup_seconds=1800, bundle_bytes=0)
    assert rollout_budget(
        replicas=12, max_surge=1, startup_seconds=1800, bundle_bytes=0
    ).seconds == (2 * base.seconds)
    assert rollout_budget(replicas=6, max_surge=3, startup_seconds=1800, bundle_bytes=0).waves == 2
    big = rollout_budget(replicas=6, max_surge=1, startup_seconds=1800, bundle_bytes=140 * 2**30)
    assert big.bundle_pull_seconds == 1434  # 140 GiB at 100 MiB/s
    assert rollout_budget(replicas=0, max_surge=1, startup_seconds=60, bundle_bytes=0).waves == 1
    assert "up to 4 h 36 min" in base.describe()


def test_the_server_has_a_user_name_under_an_arbitrary_uid(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's image has no user for UID 1000; torch's getpass.getuser() raises KeyError
    unless USER or LOGNAME is set (vllm-project/vllm#44548)."""
    import getpass
    import pwd

    pod = pod_spec(graph, "green")
    assert pod["securityContext"]["runAsUser"] == 1000
    server = pod["containers"][0]
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["HOME"] == "/tmp"

    def no_passwd_entry(uid: int) -> Any:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_passwd_entry)
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises((KeyError, OSError)):
        getpass.getuser()  # what torch's Inductor cache dir calls at import
    for name in ("USER", "LOGNAME"):
        monkeypatch.setenv(name, env[name])
    assert getpass.getuser() == "vllm"


def test_namespaces_hold_pods_unready_until_the_alb_sees_them_healthy(graph: Graph) -> None:
    from weightshift.facts import READINESS_GATE_NAMESPACE_LABEL

    for colour in ("blue", "green"):
        labels = graph.named(colour, "Namespace").inputs["metadata"]["labels"]
        key, value = READINESS_GATE_NAMESPACE_LABEL
        assert labels[key] == value == "enabled"
        assert key == "elbv2.k8s.aws/pod-readiness-gate-inject"


def test_add_ons_overwrite_the_self_managed_copies_a_new_cluster_starts_with(
    graph: Graph,
) -> None:
    for addon in graph.of_type("aws:eks/addon:Addon"):
        assert addon.inputs["resolveConflictsOnCreate"] == "OVERWRITE", addon.name
        assert addon.inputs["resolveConflictsOnUpdate"] == "OVERWRITE", addon.name


def test_the_autoscaler_grows_only_the_gpu_groups(graph: Graph) -> None:
    release = graph.named("cluster-autoscaler", "Release").inputs
    group = graph.named("cluster-l40s", "NodeGroup")
    (asg,) = [g["name"] for g in group.outputs["resources"][0]["autoscalingGroups"]]
    assert release["values"]["autoscalingGroups"] == [{"name": asg, "minSize": 3, "maxSize": 16}]
    assert release["values"]["image"]["tag"] == "v1.33.6"  # the cluster is 1.33
    assert release["values"]["nodeSelector"] == {"weightshift.io/pool": "system"}
    policy = json.loads(graph.named("cluster-autoscaler", "RolePolicy").inputs["policy"])
    grants = {s["Sid"]: s for s in policy["Statement"]}
    assert grants["ScaleGpuGroupsOnly"]["Resource"] == [
        f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:*:autoScalingGroupName/{asg}"
    ]
    assert grants["GpuNodeGroupTemplates"]["Resource"] == [group.outputs["arn"]]
    assert all(a.startswith(("autoscaling:Describe", "ec2:")) for a in grants["Describe"]["Action"])
    association = graph.named("cluster-autoscaler", "PodIdentityAssociation").inputs
    assert (association["namespace"], association["serviceAccount"]) == (
        "kube-system",
        release["values"]["rbac"]["serviceAccount"]["name"],
    )
    # The node groups keep the autoscaler's desired size across deploys.
    pool = graph.named("cluster-l40s", "NodeGroup").inputs["scalingConfig"]
    assert (pool["minSize"], pool["maxSize"]) == (3, 16)


def test_every_eks_cluster_version_has_an_autoscaler_release() -> None:
    from weightshift.facts import CLUSTER_AUTOSCALER_IMAGE_TAGS

    assert set(CLUSTER_AUTOSCALER_IMAGE_TAGS) == set(EKS_VERSIONS)
    for version, tag in CLUSTER_AUTOSCALER_IMAGE_TAGS.items():
        assert tag.startswith(f"v{version}.")


def test_the_deployer_reaches_the_private_api(graph: Graph) -> None:
    """The control plane's interfaces accept only its security groups (EKS user guide,
    cluster security group requirements): the deployer needs a rule on 443."""
    cluster = graph.named("cluster", "Cluster")
    (rule,) = [
        r
        for r in graph.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.name.startswith("cluster-deployer")
    ]
    assert rule.inputs["cidrIpv4"] == "10.20.8.0/22"
    assert (rule.inputs["fromPort"], rule.inputs["toPort"], rule.inputs["ipProtocol"]) == (
        443,
        443,
        "tcp",
    )
    assert (
        rule.inputs["securityGroupId"] == graph.named("cluster-api", "SecurityGroup").outputs["id"]
    )
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    # Every Kubernetes call goes through the provider: it waits for the rule.
    (provider,) = graph.of_type("pulumi:providers:kubernetes")
    assert rule.urn in provider.dependencies


def test_the_deployers_network_is_routed_through_the_transit_gateway(graph: Graph) -> None:
    (attachment,) = graph.of_type("aws:ec2transitgateway/vpcAttachment:VpcAttachment")
    assert attachment.inputs["transitGatewayId"] == "tgw-0a1b2c3d4e5f67890"
    private = [r for r in graph.of_type("aws:ec2/subnet:Subnet") if "private" in r.name]
    assert set(attachment.property_dependencies["subnetIds"]) == {r.urn for r in private}
    tables = [r for r in graph.of_type("aws:ec2/routeTable:RouteTable") if "private" in r.name]
    assert len(tables) == 3
    for table in tables:
        assert {"cidrBlock": "10.20.8.0/22", "transitGatewayId": "tgw-0a1b2c3d4e5f67890"} in (
            table.inputs["routes"]
        )
        assert attachment.urn in table.dependencies  # the route waits for the attachment
    (provider,) = graph.of_type("pulumi:providers:kubernetes")
    assert attachment.urn in provider.dependencies
    assert {t.urn for t in tables} <= set(provider.dependencies)


def test_the_deployer_is_admitted_by_a_group_of_the_control_planes_own(graph: Graph) -> None:
    """Not on the cluster security group, which nodes and pods share: there the rule would
    open every pod listening on 443 to the deployer's network."""
    api = graph.named("cluster-api", "SecurityGroup")
    cluster = graph.named("cluster", "Cluster")
    assert cluster.inputs["vpcConfig"]["securityGroupIds"] == [api.outputs["id"]]
    (rule,) = [
        r
        for r in graph.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        if r.name.startswith("cluster-deployer")
    ]
    assert rule.inputs["securityGroupId"] == api.outputs["id"]
    assert rule.inputs["securityGroupId"] != cluster.outputs["vpcConfig"]["clusterSecurityGroupId"]


def test_gpu_nodes_say_they_will_have_gpus_so_the_autoscaler_waits_for_the_plugin(
    graph: Graph,
) -> None:
    gpu = graph.named("cluster-l40s", "NodeGroup").inputs["labels"]
    assert gpu["k8s.amazonaws.com/accelerator"] == "nvidia-g6e"
    system = graph.named("cluster-system", "NodeGroup").inputs["labels"]
    assert "k8s.amazonaws.com/accelerator" not in system


def test_the_load_balancer_controller_runs_only_what_its_role_allows(graph: Graph) -> None:
    values = graph.named("cluster-lb-controller", "Release").inputs["values"]
    for flag in (
        "enableServiceMutatorWebhook",
        "enableShield",
        "enableWaf",
        "enableWafv2",
        "enableBackendSecurityGroup",
        "createIngressClassResource",
    ):
        assert values[flag] is False, flag
    assert values["controllerConfig"]["featureGates"] == {"EnableServiceController": False}
    assert values["ingressClassParams"] == {"create": False}


def test_a_bundle_of_many_files_still_fits_the_pod_roles_policy(tmp_path: Path) -> None:
    """IAM allows 10,240 characters of inline policy per role (facts.py); naming every blob
    of a bundle with hundreds of files would fail PutRolePolicy."""
    from components.iam import policy_size
    from weightshift.facts import IAM_ROLE_INLINE_POLICY_CHARACTERS

    blue = copy_bundle(tmp_path, "1.4.2", "1.4.2")
    target = tmp_path / NAME / "v1.6.0"
    shutil.copytree(PROJECT / "bundles" / NAME / "v1.5.0", target)
    for index in range(200):
        (target / "prompt" / "few_shot" / f"extra-{index:03d}.json").write_text(
            json.dumps([{"input": f"question {index}", "output": f"answer {index}"}])
        )
    many = load_local(target).manifest(Version(1, 6, 0)).id
    graph = synth_with(tmp_path, f"blue.version={blue}", f"green.version={many}")
    green = graph.named("green-pods", "RolePolicy").inputs["policy"]
    assert policy_size(green) <= IAM_ROLE_INLINE_POLICY_CHARACTERS
    (read,) = [s for s in json.loads(green)["Statement"] if s["Sid"] == "ReadBundleObjects"]
    assert read["Resource"][0].endswith(f"manifests/{NAME}/v1.6.0.json")
    assert read["Resource"][1].endswith("/blobs/sha256/*")
    small = json.loads(graph.named("blue-pods", "RolePolicy").inputs["policy"])
    (exact,) = [s for s in small["Statement"] if s["Sid"] == "ReadBundleObjects"]
    assert not any(r.endswith("*") for r in exact["Resource"])  # a small bundle: each blob


def test_every_pod_runs_the_gateway_in_front_of_the_model_server(graph: Graph) -> None:
    """The ALB reaches the gateway (8000, mirror 8001); the gateway reaches vLLM on
    localhost:8080, with its colour, its guardrail, its metrics and the other colour to copy
    mirrored requests to."""
    for colour, other in (("blue", "green"), ("green", "blue")):
        pod = graph.named(colour, "Deployment").inputs["spec"]["template"]["spec"]
        server, gateway = pod["containers"]
        assert server["args"][server["args"].index("--port") + 1] == "8080"
        assert gateway["command"] == ["weightshift"]
        assert gateway["image"] == graph.config.serving.puller_image
        args = gateway["args"]

        def arg(flag: str, given: list[str] = args) -> str:
            return given[given.index(flag) + 1]

        assert args[0] == "gateway"
        assert arg("--bundle") == "/bundle"
        assert arg("--upstream") == "http://127.0.0.1:8080"
        assert arg("--colour") == colour
        assert (arg("--listen"), arg("--mirror-listen")) == ("0.0.0.0:8000", "0.0.0.0:8001")
        assert arg("--mirror-to") == (
            f"http://inference.support-assistant-prod-{other}.svc.cluster.local:8000"
        )
        assert (arg("--metrics"), arg("--metrics-interval")) == ("cloudwatch", "10")
        assert arg("--region") == "us-east-1"
        # Keep-alive beyond the ALB's idle timeout: the ALB, not the pod, closes idle
        # connections (a pod closing first races a request into a 502).
        alb = graph.named("traffic-alb", "LoadBalancer").inputs
        assert int(arg("--keep-alive")) > alb["idleTimeout"]
        assert arg("--guardrail").startswith(f"(known after deploy: {colour}-guardrail.")
        assert arg("--shadow-prefix") == "shadow"
        bucket = graph.named("shadow-records", "Bucket").outputs["bucket"]
        assert arg("--shadow-bucket") == bucket
        assert [p["containerPort"] for p in gateway["ports"]] == [8000, 8001]
        assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert gateway["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
        context = gateway["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["runAsNonRoot"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        (bundle,) = [m for m in gateway["volumeMounts"] if m["name"] == "bundle"]
        assert bundle["readOnly"] is True


def test_the_gateway_may_send_its_metrics_apply_its_guardrail_and_write_shadow_pairs_only(
    graph: Graph,
) -> None:
    for colour in ("blue", "green"):
        policy = json.loads(graph.named(f"{colour}-gateway", "RolePolicy").inputs["policy"])
        grants = {s["Sid"]: s for s in policy["Statement"]}
        # The guardrail's grant is a policy of its own: removing it is a delete, which Pulumi
        # runs after the Deployment (whose old pods still apply it) has rolled.
        own = json.loads(graph.named(f"{colour}-guardrail", "RolePolicy").inputs["policy"])
        (guardrail,) = own["Statement"]
        grants[guardrail["Sid"]] = guardrail
        assert set(grants) == {
            "PutGatewayMetrics",
            "DeriveFeedbackKey",
            "ApplyBundleGuardrail",
            "WriteShadowPairs",
        }
        key = graph.named("serving-feedback", "Key").outputs["arn"]
        derive = grants["DeriveFeedbackKey"]
        assert (derive["Action"], derive["Resource"]) == (["kms:GenerateMac"], [key])
        assert derive["Condition"] == {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_256"}}
        metrics = grants["PutGatewayMetrics"]
        assert metrics["Action"] == ["cloudwatch:PutMetricData"]
        # PutMetricData has no resource type: the namespace condition is the limit.
        assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": "weightshift"}}
        guardrail = grants["ApplyBundleGuardrail"]
        assert guardrail["Action"] == ["bedrock:ApplyGuardrail"]
        assert guardrail["Resource"] == [f"(known after deploy: {colour}-guardrail.guardrailArn)"]
        shadow = grants["WriteShadowPairs"]
        bucket = graph.named("shadow-records", "Bucket").outputs["bucket"]
        assert (shadow["Action"], shadow["Resource"]) == (
            ["s3:PutObject"],
            [f"arn:aws:s3:::{bucket}/shadow/*"],
        )
        assert all(s["Effect"] == "Allow" for s in policy["Statement"])


def test_each_colour_has_the_guardrail_of_its_own_bundle(graph: Graph) -> None:
    guardrails = {r.name: r.inputs for r in graph.of_type("aws:bedrock/guardrail:Guardrail")}
    assert set(guardrails) == {"blue-guardrail", "green-guardrail"}
    for colour in ("blue", "green"):
        version = getattr(graph.config, colour).version
        found = guardrails[f"{colour}-guardrail"]
        assert found["description"].startswith(f"Moderation of {version} ({colour})")
        release = BundleId.parse(version).version
        safety = PROJECT / "bundles" / NAME / f"v{release}" / "config" / "safety.json"
        refusal = json.loads(safety.read_text())["refusal_message"]
        assert found["blockedInputMessaging"] == found["blockedOutputsMessaging"] == refusal
    versions = {
        r.name: r.inputs for r in graph.of_type("aws:bedrock/guardrailVersion:GuardrailVersion")
    }
    # A published guardrail version is what the pods apply; the old one outlives the update
    # (pods of the previous ReplicaSet still name it while they drain).
    assert all(v["skipDestroy"] is True for v in versions.values())


def test_the_weightshift_image_runs_as_the_user_the_pods_require(graph: Graph) -> None:
    """The Dockerfile builds serving.pullerImage (init container and gateway): its user is
    numeric and the pods' own, its entrypoint the command they run."""
    dockerfile = (PROJECT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, flags=re.MULTILINE)
    (entrypoint,) = re.findall(r"^ENTRYPOINT (\[.*\])$", dockerfile, flags=re.MULTILINE)
    pod = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert (int(user[0]), int(user[1])) == (context["runAsUser"], context["runAsGroup"])
    gateway = pod["containers"][1]
    (init,) = pod["initContainers"]
    assert gateway["command"] == init["command"] == json.loads(entrypoint)
    assert "-c constraints.txt" in dockerfile


def test_local_moderation_is_refused_for_a_bundle_that_needs_a_classifier(
    tmp_path: Path,
) -> None:
    """Blocked categories need the Bedrock guardrail: a local moderator would serve the
    bundle with them silently off."""
    from weightshift.preview.synth import SynthError

    with pytest.raises(SynthError, match=r"serving.moderator is local, which does not enforce "):
        synth("serving.moderator=local")
    blue = copy_bundle(tmp_path, "1.4.2", "1.4.2")
    green = copy_bundle(tmp_path, "1.5.0", "1.5.0")
    for version in ("1.4.2", "1.5.0"):
        safety_file = tmp_path / NAME / f"v{version}" / "config/safety.json"
        safety = json.loads(safety_file.read_text())
        safety["blocked_categories"] = []
        safety["blocked_terms"] = ["wire the money"]
        safety_file.write_text(json.dumps(safety))
    blue = BundleId.parse(str(load_local(tmp_path / NAME / "v1.4.2").manifest(blue.version).id))
    green = BundleId.parse(str(load_local(tmp_path / NAME / "v1.5.0").manifest(green.version).id))
    graph = synth_with(
        tmp_path, "serving.moderator=local", f"blue.version={blue}", f"green.version={green}"
    )
    assert graph.of_type("aws:bedrock/guardrail:Guardrail") == []
    gateway = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]["containers"][1]
    assert "--guardrail" not in gateway["args"]
    policy = json.loads(graph.named("green-gateway", "RolePolicy").inputs["policy"])
    assert "ApplyBundleGuardrail" not in {s["Sid"] for s in policy["Statement"]}
    assert not [r for r in graph.resources if r.name == "green-guardrail"]


def test_vllm_receives_only_the_generation_defaults_it_honours(graph: Graph) -> None:
    from weightshift.facts import VLLM_GENERATION_CONFIG_KEYS
    from weightshift.preview.plan import ROLLS_PODS, SERVER_GENERATION_KEYS

    server = graph.named("green", "Deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    overrides = json.loads(server["args"][server["args"].index("--override-generation-config") + 1])
    # vLLM drops every other key silently (vllm/config/model.py, get_diff_sampling_param).
    assert set(overrides) <= set(VLLM_GENERATION_CONFIG_KEYS)
    assert "presence_penalty" not in overrides
    assert "frequency_penalty" not in overrides
    generation = json.loads(
        (PROJECT / "bundles/support-assistant/v1.5.0/config/generation.json").read_text()
    )
    named = {"max_new_tokens": "max_tokens"}
    assert {named.get(k, k): v for k, v in overrides.items()} == {
        k: generation.get(k, v)
        for k, v in {named.get(k, k): v for k, v in overrides.items()}.items()
    }
    # What the plan tells a reviewer is what the server is given.
    assert sorted(named.get(k, k) for k in overrides) == sorted(SERVER_GENERATION_KEYS)
    assert ", ".join(SERVER_GENERATION_KEYS) in ROLLS_PODS
