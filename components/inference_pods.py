"""The Kubernetes specs of one colour's inference stack (``components/inference_stack.py``):
pure functions that build the Deployment's, the Service's and the NetworkPolicy's specs as
plain dicts, as a manifest spells them.

The pod runs three containers: ``pull-bundle`` (init: pulls and verifies the bundle onto
the node's disk), ``server`` (vLLM on the GPUs) and ``gateway`` (``weightshift gateway``:
the only port the load balancer reaches).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi

from components.gpu_nodes import GPU_TOLERATION, required_node_affinity
from weightshift.bundles.catalog import ResolvedBundle
from weightshift.bundles.schemas import Generation
from weightshift.config import ServingConfig
from weightshift.stages import Colour

BUNDLE_ROOT = "/bundle"
SERVING_LAYOUT = "hf"
"""Inside the pulled bundle: the Hugging Face layout (config, weights, tokenizer side by
side) that ``weightshift bundle pull --serving-layout`` links for the server."""
MAX_SURGE = 1
"""New pods per rolling-update wave; with ``maxUnavailable: 0`` serving capacity never
drops, at the price of one extra GPU pod during the update."""
SERVER_USER = "vllm"
"""The name the server runs under. The vLLM image has no USER (it runs as root), Pod
Security ``restricted`` forbids root, and UID 1000 has no passwd entry there: torch's
``getpass.getuser()`` (Inductor's cache dir) raises KeyError without ``USER``/``LOGNAME``
(vllm-project/vllm#44548, pytorch/pytorch#140765)."""


@dataclass(frozen=True)
class InferenceStackArgs:
    colour: Colour
    model: str
    namespace: str
    """The colour's namespace, unique per stack (``StackConfig.namespace``)."""
    bundle: ResolvedBundle
    replicas: int
    """What the colour runs at this stage (``weightshift/rollout/capacity.py``)."""
    serving: ServingConfig
    port: int
    health_path: str
    deregistration_delay_seconds: int
    target_group_arn: pulumi.Input[str]
    bucket_name: pulumi.Input[str]
    bucket_arn: pulumi.Input[str]
    key_arn: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    alb_subnet_cidrs: Sequence[str]
    gpu_node_labels: dict[str, str]
    region: str
    stack: str
    other_namespace: str
    """The other colour's namespace: the mirror copies requests to its gateway."""
    mirror_port: int
    idle_timeout_seconds: int
    """The load balancer's: the gateway keeps idle connections open longer."""
    metrics_period_seconds: int
    mirror_target_group_arn: pulumi.Input[str] | None = None
    """Shadow, on the stable colour: the ``mirror`` target group its mirror listener serves."""
    shadow_bucket: pulumi.Input[str] | None = None
    shadow_bucket_arn: pulumi.Input[str] | None = None
    shadow_text_sample: float = 0.0
    """``rollout.shadowTextSample``: the share of pairs that keep their text, under
    :data:`SHADOW_TEXT_PREFIX`, encrypted with ``shadow_text_key_arn``."""
    shadow_text_key_arn: pulumi.Input[str] | None = None
    feedback_key_arn: pulumi.Input[str] | None = None
    """The stack's KMS HMAC key (``ServingEdge``): feedback tokens verify in every gateway."""
    depends_on: Sequence[pulumi.Resource] = ()
    full_replicas: int | None = None
    """The colour's full size (config ``replicas``), where ``replicas`` is less: the await
    budget is sized for it, so a stage's scale-up never outlasts it."""
    deployment_after: Sequence[pulumi.Resource] = ()
    """What the Deployment waits for: the listener, when weight leaves this colour before
    its capacity does."""
    stage_marker: str | None = None
    """The candidate's strategy and stage, as an annotation on the Deployment's metadata."""
    skip_await: bool = False
    """Apply the Deployment without waiting for its pods (``pulumi.com/skipAwait``): for a
    candidate with no weight, whose pods serve nobody yet (and may be the broken ones a
    rollback left): the next stage up waits for them before moving weight."""


def server_args(args: InferenceStackArgs) -> list[str]:
    """The OpenAI-compatible server's arguments: the bundle's generation parameters that vLLM
    honours as defaults (``server_generation_defaults``) included, so a change to them shows
    in review as a change to the Deployment."""
    defaults = server_generation_defaults(args.bundle.generation)
    result = [
        "--model",
        f"{BUNDLE_ROOT}/{SERVING_LAYOUT}",
        "--served-model-name",
        args.model,
        # Every interface, so the kubelet can probe it; only the gateway is admitted to this
        # port (the NetworkPolicy and security groups admit the serving ports alone).
        "--host",
        "0.0.0.0",
        "--port",
        str(args.serving.model_port),
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


def server_generation_defaults(generation: Generation) -> dict[str, Any]:
    """What ``--override-generation-config`` carries: only the keys vLLM applies
    (``VLLM_GENERATION_CONFIG_KEYS``). The gateway sets every sampling parameter on every
    request anyway; these are the defaults for a request that reaches vLLM without it."""
    return {
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "top_k": generation.top_k,
        "max_new_tokens": generation.max_tokens,
        "repetition_penalty": generation.repetition_penalty,
    }


SHADOW_PREFIX = "shadow"
"""Where a stable gateway writes its mirrored pairs in the shadow bucket."""
SHADOW_TEXT_PREFIX = "shadow-text"
"""...and the pairs that keep their text (``rollout.shadowTextSample``), SSE-KMS."""


def gateway_args(
    args: InferenceStackArgs, guardrail: pulumi.Output[str] | None
) -> list[pulumi.Input[str]]:
    """``weightshift gateway`` for this colour (every option: ``docs/gateway.md``)."""
    result: list[pulumi.Input[str]] = [
        "gateway",
        "--bundle",
        BUNDLE_ROOT,
        "--upstream",
        f"http://127.0.0.1:{args.serving.model_port}",
        "--colour",
        args.colour.value,
        "--listen",
        f"0.0.0.0:{args.port}",
        "--mirror-listen",
        f"0.0.0.0:{args.mirror_port}",
        "--mirror-to",
        f"http://inference.{args.other_namespace}.svc.cluster.local:{args.port}",
        "--keep-alive",
        str(args.idle_timeout_seconds + 20),
        "--region",
        args.region,
        "--metrics",
        "cloudwatch",
        "--metrics-interval",
        str(args.metrics_period_seconds),
    ]
    if guardrail is not None:
        result += ["--guardrail", guardrail]
    if args.feedback_key_arn is not None:
        result += ["--feedback-key", args.feedback_key_arn]
    if args.shadow_bucket is not None:
        result += ["--shadow-bucket", args.shadow_bucket, "--shadow-prefix", SHADOW_PREFIX]
        if args.shadow_text_sample > 0:
            if args.shadow_text_key_arn is None:
                raise ValueError("pairs with text need the key they are encrypted with")
            result += [
                "--shadow-text-sample",
                f"{args.shadow_text_sample:g}",
                "--shadow-text-prefix",
                SHADOW_TEXT_PREFIX,
                "--shadow-text-kms-key",
                args.shadow_text_key_arn,
            ]
    return result


ZONE_SKEW = 100
"""The zone spread's ``maxSkew``: PodTopologySpread adds ``maxSkew - 1`` to every node's
score, so a large one flattens the zone term to a tie-break beside the packing preference."""


def colour_packing(labels: dict[str, str], colour: Colour, other_namespace: str) -> dict[str, Any]:
    """Each GPU node serves one colour, and a colour's pods share nodes.

    The Cluster Autoscaler releases a GPU node only when no inference pod is left on it
    (the pods are not safe to evict, and hold local storage). If colours shared nodes, or a
    colour's pods spread one per node, shrinking the candidate would leave half-used nodes
    that are never released, and capacity following the rollout would save nothing. So:
    required anti-affinity to the other colour's pods on the same node, and a preference
    for nodes that already run this colour (the scheduler's default scoring prefers the
    emptiest node)."""
    other = {**labels, "weightshift.io/colour": colour.other.value}
    other.pop("app.kubernetes.io/instance", None)
    return {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": other},
                    "namespaces": [other_namespace],
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        },
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": labels},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        },
    }


def drain_seconds(args: InferenceStackArgs) -> int:
    """How long a stopping pod keeps serving: the ALB drains a target this long."""
    if args.serving.drain_seconds is not None:
        return args.serving.drain_seconds
    return args.deregistration_delay_seconds


def _ephemeral(size: int) -> str:
    """Room for the bundle on the node's disk, with 10 % headroom, in MiB."""
    return f"{max(1024, -(-size * 11 // 10) // 2**20)}Mi"


@dataclass(frozen=True)
class PodInputs:
    """What the pod template is built from."""

    args: InferenceStackArgs
    labels: dict[str, str]
    """The Deployment's selector: the colour's pods, whatever bundle they run."""
    versioned: dict[str, str]
    """``labels`` and the bundle's version: the pods' labels."""
    annotations: dict[str, str]
    account: str
    """The service account the pods run as."""
    guardrail: pulumi.Output[str] | None
    """``ID:VERSION`` of the bundle's Bedrock guardrail, if the gateway applies one."""
    per_pod_seconds: int
    """One pod's rollout budget (``RolloutBudget.per_pod_seconds``)."""

    @property
    def serving(self) -> ServingConfig:
        return self.args.serving

    @property
    def drain(self) -> int:
        return drain_seconds(self.args)

    @property
    def answering(self) -> int:
        """The longest answer in flight: the bundle's request timeout."""
        return self.args.bundle.routing.request_timeout_seconds

    @property
    def disk(self) -> str:
        return _ephemeral(self.args.bundle.manifest.size)


def deployment_spec(pod: PodInputs) -> dict[str, Any]:
    """The Deployment's spec: a surging rolling update of the pod template."""
    return {
        "replicas": pod.args.replicas,
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": pod.labels},
        # Surge, never fewer ready pods than asked: a GPU pod takes minutes to load.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": MAX_SURGE},
        },
        # Kubernetes counts this afresh whenever a pod becomes ready: one pod's budget.
        "progressDeadlineSeconds": pod.per_pod_seconds,
        "template": {
            "metadata": {
                "labels": pod.versioned,
                "annotations": {
                    **pod.annotations,
                    # Scale-down never evicts a serving pod to pack nodes.
                    "cluster-autoscaler.kubernetes.io/safe-to-evict": "false",
                },
            },
            "spec": pod_spec(pod),
        },
    }


def pod_spec(pod: PodInputs) -> dict[str, Any]:
    return {
        "serviceAccountName": pod.account,
        "automountServiceAccountToken": False,
        # The ALB drains a target for the deregistration delay; the pod keeps answering that
        # long (preStop), then the gateway finishes the answers in flight (at most the
        # request timeout) and stops.
        "terminationGracePeriodSeconds": pod.drain + pod.answering + 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        **placement(pod.args, pod.labels),
        "initContainers": [pull_container(pod)],
        "containers": [server_container(pod), gateway_container(pod)],
        "volumes": volumes(pod.serving, pod.disk),
    }


def placement(args: InferenceStackArgs, labels: dict[str, str]) -> dict[str, Any]:
    """Where the pods run: on the GPU nodes, one colour a node, spread over zones."""
    return {
        "tolerations": [GPU_TOLERATION],
        "affinity": {
            **required_node_affinity(args.gpu_node_labels),
            **colour_packing(labels, args.colour, args.other_namespace),
        },
        # Spread over zones; within a zone, pack (colour_packing): a node is released only
        # once no inference pod is left on it.
        "topologySpreadConstraints": [
            {
                # Soft, with a large skew: it breaks ties between zones without outweighing
                # the packing preference (the scheduler scores both; with a skew of 1 they
                # cancelled). A constant: in the pod template, a value that followed the
                # replicas would roll every pod whenever a colour's size changed.
                "maxSkew": ZONE_SKEW,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels},
            },
        ],
    }


