"""One colour's inference stack: the pods that serve one bundle, registered in its target group.

``__main__.py`` builds it twice, once per colour, from the same code and the same serving
config: blue and green differ only in colour, names, bundle and replica count (a test
compares the two graphs).
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from components.artifact_store import bundle_read_policy
from components.guardrail import BundleGuardrail, BundleGuardrailArgs, apply_guardrail_policy
from components.iam import allow, pod_identity, policy_document
from components.inference_pods import (
    BUNDLE_ROOT,
    MAX_SURGE,
    SERVER_USER,
    SERVING_LAYOUT,
    SHADOW_PREFIX,
    SHADOW_TEXT_PREFIX,
    ZONE_SKEW,
    InferenceStackArgs,
    PodInputs,
    colour_packing,
    deployment_spec,
    drain_seconds,
    gateway_args,
    network_policy_spec,
    server_args,
    service_spec,
)
from weightshift.bundles.guardrail import guardrail_config, guardrail_name
from weightshift.facts import READINESS_GATE_NAMESPACE_LABEL
from weightshift.gateway.metrics import NAMESPACE as GATEWAY_NAMESPACE
from weightshift.gateway.moderation import local_gaps
from weightshift.rollout.budget import RolloutBudget, rollout_budget

__all__ = [
    "BUNDLE_ROOT",
    "MAX_SURGE",
    "SERVER_USER",
    "SERVING_LAYOUT",
    "SHADOW_PREFIX",
    "SHADOW_TEXT_PREFIX",
    "ZONE_SKEW",
    "InferenceStack",
    "InferenceStackArgs",
    "budget",
    "colour_packing",
    "drain_seconds",
    "gateway_args",
    "gateway_statements",
    "manifest",
    "server_args",
]

TARGET_GROUP_BINDING_API = "elbv2.k8s.aws/v1beta1"


def manifest(fields: dict[str, Any]) -> Any:
    """Kubernetes fields as a manifest spells them (camelCase). The SDK's typed dicts cannot
    follow nested literals; the tests validate every object against the Kubernetes JSON
    schema of the configured version instead."""
    return fields


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
    shadow_bucket_arn: str | None,
    feedback_key_arn: str | None = None,
    text_key_arn: str | None = None,
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
    if shadow_bucket_arn is not None and text_key_arn is not None:
        # rollout.shadowTextSample above 0: the pairs that keep their text, under their own
        # prefix, encrypted with the stack's key (the bucket policy refuses them otherwise).
        text = f"{shadow_bucket_arn}/{SHADOW_TEXT_PREFIX}/*"
        statements.append(allow("WriteShadowText", ["s3:PutObject"], [text]))
        statements.append(
            {
                **allow("EncryptShadowText", ["kms:GenerateDataKey"], [text_key_arn]),
                # Only for objects under the text prefix, only through S3.
                "Condition": {"StringLike": {"kms:EncryptionContext:aws:s3:arn": text}},
            }
        )
    return statements


def colour_labels(args: InferenceStackArgs) -> dict[str, str]:
    """The colour's objects' labels, and its pods' selector (whatever bundle they run)."""
    return {
        "app.kubernetes.io/name": args.model,
        "app.kubernetes.io/instance": args.namespace,
        "app.kubernetes.io/part-of": "weightshift",
        "weightshift.io/colour": args.colour.value,
    }


