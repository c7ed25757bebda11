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
from components.guardrail import BundleGuardrail, BundleGuardrailArgs, apply_guardrail_policy
from components.iam import allow, pod_identity, policy_document
from weightshift.bundles.catalog import ResolvedBundle
from weightshift.bundles.guardrail import guardrail_config, guardrail_name
from weightshift.config import ServingConfig
from weightshift.facts import READINESS_GATE_NAMESPACE_LABEL
from weightshift.gateway.metrics import NAMESPACE as GATEWAY_NAMESPACE
from weightshift.gateway.moderation import local_gaps
from weightshift.rollout.budget import RolloutBudget, rollout_budget
from weightshift.rollout.stages import Colour

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
    shadow_keep_text: bool = False
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


SHADOW_PREFIX = "shadow"
"""Where a stable gateway writes its mirrored pairs in the shadow bucket."""


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
        if args.shadow_keep_text:
            result.append("--shadow-keep-text")
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


def budget(args: InferenceStackArgs) -> RolloutBudget:
    """How long rolling this colour's pods may take (see ``weightshift/rollout/budget.py``)."""
    return rollout_budget(
        replicas=max(args.replicas, args.full_replicas or 0),
        max_surge=MAX_SURGE,
        startup_seconds=args.serving.startup_timeout_seconds,
        bundle_bytes=args.bundle.manifest.size,
    )


GATEWAY_POLICY_RESERVE = 1_024
"""Characters of the role's inline-policy quota kept for the gateway's own policy."""


def gateway_statements(
    shadow_bucket_arn: str | None, feedback_key_arn: str | None = None
) -> list[dict[str, Any]]:
    """What the gateway calls: CloudWatch (its own namespace only), the stack's feedback key
    (GenerateMac, once at start), and the shadow bucket's pair prefix. The guardrail's grant
    is a policy of its own (``{name}-guardrail``), so removing it is a delete, which Pulumi
    runs after the Deployment has rolled."""
    statements: list[dict[str, Any]] = [
        {
            **allow("PutGatewayMetrics", ["cloudwatch:PutMetricData"], ["*"]),
            # PutMetricData has no resource-level permissions; the namespace condition is
            # what scopes it.
            "Condition": {"StringEquals": {"cloudwatch:namespace": GATEWAY_NAMESPACE}},
        }
    ]
    if feedback_key_arn is not None:
        statements.append(
            {
                **allow("DeriveFeedbackKey", ["kms:GenerateMac"], [feedback_key_arn]),
                "Condition": {"StringEquals": {"kms:MacAlgorithm": "HMAC_SHA_256"}},
            }
        )
    if shadow_bucket_arn is not None:
        statements.append(
            allow("WriteShadowPairs", ["s3:PutObject"], [f"{shadow_bucket_arn}/{SHADOW_PREFIX}/*"])
        )
    return statements


def _ephemeral(size: int) -> str:
    """Room for the bundle on the node's disk, with 10 % headroom, in MiB."""
    return f"{max(1024, -(-size * 11 // 10) // 2**20)}Mi"


