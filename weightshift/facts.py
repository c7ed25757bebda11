"""Platform facts weightshift relies on, each with where it comes from.

The offline proof sees the shape of the graph, not how AWS, Kubernetes or a Helm chart
will treat it. Every behaviour of theirs that the program depends on is written down here
as data, with its source, and the tests check the synthesized graph against it: which
nodes a chart's pods can land on (its default values at the pinned version, merged with
ours), how long Pulumi waits for a Deployment, which retention periods CloudWatch takes.
A fact that changes upstream changes here, in review, with its new source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CLOUDWATCH_LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
"""The only values a log group's ``retentionInDays`` takes; anything else is refused by
``PutRetentionPolicy`` (CloudWatch Logs API reference, PutRetentionPolicy, retentionInDays:
"Possible values are: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
1827, 2192, 2557, 2922, 3288, and 3653")."""

VLLM_GENERATION_CONFIG_KEYS = (
    "repetition_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_new_tokens",
)
"""The only keys of ``--override-generation-config`` vLLM applies: its
``ModelConfig.get_diff_sampling_param`` keeps these (``available_params``) and drops the
rest silently (vllm-project/vllm, ``vllm/config/model.py``). They are request defaults,
except ``max_new_tokens``, which the serving layer also applies as a ceiling on every
request (``override_max_tokens``; the gateway's own cap is the same bundle value). A
bundle parameter outside this list (presence and frequency penalties, stop, seed) is the
gateway's alone: it sets it on every request, so passing it to vLLM would change the
Deployment (and roll every GPU pod) for an argument with no effect."""

IAM_ROLE_INLINE_POLICY_CHARACTERS = 10_240
"""IAM quota: "Role policy size cannot exceed 10,240 characters" for all of a role's inline
policies together; whitespace is not counted (IAM user guide, "IAM and AWS STS quotas").
A larger ``PutRolePolicy`` fails with LimitExceeded."""

PULUMI_KUBERNETES_DEFAULT_AWAIT_SECONDS = 600
"""pulumi-kubernetes waits this long for a Deployment to become ready on create or update
unless the resource sets ``customTimeouts`` or the ``pulumi.com/timeoutSeconds`` annotation
(Pulumi docs, Kubernetes provider, "Resource await logic": "Deployment ... 10 minutes")."""

TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"
"""pulumi-kubernetes reads a resource's await timeout from this annotation (same page)."""

EKS_NODE_LABELS = {
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
}
"""Labels the kubelet puts on every node of an x86_64 EKS AMI (Kubernetes well-known labels:
kubernetes.io/os and kubernetes.io/arch), which charts use as node selectors. EKS managed
node groups add ``eks.amazonaws.com/nodegroup`` and ``eks.amazonaws.com/capacityType`` too
(EKS user guide, "Managed node groups", node labels)."""

READINESS_GATE_NAMESPACE_LABEL = ("elbv2.k8s.aws/pod-readiness-gate-inject", "enabled")
"""The AWS Load Balancer Controller injects its target-health readiness gate into pods of
namespaces with this label (its pod mutating webhook's namespaceSelector, chart
aws-load-balancer-controller 1.14.0 ``templates/webhook.yaml``; controller docs
``deploy/pod_readiness_gate.md``). Without it a rolling update can remove old pods before the
ALB sees the new ones healthy."""

CLUSTER_AUTOSCALER_IMAGE_TAGS = {
    "1.31": "v1.31.5",
    "1.32": "v1.32.7",
    "1.33": "v1.33.6",
    "1.34": "v1.34.5",
    "1.35": "v1.35.2",
}
"""The Cluster Autoscaler release for each Kubernetes minor ("use the Cluster Autoscaler
minor version that matches the cluster's", kubernetes/autoscaler
cluster-autoscaler/README.md; the newest patch tag of each minor, tags
``cluster-autoscaler-1.3x.y``)."""

MANAGED_NODE_GROUP_ASG_TAGS = (
    "k8s.io/cluster-autoscaler/enabled",
    "k8s.io/cluster-autoscaler/{cluster}",
)
"""Tags EKS puts on a managed node group's Auto Scaling group, which the Cluster Autoscaler's
auto-discovery reads (EKS user guide, "Managed node groups": "Amazon EKS tags managed node
group resources so that they are configured to use the Kubernetes Cluster Autoscaler").
weightshift names the GPU groups explicitly instead, so the autoscaler never touches the
system group."""


@dataclass(frozen=True)
class ChartFacts:
    """What a pinned Helm chart does with scheduling values, read from its source."""

    chart: str
    version: str
    repository: str
    source: str
    """Where the defaults were read: repository, tag and file."""
    defaults: dict[str, Any]
    """The chart's default values that decide scheduling (nodeSelector, affinity,
    tolerations), exactly as ``values.yaml`` has them."""
    workloads: tuple[str, ...]
    """The pod-producing objects the chart renders with these values."""
    rendered: dict[str, str] = field(default_factory=dict)
    """How the templates turn values into the pod spec where it is not a plain copy."""


NVIDIA_DEVICE_PLUGIN = ChartFacts(
    chart="nvidia-device-plugin",
    version="0.17.1",
    repository="https://nvidia.github.io/k8s-device-plugin",
    source="NVIDIA/k8s-device-plugin v0.17.1 deployments/helm/nvidia-device-plugin/values.yaml",
    defaults={
        "nodeSelector": {},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "feature.node.kubernetes.io/pci-10de.present",
                                    "operator": "In",
                                    "values": ["true"],
                                }
                            ]
                        },
                        {
                            "matchExpressions": [
                                {
                                    "key": "feature.node.kubernetes.io/cpu-model.vendor_id",
                                    "operator": "In",
                                    "values": ["NVIDIA"],
                                }
                            ]
                        },
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.present",
                                    "operator": "In",
                                    "values": ["true"],
                                }
                            ]
                        },
                    ]
                }
            }
        },
        "tolerations": [
            {"key": "CriticalAddonsOnly", "operator": "Exists"},
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        ],
    },
    workloads=("DaemonSet nvidia-device-plugin",),
    rendered={
        "nodeSelector": "templates/daemonset-device-plugin.yml: {{- with .Values.nodeSelector }}",
        "affinity": "templates/daemonset-device-plugin.yml: {{- with .Values.affinity }}",
        "tolerations": "templates/daemonset-device-plugin.yml: {{- with .Values.tolerations }}",
    },
)
"""The default affinity requires labels that node-feature-discovery sets; EKS GPU nodes carry
none of them unless NFD runs (NVIDIA/k8s-device-plugin#708)."""

