"""Which node groups each pod of the stack can land on, decided from the graph alone.

A graph can be valid resource by resource and still schedule nothing: a chart's default
affinity on labels no node carries, a pod without the toleration for its node's taint, a
GPU pod on nodes where no device plugin advertises GPUs. This module evaluates the
Kubernetes scheduler's hard rules over the synthesized graph:

- node groups from the EKS managed node groups (their labels and taints, plus the labels
  every EKS node gets, ``facts.EKS_NODE_LABELS``);
- pods from our Deployments and from every Helm release, whose pod scheduling fields are the
  pinned chart's default values (``facts.py``) merged with our values the way Helm merges
  them (maps merged key by key, lists and scalars replaced, ``null`` deletes);
- the rules: ``nodeSelector`` (every label equal), required node affinity (any term, every
  expression of it), taints with effect NoSchedule or NoExecute (each tolerated), and a pod
  that requests ``nvidia.com/gpu`` only where a device plugin runs (a Bottlerocket NVIDIA
  node, or one the NVIDIA device plugin DaemonSet lands on).

Resources, CPU and memory are not modelled (they need instance sizes); soft preferences
(preferred affinity, PreferNoSchedule, spread) never block scheduling and are ignored.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from weightshift.facts import EKS_NODE_LABELS, NVIDIA_DEVICE_PLUGIN, chart_facts

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
POD_TEMPLATES = (
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:apps/v1:StatefulSet",
)
GPU_RESOURCE = "nvidia.com/gpu"
_EFFECTS = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": ""}
"""EKS API taint effects as Kubernetes spells them; PreferNoSchedule never blocks ("")."""


@dataclass(frozen=True)
class Item:
    """One resource as either the offline graph or the policy engine presents it."""

    type: str
    name: str
    props: Mapping[str, Any]


@dataclass(frozen=True)
class NodePool:
    name: str
    labels: dict[str, str]
    taints: tuple[tuple[str, str, str], ...]
    """(key, value, effect) with Kubernetes effect names; only blocking effects."""
    builtin_device_plugin: bool
    """Bottlerocket NVIDIA AMIs run the device plugin themselves."""


@dataclass(frozen=True)
class Workload:
    name: str
    """``<resource name>`` or ``<release name>/<chart workload>``."""
    node_selector: dict[str, str]
    affinity: dict[str, Any]
    tolerations: tuple[dict[str, Any], ...]
    gpus: int
    device_plugin: bool = False
    """This workload is the NVIDIA device plugin."""


@dataclass
class Placement:
    workload: Workload
    groups: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Node group -> why the pod cannot land there."""