def restricted() -> dict[str, Any]:
    """A container's security context under Pod Security ``restricted``."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def bundle_mount() -> dict[str, Any]:
    """The pulled bundle, read-only, as the server and the gateway see it."""
    return {"name": "bundle", "mountPath": BUNDLE_ROOT, "subPath": "current", "readOnly": True}


def pull_container(pod: PodInputs) -> dict[str, Any]:
    """The init container: pulls and verifies the bundle onto the node's disk."""
    args = pod.args
    return {
        "name": "pull-bundle",
        "image": pod.serving.puller_image,
        "command": ["weightshift"],
        "args": [
            "bundle",
            "pull",
            str(args.bundle.id),
            f"{BUNDLE_ROOT}/current",
            "--serving-layout",
            # Kubernetes re-runs init containers after a sandbox restart and the volume keeps
            # what the last run left: a complete verified copy is kept, anything else pulled
            # again (an interrupted pull resumes from its staging folder).
            "--reuse",
        ],
        "env": [
            {"name": "WEIGHTSHIFT_BUCKET", "value": args.bucket_name},
            {"name": "AWS_REGION", "value": args.region},
        ],
        "resources": {
            # The bundle lands on the node's disk: the scheduler must place the pod where it
            # fits.
            "requests": {"cpu": "2", "memory": "2Gi", "ephemeral-storage": pod.disk},
            "limits": {"memory": "4Gi"},
        },
        "securityContext": {**restricted(), "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "bundle", "mountPath": BUNDLE_ROOT}],
    }


def server_probes(serving: ServingConfig) -> dict[str, Any]:
    """The model server answers its own probes; the gateway's readiness follows it."""
    probe = {"httpGet": {"path": "/health", "port": "model"}, "timeoutSeconds": 5}
    return {
        "startupProbe": {
            **probe,
            "periodSeconds": 10,
            "failureThreshold": serving.startup_timeout_seconds // 10,
        },
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 15, "failureThreshold": 4},
    }