AWS_LOAD_BALANCER_CONTROLLER = ChartFacts(
    chart="aws-load-balancer-controller",
    version="1.14.0",
    repository="https://aws.github.io/eks-charts",
    source="aws/eks-charts stable/aws-load-balancer-controller 1.14.0 (049a6f7) values.yaml",
    defaults={"nodeSelector": {}, "affinity": {}, "tolerations": []},
    workloads=("Deployment aws-load-balancer-controller",),
    rendered={
        "affinity": "templates/deployment.yaml: .Values.affinity, else (configureDefaultAffinity)"
        " a preferred podAntiAffinity on kubernetes.io/hostname, which never blocks scheduling",
    },
)

CLUSTER_AUTOSCALER = ChartFacts(
    chart="cluster-autoscaler",
    version="9.59.0",
    repository="https://kubernetes.github.io/autoscaler",
    source="kubernetes/autoscaler tag cluster-autoscaler-chart-9.59.0 "
    "cluster-autoscaler/charts/cluster-autoscaler/values.yaml",
    defaults={"nodeSelector": {}, "affinity": {}, "tolerations": []},
    workloads=("Deployment cluster-autoscaler",),
    rendered={
        "autoscalingGroups": "templates/deployment.yaml: one --nodes=MIN:MAX:NAME per entry",
        "rbac.serviceAccount.name": "templates/_helpers.tpl: the service account's name",
    },
)

CHARTS = {
    facts.chart: {facts.version: facts}
    for facts in (NVIDIA_DEVICE_PLUGIN, AWS_LOAD_BALANCER_CONTROLLER, CLUSTER_AUTOSCALER)
}
"""Chart name -> version -> facts. Config accepts only these versions: a version whose
defaults are not written down here cannot be checked."""


def chart_facts(chart: str, version: str) -> ChartFacts:
    try:
        return CHARTS[chart][version]
    except KeyError:
        known = ", ".join(sorted(CHARTS.get(chart, {}))) or "none"
        raise KeyError(
            f"no recorded facts for chart {chart} {version} (recorded: {known})"
        ) from None