def coalesce(defaults: Any, values: Any) -> Any:
    """Helm's merge of user values over a chart's defaults."""
    if not isinstance(defaults, dict) or not isinstance(values, dict):
        return copy.deepcopy(values)
    merged = copy.deepcopy(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = coalesce(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def node_pools(items: Iterable[Item]) -> list[NodePool]:
    pools = []
    for item in items:
        if item.type != NODE_GROUP:
            continue
        props = item.props
        taints = tuple(
            (str(t.get("key")), str(t.get("value") or ""), _EFFECTS.get(str(t.get("effect")), ""))
            for t in props.get("taints") or []
        )
        pools.append(
            NodePool(
                name=item.name,
                labels={
                    **EKS_NODE_LABELS,
                    **{str(k): str(v) for k, v in (props.get("labels") or {}).items()},
                },
                taints=tuple(t for t in taints if t[2]),
                builtin_device_plugin=str(props.get("amiType", "")).startswith("BOTTLEROCKET"),
            )
        )
    return pools


def _pod_fields(name: str, pod: Mapping[str, Any], device_plugin: bool = False) -> Workload:
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    gpus = max(
        (
            int(str((c.get("resources") or {}).get("limits", {}).get(GPU_RESOURCE, 0)))
            for c in containers
        ),
        default=0,
    )
    return Workload(
        name=name,
        node_selector={str(k): str(v) for k, v in (pod.get("nodeSelector") or {}).items()},
        affinity=dict(pod.get("affinity") or {}),
        tolerations=tuple(pod.get("tolerations") or ()),
        gpus=gpus,
        device_plugin=device_plugin,
    )


def workloads(items: Iterable[Item]) -> tuple[list[Workload], list[str]]:
    """Every pod-producing object, and the Helm releases that could not be read (a chart
    without recorded facts)."""
    found: list[Workload] = []
    unknown: list[str] = []
    for item in items:
        if item.type in POD_TEMPLATES:
            pod = ((item.props.get("spec") or {}).get("template") or {}).get("spec") or {}
            found.append(_pod_fields(item.name, pod))
        elif item.type == HELM_RELEASE:
            chart, version = str(item.props.get("chart")), str(item.props.get("version"))
            try:
                facts = chart_facts(chart, version)
            except KeyError as error:
                unknown.append(f"{item.name}: {error.args[0]}")
                continue
            values = coalesce(facts.defaults, dict(item.props.get("values") or {}))
            pod = {key: values.get(key) for key in ("nodeSelector", "affinity", "tolerations")}
            for workload in facts.workloads:
                found.append(
                    _pod_fields(
                        f"{item.name}/{workload}",
                        pod,
                        device_plugin=facts.chart == NVIDIA_DEVICE_PLUGIN.chart,
                    )
                )
    return found, unknown


def _tolerated(taint: tuple[str, str, str], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    key, value, effect = taint
    for toleration in tolerations:
        operator = toleration.get("operator") or "Equal"
        if toleration.get("effect") not in (None, "", effect):
            continue
        if not toleration.get("key"):
            if operator == "Exists":
                return True
            continue
        if toleration.get("key") != key:
            continue
        if operator == "Exists" or str(toleration.get("value") or "") == value:
            return True
    return False


def _expression_holds(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key"), expression.get("operator")
    values = [str(v) for v in expression.get("values") or []]
    present = key in labels
    if operator == "In":
        return present and labels[str(key)] in values
    if operator == "NotIn":
        return not present or labels[str(key)] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and values:
        try:
            actual, bound = int(labels[str(key)]), int(values[0])
        except ValueError:
            return False
        return actual > bound if operator == "Gt" else actual < bound
    return False


def _affinity_holds(affinity: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    required = (affinity.get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    return any(
        all(_expression_holds(e, labels) for e in term.get("matchExpressions") or [])
        for term in required.get("nodeSelectorTerms") or []
    )


def _refusal(workload: Workload, pool: NodePool, gpu_capable: bool) -> str | None:
    for key, value in workload.node_selector.items():
        if pool.labels.get(key) != value:
            return f"nodeSelector {key}={value} matches no label of the group"
    if not _affinity_holds(workload.affinity, pool.labels):
        return "required node affinity matches no label of the group"
    for taint in pool.taints:
        if not _tolerated(taint, workload.tolerations):
            return f"taint {taint[0]}={taint[1]}:{taint[2]} is not tolerated"
    if workload.gpus and not gpu_capable:
        return f"requests {GPU_RESOURCE} but no device plugin advertises GPUs there"
    return None


def placements(items: Iterable[Item]) -> tuple[list[Placement], list[str]]:
    """Where every workload can land, and the releases that could not be checked."""
    items = list(items)
    pools = node_pools(items)
    found, unknown = workloads(items)
    plugins = [w for w in found if w.device_plugin]
    gpu_capable = {
        pool.name: pool.builtin_device_plugin
        or any(_refusal(plugin, pool, gpu_capable=True) is None for plugin in plugins)
        for pool in pools
    }
    result = []
    for workload in found:
        placement = Placement(workload)
        for pool in pools:
            why = _refusal(workload, pool, gpu_capable[pool.name])
            if why is None:
                placement.groups.append(pool.name)
            else:
                placement.refused[pool.name] = why
        result.append(placement)
    return result, unknown