def server_container(pod: PodInputs) -> dict[str, Any]:
    """vLLM, serving the bundle on the pod's GPUs."""
    serving = pod.serving
    gpus = str(serving.gpus_per_replica)
    return {
        "name": "server",
        "image": serving.image,
        "args": server_args(pod.args),
        "ports": [{"name": "model", "containerPort": serving.model_port, "protocol": "TCP"}],
        "env": [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HOME", "value": "/tmp"},
            {"name": "USER", "value": SERVER_USER},
            {"name": "LOGNAME", "value": SERVER_USER},
            {"name": "WEIGHTSHIFT_BUNDLE", "value": str(pod.args.bundle.id)},
        ],
        "resources": {
            "requests": {"cpu": serving.cpu, "memory": serving.memory, "nvidia.com/gpu": gpus},
            "limits": {"memory": serving.memory, "nvidia.com/gpu": gpus},
        },
        **server_probes(serving),
        # The server outlives the gateway's last answers: the gateway stops after the drain
        # plus the answers in flight.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(pod.drain + pod.answering)]}}},
        "securityContext": restricted(),
        "volumeMounts": [
            bundle_mount(),
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def gateway_container(pod: PodInputs) -> dict[str, Any]:
    """``weightshift gateway``: what the load balancer and the other colour's mirror reach."""
    args, serving = pod.args, pod.serving
    return {
        "name": "gateway",
        "image": serving.puller_image,
        "command": ["weightshift"],
        "args": gateway_args(args, pod.guardrail),
        "ports": [
            {"name": "http", "containerPort": args.port, "protocol": "TCP"},
            {"name": "mirror", "containerPort": args.mirror_port, "protocol": "TCP"},
        ],
        "env": [
            {"name": "AWS_REGION", "value": args.region},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "HF_HUB_OFFLINE", "value": "1"},
        ],
        "resources": {
            "requests": {"cpu": serving.gateway_cpu, "memory": serving.gateway_memory},
            "limits": {"memory": serving.gateway_memory},
        },
        # Ready only while the model server is (the ALB's health check is the same path);
        # alive as long as the gateway itself answers.
        "readinessProbe": {
            "httpGet": {"path": args.health_path, "port": "http"},
            "timeoutSeconds": 3,
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "http"},
            "timeoutSeconds": 3,
            "periodSeconds": 10,
            "failureThreshold": 6,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(pod.drain)]}}},
        "securityContext": {**restricted(), "readOnlyRootFilesystem": True},
        "volumeMounts": [bundle_mount(), {"name": "gateway-tmp", "mountPath": "/tmp"}],
    }