def _guardrail_arg(guardrail: BundleGuardrail | None) -> pulumi.Output[str] | None:
    """The gateway's ``--guardrail ID:VERSION``, where the bundle has one."""
    if guardrail is None:
        return None
    return pulumi.Output.all(guardrail.guardrail_id, guardrail.version).apply(
        lambda values: f"{values[0]}:{values[1]}"
    )


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
        kube = pulumi.ResourceOptions(
            parent=self, provider=provider, depends_on=list(args.depends_on)
        )
        bundle = args.bundle.id
        self.budget = budget(args)
        labels = colour_labels(args)
        account = "inference"

        guardrail = self._guardrail(name, args)
        role, identity, grants = self._pod_role(name, args, account, guardrail)
        namespace = self._namespace(name, args, labels, kube)
        in_namespace = pulumi.ResourceOptions.merge(
            kube, pulumi.ResourceOptions(depends_on=[namespace])
        )
        service_account = k8s.core.v1.ServiceAccount(
            name,
            metadata={"name": account, "namespace": args.namespace, "labels": labels},
            automount_service_account_token=False,
            opts=in_namespace,
        )
        pod = PodInputs(
            args=args,
            labels=labels,
            versioned={**labels, "weightshift.io/version": f"v{bundle.version}-{bundle.digest}"},
            annotations={"weightshift.io/bundle": str(bundle)},
            account=account,
            guardrail=_guardrail_arg(guardrail),
            per_pod_seconds=self.budget.per_pod_seconds,
        )
        service = self._service(name, args, labels, in_namespace)
        # Bindings before pods: the load balancer controller injects its readiness gate
        # (healthy in the target group) only into pods created while a TargetGroupBinding
        # names their Service; a pod created first counts as ready on its probe alone.
        bindings = self._bindings(name, args, labels, in_namespace, after=[service])
        deployment = self._deployment(
            name,
            pod,
            in_namespace,
            depends_on=[
                service_account,
                identity,
                *grants,
                service,
                *bindings,
                *args.deployment_after,
            ],
        )
        k8s.policy.v1.PodDisruptionBudget(
            name,
            metadata=manifest({"name": "inference", "namespace": args.namespace, "labels": labels}),
            spec=manifest({"maxUnavailable": 1, "selector": {"matchLabels": labels}}),
            opts=in_namespace,
        )
        self._network_policy(name, args, in_namespace)
        self.namespace = namespace.metadata.apply(lambda meta: str(meta.name))
        self.role_arn = role.arn
        self.serving = [deployment, *bindings]
        self.deployment = deployment
        self.replicas = args.replicas
        self.register_outputs({"namespace": self.namespace, "role_arn": self.role_arn})

    def _pod_role(
        self,
        name: str,
        args: InferenceStackArgs,
        account: str,
        guardrail: BundleGuardrail | None,
    ) -> tuple[aws.iam.Role, aws.eks.PodIdentityAssociation, list[pulumi.Resource]]:
        """The pods' Pod Identity role and its grants: the bundle (read only), the gateway's
        calls, and the guardrail where there is one."""
        bundle = args.bundle.id
        role, policy, identity = pod_identity(
            f"{name}-pods",
            name,
            cluster_name=args.cluster_name,
            namespace=args.namespace,
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
        child = pulumi.ResourceOptions(parent=self)
        gateway_policy = aws.iam.RolePolicy(
            f"{name}-gateway",
            role=role.id,
            policy=pulumi.Output.all(
                args.shadow_bucket_arn,
                args.feedback_key_arn,
                args.shadow_text_key_arn if args.shadow_text_sample > 0 else None,
            ).apply(
                lambda values: policy_document(gateway_statements(values[0], values[1], values[2]))
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
        return role, identity, grants

    def _namespace(
        self,
        name: str,
        args: InferenceStackArgs,
        labels: dict[str, str],
        kube: pulumi.ResourceOptions,
    ) -> k8s.core.v1.Namespace:
        return k8s.core.v1.Namespace(
            name,
            metadata={
                "name": args.namespace,
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

    def _deployment(
        self,
        name: str,
        pod: PodInputs,
        in_namespace: pulumi.ResourceOptions,
        *,
        depends_on: list[pulumi.Resource],
    ) -> k8s.apps.v1.Deployment:
        args = pod.args
        return k8s.apps.v1.Deployment(
            name,
            metadata=manifest(
                {
                    "name": "inference",
                    "namespace": args.namespace,
                    "labels": pod.versioned,
                    "annotations": {
                        **pod.annotations,
                        **(
                            {"weightshift.io/stage": args.stage_marker} if args.stage_marker else {}
                        ),
                        **({"pulumi.com/skipAwait": "true"} if args.skip_await else {}),
                    },
                }
            ),
            spec=manifest(deployment_spec(pod)),
            opts=pulumi.ResourceOptions.merge(
                in_namespace,
                pulumi.ResourceOptions(
                    depends_on=depends_on,
                    # pulumi-kubernetes waits 10 minutes by default; a GPU rollout takes hours.
                    custom_timeouts=pulumi.CustomTimeouts(
                        create=f"{self.budget.seconds}s", update=f"{self.budget.seconds}s"
                    ),
                ),
            ),
        )

    def _service(
        self,
        name: str,
        args: InferenceStackArgs,
        labels: dict[str, str],
        in_namespace: pulumi.ResourceOptions,
    ) -> k8s.core.v1.Service:
        return k8s.core.v1.Service(
            name,
            metadata=manifest({"name": "inference", "namespace": args.namespace, "labels": labels}),
            spec=manifest(service_spec(args, labels)),
            opts=in_namespace,
        )

    def _bindings(
        self,
        name: str,
        args: InferenceStackArgs,
        labels: dict[str, str],
        in_namespace: pulumi.ResourceOptions,
        *,
        after: list[pulumi.Resource],
    ) -> list[k8s.apiextensions.CustomResource]:
        """The Service's pods registered in the colour's target group (and, for shadow on
        the stable colour, in the ``mirror`` target group its mirror listener serves)."""

        def binding(
            resource: str, binding_name: str, target_group: pulumi.Input[str], port: int
        ) -> k8s.apiextensions.CustomResource:
            return k8s.apiextensions.CustomResource(
                resource,
                api_version=TARGET_GROUP_BINDING_API,
                kind="TargetGroupBinding",
                metadata={"name": binding_name, "namespace": args.namespace, "labels": labels},
                spec={
                    "targetGroupARN": target_group,
                    "targetType": "ip",
                    "serviceRef": {"name": "inference", "port": port},
                },
                opts=pulumi.ResourceOptions.merge(
                    in_namespace, pulumi.ResourceOptions(depends_on=after)
                ),
            )

        bindings = [binding(name, "inference", args.target_group_arn, args.port)]
        if args.mirror_target_group_arn is not None:
            bindings.append(
                binding(f"{name}-mirror", "mirror", args.mirror_target_group_arn, args.mirror_port)
            )
        return bindings

    def _network_policy(
        self, name: str, args: InferenceStackArgs, in_namespace: pulumi.ResourceOptions
    ) -> k8s.networking.v1.NetworkPolicy:
        """Only the ALB's subnets on the serving ports, and the other colour's gateways
        (mirrored copies, shadow) on the gateway's."""
        return k8s.networking.v1.NetworkPolicy(
            name,
            metadata=manifest({"name": "only-the-load-balancer", "namespace": args.namespace}),
            spec=manifest(network_policy_spec(args)),
            opts=in_namespace,
        )

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