class InferenceStack(pulumi.ComponentResource):
    """One colour: namespace, Pod Identity role reading only its bundle, service account,
    Deployment (init container pulls and verifies the bundle; vLLM serves it on the GPU
    nodes), PodDisruptionBudget, Service, TargetGroupBinding to the colour's target group,
    a NetworkPolicy admitting only the ALB's subnets on the serving port, and the cluster
    security group rule admitting the ALB's security group on that port.

    Children: ``{name}-pods`` Role and RolePolicy, ``{name}-gateway`` and ``{name}-guardrail``
    RolePolicy, ``{name}`` PodIdentityAssociation; ``{name}-guardrail`` BundleGuardrail;
    ``{name}`` Namespace, ServiceAccount, Deployment, PodDisruptionBudget, Service,
    TargetGroupBinding(s), NetworkPolicy. The ALB's way into the pods is the stack's
    (``ServingEdge``), shared by both colours.
    """

    namespace: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    budget: RolloutBudget
    """How long a rolling update of the pods may take; ``pulumi up`` waits as long."""
    serving: list[pulumi.Resource]
    """The Deployment and its TargetGroupBinding: what serves once they are ready."""
    deployment: k8s.apps.v1.Deployment
    replicas: int
    """The Deployment's replicas at this stage."""

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

        guardrail = self._guardrail(name, args)
        role, policy, identity = pod_identity(
            f"{name}-pods",
            name,
            cluster_name=args.cluster_name,
            namespace=namespace_name,
            service_account=account,
            policy=pulumi.Output.all(args.bucket_arn, args.key_arn).apply(
                lambda arns: bundle_read_policy(
                    arns[0],
                    arns[1],
                    args.region,
                    bundle,
                    args.bundle.blob_digests,
                    reserve=GATEWAY_POLICY_RESERVE,
                )
            ),
            parent=self,
        )
        gateway_policy = aws.iam.RolePolicy(
            f"{name}-gateway",
            role=role.id,
            policy=pulumi.Output.all(args.shadow_bucket_arn, args.feedback_key_arn).apply(
                lambda values: policy_document(gateway_statements(values[0], values[1]))
            ),
            opts=child,
        )
        grants: list[pulumi.Resource] = [policy, gateway_policy]
        if guardrail is not None:
            # Its own policy: when a change removes the guardrail (moderator local), the grant
            # is deleted, and Pulumi deletes after the Deployment's pods (still applying it)
            # have rolled. An edited statement would be revoked before they roll.
            grants.append(
                aws.iam.RolePolicy(
                    f"{name}-guardrail",
                    role=role.id,
                    policy=guardrail.guardrail_arn.apply(
                        lambda arn: policy_document([apply_guardrail_policy(arn)])
                    ),
                    opts=child,
                )
            )
        guardrail_arg = (
            None
            if guardrail is None
            else pulumi.Output.all(guardrail.guardrail_id, guardrail.version).apply(
                lambda values: f"{values[0]}:{values[1]}"
            )
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
                    "annotations": {
                        **annotations,
                        **(
                            {"weightshift.io/stage": args.stage_marker} if args.stage_marker else {}
                        ),
                        **({"pulumi.com/skipAwait": "true"} if args.skip_await else {}),
                    },
                }
            ),
            spec=manifest(
                self._deployment_spec(
                    args, labels, versioned, annotations, account, guardrail=guardrail_arg
                )
            ),
            opts=pulumi.ResourceOptions.merge(
                in_namespace,
                pulumi.ResourceOptions(
                    depends_on=[service_account, identity, *grants, *args.deployment_after],
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
            ),
            opts=in_namespace,
        )

        def binding(
            resource: str, binding_name: str, target_group: pulumi.Input[str], port: int
        ) -> k8s.apiextensions.CustomResource:
            return k8s.apiextensions.CustomResource(
                resource,
                api_version=TARGET_GROUP_BINDING_API,
                kind="TargetGroupBinding",
                metadata={"name": binding_name, "namespace": namespace_name, "labels": labels},
                spec={
                    "targetGroupARN": target_group,
                    "targetType": "ip",
                    "serviceRef": {"name": "inference", "port": port},
                },
                opts=pulumi.ResourceOptions.merge(
                    in_namespace, pulumi.ResourceOptions(depends_on=[service, deployment])
                ),
            )

        bindings = [binding(name, "inference", args.target_group_arn, args.port)]
        if args.mirror_target_group_arn is not None:
            # Shadow, on the stable colour: its mirror listener serves the mirror target group.
            bindings.append(
                binding(f"{name}-mirror", "mirror", args.mirror_target_group_arn, args.mirror_port)
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
                                        "matchLabels": {
                                            "kubernetes.io/metadata.name": args.other_namespace
                                        }
                                    }
                                }
                            ],
                            "ports": [{"protocol": "TCP", "port": args.port}],
                        },
                    ],
                }
            ),
            opts=in_namespace,
        )
        self.namespace = namespace.metadata.apply(lambda meta: str(meta.name))
        self.role_arn = role.arn
        self.serving = [deployment, *bindings]
        self.deployment = deployment
        self.replicas = args.replicas
        self.register_outputs({"namespace": self.namespace, "role_arn": self.role_arn})

    def _guardrail(self, name: str, args: InferenceStackArgs) -> BundleGuardrail | None:
        """The bundle's safety configuration as a Bedrock guardrail (moderator ``bedrock``);
        None where the gateway moderates locally or the bundle moderates nothing."""
        safety = args.bundle.safety
        if args.serving.moderator == "local":
            gaps = local_gaps(safety)
            if gaps:
                raise ValueError(
                    f"{args.bundle.id} ({args.colour.value}): serving.moderator is local, which "
                    f"does not enforce {'; '.join(gaps)}. Set weightshift:serving.moderator "
                    "to bedrock, or remove them from the bundle's config/safety.json."
                )
            return None
        if guardrail_config(safety) is None:
            return None
        bundle = args.bundle.id
        return BundleGuardrail(
            f"{name}-guardrail",
            BundleGuardrailArgs(
                safety=safety,
                guardrail_name=guardrail_name(
                    args.model, args.stack, args.colour.value, f"v{bundle.version}-{bundle.digest}"
                ),
                description=f"Moderation of {bundle} ({args.colour.value}), from safety.json",
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _deployment_spec(
        self,
        args: InferenceStackArgs,
        labels: dict[str, str],
        versioned: dict[str, str],
        annotations: dict[str, str],
        account: str,
        *,
        guardrail: pulumi.Output[str] | None,
    ) -> dict[str, Any]:
        serving = args.serving
        bundle = args.bundle
        drain = drain_seconds(args)
        # The model server answers its own probes; the gateway's readiness follows it.
        probe = {"httpGet": {"path": "/health", "port": "model"}, "timeoutSeconds": 5}
        answering = args.bundle.routing.request_timeout_seconds
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
                    # answering that long (preStop), then the gateway finishes the answers in
                    # flight (at most the request timeout) and stops.
                    "terminationGracePeriodSeconds": drain + answering + 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "tolerations": [GPU_TOLERATION],
                    "affinity": {
                        **required_node_affinity(args.gpu_node_labels),
                        **colour_packing(labels, args.colour, args.other_namespace),
                    },
                    # Spread over zones; within a zone, pack (colour_packing): a node is
                    # released only once no inference pod is left on it.
                    "topologySpreadConstraints": [
                        {
                            # Soft, with a large skew: it breaks ties between zones without
                            # outweighing the packing preference (the scheduler scores both;
                            # with a skew of 1 they cancelled). A constant: in the pod template,
                            # a value that followed the replicas would roll every pod whenever
                            # a colour's size changed.
                            "maxSkew": ZONE_SKEW,
                            "topologyKey": "topology.kubernetes.io/zone",
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
                                {
                                    "name": "model",
                                    "containerPort": serving.model_port,
                                    "protocol": "TCP",
                                }
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
                            # The server outlives the gateway's last answers: the gateway
                            # stops after the drain plus the answers in flight.
                            "lifecycle": {
                                "preStop": {"exec": {"command": ["sleep", str(drain + answering)]}}
                            },
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
                        },
                        {
                            "name": "gateway",
                            "image": serving.puller_image,
                            "command": ["weightshift"],
                            "args": gateway_args(args, guardrail),
                            "ports": [
                                {"name": "http", "containerPort": args.port, "protocol": "TCP"},
                                {
                                    "name": "mirror",
                                    "containerPort": args.mirror_port,
                                    "protocol": "TCP",
                                },
                            ],
                            "env": [
                                {"name": "AWS_REGION", "value": args.region},
                                {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                                {"name": "HF_HUB_OFFLINE", "value": "1"},
                            ],
                            "resources": {
                                "requests": {
                                    "cpu": serving.gateway_cpu,
                                    "memory": serving.gateway_memory,
                                },
                                "limits": {"memory": serving.gateway_memory},
                            },
                            # Ready only while the model server is (the ALB's health check
                            # is the same path); alive as long as the gateway itself answers.
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
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(drain)]}}},
                            "securityContext": {**restricted, "readOnlyRootFilesystem": True},
                            "volumeMounts": [
                                {
                                    "name": "bundle",
                                    "mountPath": BUNDLE_ROOT,
                                    "subPath": "current",
                                    "readOnly": True,
                                },
                                {"name": "gateway-tmp", "mountPath": "/tmp"},
                            ],
                        },
                    ],
                    "volumes": [
                        {"name": "bundle", "emptyDir": {"sizeLimit": disk}},
                        {
                            "name": "shm",
                            "emptyDir": {"medium": "Memory", "sizeLimit": serving.shared_memory},
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "gateway-tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                    ],
                },
            },
        }
