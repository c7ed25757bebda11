"""One colour's inference stack: the pods that serve one bundle, registered in its target group.

``__main__.py`` builds it twice, once per colour, from the same code and the same serving
config: blue and green differ only in colour, names, bundle and replica count (a test
compares the two graphs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.artifact_store import bundle_read_policy
from components.gpu_cluster import GPU_TOLERATION, required_node_affinity
from components.iam import pod_identity
from weightshift.budget import RolloutBudget, rollout_budget
from weightshift.catalog import ResolvedBundle
from weightshift.config import ServingConfig
from weightshift.facts import READINESS_GATE_NAMESPACE_LABEL
from weightshift.stages import Colour

BUNDLE_ROOT = "/bundle"
SERVING_LAYOUT = "hf"
"""Inside the pulled bundle: the Hugging Face layout (config, weights, tokenizer side by
side) that ``weightshift bundle pull --serving-layout`` links for the server."""
TARGET_GROUP_BINDING_API = "elbv2.k8s.aws/v1beta1"
MAX_SURGE = 1
"""New pods per rolling-update wave; with ``maxUnavailable: 0`` serving capacity never
drops, at the price of one extra GPU pod during the update."""
SERVER_USER = "vllm"
"""The name the server runs under. The vLLM image has no USER (it runs as root), Pod
Security ``restricted`` forbids root, and UID 1000 has no passwd entry there: torch's
``getpass.getuser()`` (Inductor's cache dir) raises KeyError without ``USER``/``LOGNAME``
(vllm-project/vllm#44548, pytorch/pytorch#140765)."""


def manifest(fields: dict[str, Any]) -> Any:
    """Kubernetes fields as a manifest spells them (camelCase). The SDK's typed dicts cannot
    follow nested literals; the tests validate every object against the Kubernetes JSON
    schema of the configured version instead."""
    return fields


@dataclass(frozen=True)
class InferenceStackArgs:
    colour: Colour
    model: str
    namespace: str
    """The colour's namespace, unique per stack (``StackConfig.namespace``)."""
    bundle: ResolvedBundle
    replicas: int
    serving: ServingConfig
    port: int
    health_path: str
    deregistration_delay_seconds: int
    target_group_arn: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    cluster_security_group_id: pulumi.Input[str]
    alb_security_group_id: pulumi.Input[str]
    alb_subnet_cidrs: Sequence[str]
    gpu_node_labels: dict[str, str]
    region: str
    depends_on: Sequence[pulumi.Resource] = ()


def server_args(args: InferenceStackArgs) -> list[str]:
    """The OpenAI-compatible server's arguments: the bundle's generation parameters included,
    so a change to them shows in review as a change to the Deployment."""
    generation = args.bundle.generation
    defaults: dict[str, Any] = {
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "max_new_tokens": generation.max_tokens,
        "repetition_penalty": generation.repetition_penalty,
        "presence_penalty": generation.presence_penalty,
        "frequency_penalty": generation.frequency_penalty,
    }
    result = [
        "--model",
        f"{BUNDLE_ROOT}/{SERVING_LAYOUT}",
        "--served-model-name",
        args.model,
        "--host",
        "0.0.0.0",
        "--port",
        str(args.port),
        "--tensor-parallel-size",
        str(args.serving.gpus_per_replica),
        "--generation-config",
        "vllm",
        "--override-generation-config",
        json.dumps(defaults, sort_keys=True),
    ]
    if args.serving.max_model_len is not None:
        result += ["--max-model-len", str(args.serving.max_model_len)]
    return result + list(args.serving.extra_args)


def drain_seconds(args: InferenceStackArgs) -> int:
    """How long a stopping pod keeps serving: the ALB drains a target this long."""
    if args.serving.drain_seconds is not None:
        return args.serving.drain_seconds
    return args.deregistration_delay_seconds


def budget(args: InferenceStackArgs) -> RolloutBudget:
    """How long rolling this colour's pods may take (see ``weightshift/budget.py``)."""
    return rollout_budget(
        replicas=args.replicas,
        max_surge=MAX_SURGE,
        startup_seconds=args.serving.startup_timeout_seconds,
        bundle_bytes=args.bundle.manifest.size,
    )


def _ephemeral(size: int) -> str:
    """Room for the bundle on the node's disk, with 10 % headroom, in MiB."""
    return f"{max(1024, -(-size * 11 // 10) // 2**20)}Mi"


class InferenceStack(pulumi.ComponentResource):
    """One colour: namespace, Pod Identity role reading only its bundle, service account,
    Deployment (init container pulls and verifies the bundle; vLLM serves it on the GPU
    nodes), PodDisruptionBudget, Service, TargetGroupBinding to the colour's target group,
    a NetworkPolicy admitting only the ALB's subnets on the serving port, and the cluster
    security group rule admitting the ALB's security group on that port.

    Children: ``{name}-pods`` Role and RolePolicy, ``{name}`` PodIdentityAssociation;
    ``{name}`` Namespace, ServiceAccount, Deployment, PodDisruptionBudget, Service,
    TargetGroupBinding, NetworkPolicy; ``{name}-from-alb`` SecurityGroupIngressRule.
    """

    namespace: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    budget: RolloutBudget
    """How long a rolling update of the pods may take; ``pulumi up`` waits as long."""
    serving: list[pulumi.Resource]
    """The Deployment and its TargetGroupBinding: what serves once they are ready."""

    def __init__(
        self,
        name: str,
        args: InferenceStackArgs,
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("weightshift:index:InferenceStack", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        kube = pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=list(args.depends_on)
        )
        bundle = args.bundle.id
        self.budget = budget(args)
        namespace_name = args.namespace
        labels = {
            "app.kubernetes.io/name": args.model,
            "app.kubernetes.io/instance": namespace_name,
            "app.kubernetes.io/part-of": "weightshift",
            "weightshift.io/colour": args.colour.value,
        }
        versioned = {**labels, "weightshift.io/version": f"v{bundle.version}-{bundle.digest}"}
        annotations = {"weightshift.io/bundle": str(bundle)}
        account = "inference"

        role, policy, identity = pod_identity(
            f"{name}-pods",
            name,
            cluster_name=args.cluster_name,
            namespace=namespace_name,
            service_account=account,
            policy=pulumi.Output.all(args.bucket_arn, args.key_arn).apply(
                lambda arns: bundle_read_policy(
                    arns[0], arns[1], args.region, bundle, args.bundle.blob_digests
                )
            ),
            parent=self,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-from-alb",
            security_group_id=args.cluster_security_group_id,
            referenced_security_group_id=args.alb_security_group_id,
            ip_protocol="tcp",
            from_port=args.port,
            to_port=args.port,
            description=f"ALB to {namespace_name} inference pods",
            opts=child,
        )

        namespace = k8s.core.v1.Namespace(
            name,
            metadata={
                "name": namespace_name,
                "labels": {
                    **labels,
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                    # The load balancer controller holds a new pod unready until the ALB
                    # sees it healthy, so a rolling update never outruns registration.
                    READINESS_GATE_NAMESPACE_LABEL[0]: READINESS_GATE_NAMESPACE_LABEL[1],
                },
            },
            opts=kube,
        )
        in_namespace = pulumi.ResourceOptions.merge(
            kube, pulumi.ResourceOptions(depends_on=[namespace])
        )
        service_account = k8s.core.v1.ServiceAccount(
            name,
            metadata={"name": account, "namespace": namespace_name, "labels": labels},
            automount_service_account_token=False,
            opts=in_namespace,
        )
        deployment = k8s.apps.v1.Deployment(
            name,
            metadata=manifest(
                {
                    "name": "inference",
                    "namespace": namespace_name,
                    "labels": versioned,
                    "annotations": annotations,
                }
            ),
            spec=manifest(self._deployment_spec(args, labels, versioned, annotations, account)),
            opts=pulumi.ResourceOptions.merge(
                in_namespace,
                pulumi.ResourceOptions(
                    depends_on=[service_account, identity, policy],
                    # pulumi-kubernetes waits 10 minutes by default; a GPU rollout takes hours.
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{self.budget.seconds}s", update=f"{self.budget.seconds}s"
                    ),
                ),
            ),
        )
        k8s.policy.v1.PodDisruptionBudget(
            name,
            metadata=manifest({"name": "inference", "namespace": namespace_name, "labels": labels}),
            spec=manifest({"maxUnavailable": 1, "selector": {"matchLabels": labels}}),
            opts=in_namespace,
        )
        service = k8s.core.v1.Service(
            name,
            metadata=manifest({"name": "inference", "namespace": namespace_name, "labels": labels}),
            spec=manifest(
                {
                    "type": "ClusterIP",
                    "selector": labels,
                    "ports": [
                        {"name": "http", "port": args.port, "targetPort": "http", "protocol": "TCP"}
                    ],
                }
            ),
            opts=in_namespace,
        )
        binding = k8s.apiextensions.CustomResource(
            name,
            api_version=TARGET_GROUP_BINDING_API,
            kind="TargetGroupBinding",
            metadata={"name": "inference", "namespace": namespace_name, "labels": labels},
            spec={
                "targetGroupARN": args.target_group_arn,
                "targetType": "ip",
                "serviceRef": {"name": "inference", "port": args.port},
            },
            opts=pulumi.ResourceOptions.merge(
                in_namespace, pulumi.ResourceOptions(depends_on=[service, deployment])
            ),
        )
        k8s.networking.v1.NetworkPolicy(
            name,
            metadata=manifest({"name": "only-the-load-balancer", "namespace": namespace_name}),
            spec=manifest(
                {
                    "podSelector": {},
                    "policyTypes": ["Ingress"],
                    "ingress": [
                        {
                            "from": [{"ipBlock": {"cidr": cidr}} for cidr in args.alb_subnet_cidrs],
                            "ports": [{"protocol": "TCP", "port": args.port}],
                        }
                    ],
                }
            ),
            opts=in_namespace,
        )
        self.namespace = namespace.metadata.apply(lambda meta: str(meta.name))
        self.role_arn = role.arn
        self.serving = [deployment, binding]
        self.register_outputs({"namespace": self.namespace, "role_arn": self.role_arn})

    def _deployment_spec(
        self,
        args: InferenceStackArgs,
        labels: dict[str, str],
        versioned: dict[str, str],
        annotations: dict[str, str],
        account: str,
    ) -> dict[str, Any]:
        serving = args.serving
        bundle = args.bundle
        drain = drain_seconds(args)
        probe = {"httpGet": {"path": args.health_path, "port": "http"}, "timeoutSeconds": 5}
        restricted = {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        disk = _ephemeral(bundle.manifest.size)
        gpus = str(serving.gpus_per_replica)
        return {
            "replicas": args.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": labels},
            # Surge, never fewer ready pods than asked: a GPU pod takes minutes to load.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": MAX_SURGE},
            },
            # Kubernetes counts this afresh whenever a pod becomes ready: one pod's budget.
            "progressDeadlineSeconds": self.budget.per_pod_seconds,
            "template": {
                "metadata": {
                    "labels": versioned,
                    "annotations": {
                        **annotations,
                        # Scale-down never evicts a serving pod to pack nodes.
                        "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                    },
                },
                "spec": {
                    "serviceAccountName": account,
                    "automountServiceAccountToken": False,
                    # The ALB drains a target for the deregistration delay; the pod keeps
                    # answering in-flight requests that long (preStop), then stops.
                    "terminationGracePeriodSeconds": drain + 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "tolerations": [GPU_TOLERATION],
                    "affinity": required_node_affinity(args.gpu_node_labels),
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": labels},
                        },
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": labels},
                        },
                    ],
                    "initContainers": [
                        {
                            "name": "pull-bundle",
                            "image": serving.puller_image,
                            "command": ["weightshift"],
                            "args": [
                                "bundle",
                                "pull",
                                str(bundle.id),
                                f"{BUNDLE_ROOT}/current",
                                "--serving-layout",
                            ],
                            "env": [
                                {"name": "WEIGHTSHIFT_BUCKET", "value": args.bucket_name},
                                {"name": "AWS_REGION", "value": args.region},
                            ],
                            "resources": {
                                # The bundle lands on the node's disk: the scheduler must
                                # place the pod where it fits.
                                "requests": {
                                    "cpu": "2",
                                    "memory": "2Gi",
                                    "ephemeral-storage": disk,
                                },
                                "limits": {"memory": "4Gi"},
                            },
                            "securityContext": {**restricted, "readOnlyRootFilesystem": True},
                            "volumeMounts": [{"name": "bundle", "mountPath": BUNDLE_ROOT}],
                        }
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": serving.image,
                            "args": server_args(args),
                            "ports": [
                                {"name": "http", "containerPort": args.port, "protocol": "TCP"}
                            ],
                            "env": [
                                {"name": "HF_HUB_OFFLINE", "value": "1"},
                                {"name": "HOME", "value": "/tmp"},
                                {"name": "USER", "value": SERVER_USER},
                                {"name": "LOGNAME", "value": SERVER_USER},
                                {"name": "WEIGHTSHIFT_BUNDLE", "value": str(bundle.id)},
                            ],
                            "resources": {
                                "requests": {
                                    "cpu": serving.cpu,
                                    "memory": serving.memory,
                                    "nvidia.com/gpu": gpus,
                                },
                                "limits": {"memory": serving.memory, "nvidia.com/gpu": gpus},
                            },
                            "startupProbe": {
                                **probe,
                                "periodSeconds": 10,
                                "failureThreshold": serving.startup_timeout_seconds // 10,
                            },
                            "readinessProbe": {
                                **probe,
                                "periodSeconds": 5,
                                "failureThreshold": 3,
                            },
                            "livenessProbe": {
                                **probe,
                                "periodSeconds": 15,
                                "failureThreshold": 4,
                            },
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(drain)]}}},
                            "securityContext": restricted,
                            "volumeMounts": [
                                {
                                    "name": "bundle",
                                    "mountPath": BUNDLE_ROOT,
                                    "subPath": "current",
                                    "readOnly": True,
                                },
                                {"name": "shm", "mountPath": "/dev/shm"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "bundle", "emptyDir": {"sizeLimit": disk}},
                        {
                            "name": "shm",
                            "emptyDir": {"medium": "Memory", "sizeLimit": serving.shared_memory},
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
                    ],
                },
            },
        }
