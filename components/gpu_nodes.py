"""How pods find the cluster's nodes: the GPU taint and toleration, the pool labels, and
node affinity. Shared by the cluster (``components/gpu_cluster.py``), its controllers and
the inference pods."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from weightshift.config import ClusterConfig

GPU_TAINT_KEY = "nvidia.com/gpu"
"""Every GPU node carries ``nvidia.com/gpu=true:NoSchedule``; only pods that tolerate it
(the inference pods, the device plugin) land there."""
GPU_TOLERATION = {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}
POOL_LABEL = "weightshift.io/pool"
ACCELERATOR_LABEL = "k8s.amazonaws.com/accelerator"
SYSTEM_NODES = {POOL_LABEL: "system"}
"""Controllers run on the system node group, never on a GPU node."""


@dataclass(frozen=True)
class GpuClusterArgs:
    settings: ClusterConfig
    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[Sequence[str]]
    """Private subnets: control-plane network interfaces, nodes and pods."""
    target_group_arns: pulumi.Input[Sequence[str]]
    """The target groups the load balancer controller may register pods in."""
    region: str
    partition: str
    account: pulumi.Input[str]
    cluster_name: str
    """The EKS cluster's name: unique per account and region (``__main__`` derives it from
    the model and the stack)."""
    deployer_paths: Sequence[pulumi.Resource] = ()
    """The network path from the deployer to the private API (routes, attachment)."""


def required_node_affinity(labels: dict[str, str]) -> dict[str, Any]:
    """A node affinity that only nodes carrying every one of ``labels`` satisfy."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": key, "operator": "In", "values": [value]}
                            for key, value in sorted(labels.items())
                        ]
                    }
                ]
            }
        }
    }
