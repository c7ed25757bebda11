"""Where every pod of the synthesized stack can land: node groups (labels, taints) against
our Deployments and every Helm release's pods (pinned chart defaults merged with our
values, as Helm merges them)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import synth
from weightshift.facts import CHARTS, NVIDIA_DEVICE_PLUGIN
from weightshift.preview.synth import Graph
from weightshift.rollout.scheduling import Item, Workload, coalesce, placements


def items(graph: Graph) -> list[Item]:
    return [Item(r.type, r.name, r.inputs) for r in graph.resources]


def where(graph: Graph) -> dict[str, list[str]]:
    found, unknown = placements(items(graph))
    assert unknown == []
    return {p.workload.name: p.groups for p in found}


def test_every_pod_of_the_prod_stack_lands_where_it_belongs() -> None:
    assert where(synth()) == {
        "cluster-nvidia-device-plugin/DaemonSet nvidia-device-plugin": ["cluster-l40s"],
        "cluster-lb-controller/Deployment aws-load-balancer-controller": ["cluster-system"],
        "cluster-autoscaler/Deployment cluster-autoscaler": ["cluster-system"],
        "blue": ["cluster-l40s"],
        "green": ["cluster-l40s"],
    }


def test_with_several_gpu_groups_gpu_pods_may_use_any_and_controllers_none() -> None:
    graph = synth(
        "cluster.gpuNodeGroups=[{name: l40s, instanceTypes: [g6e.12xlarge], gpusPerNode: 4},"
        " {name: h100, instanceTypes: [p5.48xlarge], gpusPerNode: 8,"
        " amiType: BOTTLEROCKET_x86_64_NVIDIA}]"
    )
    found = where(graph)
    assert found["green"] == ["cluster-h100", "cluster-l40s"]
    assert found["cluster-nvidia-device-plugin/DaemonSet nvidia-device-plugin"] == [
        "cluster-h100",
        "cluster-l40s",
    ]
    assert found["cluster-autoscaler/Deployment cluster-autoscaler"] == ["cluster-system"]


def test_the_charts_default_affinity_alone_lands_the_device_plugin_nowhere() -> None:
    """NVIDIA/k8s-device-plugin#708: the 0.17.x default affinity needs node-feature-discovery
    labels (facts.NVIDIA_DEVICE_PLUGIN); EKS GPU nodes have none of them."""
    graph = synth()
    release = graph.named("cluster-nvidia-device-plugin", "Release")
    as_before = {k: v for k, v in release.inputs["values"].items() if k != "affinity"}
    changed = [
        Item(r.type, r.name, {**r.inputs, "values": as_before} if r is release else r.inputs)
        for r in graph.resources
    ]
    found, _ = placements(changed)
    by_name = {p.workload.name: p for p in found}
    plugin = by_name["cluster-nvidia-device-plugin/DaemonSet nvidia-device-plugin"]
    assert plugin.groups == []
    assert plugin.refused["cluster-l40s"] == "required node affinity matches no label of the group"
    # No device plugin anywhere: no node advertises nvidia.com/gpu, inference stays Pending.
    assert by_name["green"].groups == []
    assert "no device plugin advertises GPUs" in by_name["green"].refused["cluster-l40s"]


def test_an_inference_pod_without_the_gpu_toleration_lands_nowhere() -> None:
    graph = synth()
    deployment = graph.named("green", "Deployment")
    spec = deployment.inputs["spec"]
    pod = {**spec["template"]["spec"], "tolerations": []}
    untolerated = {**spec, "template": {**spec["template"], "spec": pod}}
    changed = [
        Item(r.type, r.name, {**r.inputs, "spec": untolerated} if r is deployment else r.inputs)
        for r in graph.resources
    ]
    found, _ = placements(changed)
    (green,) = [p for p in found if p.workload.name == "green"]
    assert green.groups == []
    assert green.refused["cluster-l40s"] == "taint nvidia.com/gpu=true:NoSchedule is not tolerated"


def test_an_existing_cluster_has_no_node_groups_to_check() -> None:
    graph = synth(
        "cluster={existing: {name: shared, endpoint: 'https://ABC.gr7.us-east-1.eks.amazonaws."
        "com', certificateAuthority: TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ==,"
        " securityGroupId: sg-0123456789abcdef0, gpuNodeLabels: {pool: gpu}}}"
    )
    found, unknown = placements(items(graph))
    assert unknown == []
    assert all(p.groups == [] and p.refused == {} for p in found)


def test_helm_merges_maps_replaces_lists_and_null_deletes() -> None:
    defaults = {"a": {"x": 1, "y": [1, 2]}, "b": [1], "c": 3}
    assert coalesce(defaults, {"a": {"y": [9]}, "b": [], "c": None}) == {
        "a": {"x": 1, "y": [9]},
        "b": [],
    }
    assert coalesce(defaults, {"a": {}}) == defaults  # an empty map removes nothing


def test_the_recorded_chart_defaults_are_what_the_charts_ship() -> None:
    """A spot check that the facts are the charts' own: the device plugin's default affinity
    names node-feature-discovery's NVIDIA PCI label and tolerates the GPU taint."""
    terms = NVIDIA_DEVICE_PLUGIN.defaults["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    keys = {e["key"] for term in terms for e in term["matchExpressions"]}
    assert keys == {
        "feature.node.kubernetes.io/pci-10de.present",
        "feature.node.kubernetes.io/cpu-model.vendor_id",
        "nvidia.com/gpu.present",
    }
    for versions in CHARTS.values():
        for facts in versions.values():
            assert facts.source
            assert facts.workloads
            assert set(facts.defaults) == {"nodeSelector", "affinity", "tolerations"}


def _pool(taints: list[dict[str, str]], labels: dict[str, str] | None = None) -> Item:
    return Item(
        "aws:eks/nodeGroup:NodeGroup",
        "pool",
        {"labels": labels or {}, "taints": taints, "amiType": "AL2023_x86_64_STANDARD"},
    )


def _pod(**fields: Any) -> Item:
    return Item("kubernetes:apps/v1:Deployment", "pod", {"spec": {"template": {"spec": fields}}})


@pytest.mark.parametrize(
    ("toleration", "lands"),
    [
        ({"key": "k", "operator": "Exists"}, True),
        ({"operator": "Exists"}, True),  # an empty key with Exists tolerates everything
        ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, True),
        ({"key": "k", "value": "v"}, True),  # operator defaults to Equal
        ({"key": "k", "operator": "Equal", "value": "other"}, False),
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, False),
        ({"key": "other", "operator": "Exists"}, False),
    ],
)
def test_tolerations_follow_the_kubernetes_rules(toleration: dict[str, str], lands: bool) -> None:
    pool = _pool([{"key": "k", "value": "v", "effect": "NO_SCHEDULE"}])
    (placement,), _ = placements([pool, _pod(tolerations=[toleration])])
    assert bool(placement.groups) is lands