def volumes(serving: ServingConfig, disk: str) -> list[dict[str, Any]]:
    """The pulled bundle (on the node's disk), the server's shared memory and scratch, the
    gateway's scratch."""
    return [
        {"name": "bundle", "emptyDir": {"sizeLimit": disk}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": serving.shared_memory}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "gateway-tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    ]


def service_spec(args: InferenceStackArgs, labels: dict[str, str]) -> dict[str, Any]:
    """The colour's pods, inside the cluster: the gateway's serving and mirror ports."""
    return {
        "type": "ClusterIP",
        "selector": labels,
        "ports": [
            {
                "name": "http",
                "port": args.port,
                "targetPort": "http",
                "protocol": "TCP",
            },
            {
                "name": "mirror",
                "port": args.mirror_port,
                "targetPort": "mirror",
                "protocol": "TCP",
            },
        ],
    }


def network_policy_spec(args: InferenceStackArgs) -> dict[str, Any]:
    """Only the ALB's subnets on the serving ports, and the other colour's gateways
    (mirrored copies, shadow) on the gateway's."""
    return {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [
            {
                "from": [{"ipBlock": {"cidr": cidr}} for cidr in args.alb_subnet_cidrs],
                "ports": [
                    {"protocol": "TCP", "port": args.port},
                    {"protocol": "TCP", "port": args.mirror_port},
                ],
            },
            {
                # The other colour's gateways: mirrored copies (shadow).
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": args.other_namespace}
                        }
                    }
                ],
                "ports": [{"protocol": "TCP", "port": args.port}],
            },
        ],
    }