def test_prefer_no_schedule_never_blocks() -> None:
    pool = _pool([{"key": "k", "value": "v", "effect": "PREFER_NO_SCHEDULE"}])
    (placement,), _ = placements([pool, _pod()])
    assert placement.groups == ["pool"]


@pytest.mark.parametrize(
    ("expression", "lands"),
    [
        ({"key": "tier", "operator": "In", "values": ["gpu", "x"]}, True),
        ({"key": "tier", "operator": "NotIn", "values": ["gpu"]}, False),
        ({"key": "tier", "operator": "Exists"}, True),
        ({"key": "tier", "operator": "DoesNotExist"}, False),
        ({"key": "gpus", "operator": "Gt", "values": ["3"]}, True),
        ({"key": "gpus", "operator": "Lt", "values": ["3"]}, False),
        ({"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}, True),
    ],
)
def test_required_node_affinity_follows_the_kubernetes_rules(
    expression: dict[str, Any], lands: bool
) -> None:
    pool = _pool([], {"tier": "gpu", "gpus": "4"})
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [expression]}]
            }
        }
    }
    (placement,), _ = placements([pool, _pod(affinity=affinity)])
    assert bool(placement.groups) is lands


def test_a_workload_is_described_by_its_pod_fields() -> None:
    (placement,), _ = placements(
        [
            _pool([]),
            _pod(
                nodeSelector={"kubernetes.io/arch": "amd64"},
                containers=[{"resources": {"limits": {"nvidia.com/gpu": "2"}}}],
            ),
        ]
    )
    assert placement.workload == Workload(
        name="pod",
        node_selector={"kubernetes.io/arch": "amd64"},
        affinity={},
        tolerations=(),
        gpus=2,
    )
    assert placement.refused == {
        "pool": "requests nvidia.com/gpu but no device plugin advertises GPUs there"
    }
