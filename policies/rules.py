"""Guardrails for a weightshift stack, as CrossGuard resource policies.

Each rule is a plain function of a resource's inputs that reports violations, so
it runs the same under `pulumi preview --policy-pack policies`, in
`weightshift policy check` (over the offline graph) and in unit tests.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weightshift.config import MODERN_TLS_POLICIES
from weightshift.facts import IAM_ROLE_INLINE_POLICY_CHARACTERS
from weightshift.lambdas.rollback import page_marker
from weightshift.rollout.scheduling import Item, placements
from weightshift.stages import (
    ALB_MAX_TARGET_GROUPS,
    ALB_WEIGHT_MAX,
    DEFAULT_MIRROR_PERCENT,
    Colour,
    Strategy,
    Weights,
    all_stable,
    is_legal_move,
    is_legal_transition,
    stage_of,
    weights_for,
)

try:
    from policies.evaluated import candidate_evaluated, forwarded
except ImportError:  # the pack runs from policies/ (`pulumi preview --policy-pack policies`)
    from evaluated import (  # type: ignore[import-not-found,no-redef]
        candidate_evaluated,
        forwarded,
    )

LISTENER = "aws:lb/listener:Listener"
LOAD_BALANCER = "aws:lb/loadBalancer:LoadBalancer"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
PEERS = ("cidrIpv4", "cidrIpv6", "referencedSecurityGroupId", "prefixListId")
"""What a security group rule's other end can be (exactly one per rule)."""
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
OBJECT_LOCK = "aws:s3/bucketObjectLockConfiguration:BucketObjectLockConfiguration"
LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
EKS_CLUSTER = "aws:eks/cluster:Cluster"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
TARGET_GROUP_BINDING = "kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
IMAGE_BY_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")

MIN_DRAIN_SECONDS = 30
"""A target group must give in-flight generations at least this long to finish."""

Validate = Callable[[ResourceValidationArgs, ReportViolation], None]


def _only(resource_type: str) -> Callable[[Validate], Validate]:
    def wrap(check: Validate) -> Validate:
        def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
            if args.resource_type == resource_type:
                check(args, report)

        validate.__doc__ = check.__doc__
        return validate

    return wrap


def _forward_weights(actions: Any, where: str, report: ReportViolation) -> None:
    for action in actions or []:
        forward = action.get("forward") if isinstance(action, Mapping) else None
        if not forward:
            continue
        groups = forward.get("targetGroups") or []
        if len(groups) > ALB_MAX_TARGET_GROUPS:
            report(
                f"{where}: a forward action names {len(groups)} target groups; the ALB takes at "
                f"most {ALB_MAX_TARGET_GROUPS}.",
                None,
            )
        weights = [g.get("weight", 1) for g in groups]
        for weight in weights:
            if not isinstance(weight, int | float) or not 0 <= weight <= ALB_WEIGHT_MAX:
                report(f"{where}: weight {weight} is outside the ALB's 0..{ALB_WEIGHT_MAX}.", None)
        if groups and not any(isinstance(w, int | float) and w > 0 for w in weights):
            report(f"{where}: every target group has weight 0, so no request can be served.", None)


@_only(LISTENER)
def _weights_legal(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Forward actions name at most 5 target groups, with weights 0..999, not all 0."""
    _forward_weights(args.props.get("defaultActions"), "default action", report)


@_only(LISTENER)
def _tls_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """HTTPS listeners use a modern TLS policy; plain HTTP listeners only redirect to HTTPS."""
    protocol = args.props.get("protocol")
    if protocol == "HTTPS":
        policy = args.props.get("sslPolicy")
        if policy not in MODERN_TLS_POLICIES:
            report(
                f"TLS policy {policy} allows old protocols; use one of {MODERN_TLS_POLICIES}.", None
            )
        if not args.props.get("certificateArn"):
            report("an HTTPS listener needs certificateArn.", None)
    elif protocol == "HTTP":
        for action in args.props.get("defaultActions") or []:
            redirect = action.get("redirect") or {}
            if action.get("type") != "redirect" or redirect.get("protocol") != "HTTPS":
                report("a plain HTTP listener may only redirect to HTTPS.", None)
    else:
        report(f"listener protocol {protocol} is not HTTPS (or an HTTP redirect).", None)


@_only(LOAD_BALANCER)
def _alb_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The ALB drops invalid headers and writes access logs."""
    if args.props.get("dropInvalidHeaderFields") is not True:
        report("set dropInvalidHeaderFields: headers that are not valid HTTP reach the pods.", None)
    logs = args.props.get("accessLogs") or {}
    if logs.get("enabled") is not True or not logs.get("bucket"):
        report("access logs must be on: every request to a model version is evidence.", None)


@_only(LOAD_BALANCER)
def _alb_protected(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The production ALB cannot be deleted by an accidental `pulumi destroy`."""
    if args.props.get("enableDeletionProtection") is not True:
        report("enableDeletionProtection is off.", None)


@_only(TARGET_GROUP)
def _drains(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Target groups give in-flight requests time to finish before a target leaves."""
    delay = args.props.get("deregistrationDelay")
    if delay is None or float(delay) < MIN_DRAIN_SECONDS:
        report(
            f"deregistrationDelay {delay} s is under {MIN_DRAIN_SECONDS} s: generations in "
            "flight would be cut off when a pod leaves.",
            None,
        )
    health = args.props.get("healthCheck") or {}
    if health.get("enabled") is False or not health.get("path"):
        report("a target group needs an HTTP health check on the server's health path.", None)


@_only(PUBLIC_ACCESS_BLOCK)
def _no_public_buckets(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every public access setting of every bucket is blocked."""
    keys = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    off = [key for key in keys if args.props.get(key) is not True]
    if off:
        report(f"public access is not fully blocked: {', '.join(off)} must be true.", None)


@_only(BUCKET_POLICY)
def _bucket_tls_only(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Bucket policies deny every request that is not over TLS."""
    raw = args.props.get("policy")
    try:
        policy = json.loads(raw) if isinstance(raw, str) else raw or {}
    except json.JSONDecodeError:
        report("the bucket policy is not valid JSON.", None)
        return
    for statement in policy.get("Statement", []):
        condition = statement.get("Condition", {}).get("Bool", {})
        if statement.get("Effect") == "Deny" and condition.get("aws:SecureTransport") in (
            "false",
            False,
        ):
            return
    report("the bucket policy must deny requests with aws:SecureTransport false.", None)


@_only(INGRESS_RULE)
def _open_ingress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Only HTTPS (and its HTTP redirect) may be open to the internet."""
    cidr = args.props.get("cidrIpv4")
    if cidr is None:
        return
    if ipaddress.IPv4Network(cidr, strict=False).prefixlen == 0:
        ports = (args.props.get("fromPort"), args.props.get("toPort"))
        if ports not in ((443, 443), (80, 80)):
            report(f"ports {ports[0]}-{ports[1]} are open to the whole internet.", None)


@_only(SECURITY_GROUP)
def _inline_rules(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Security group rules are separate resources, so one rule changes without the others."""
    if args.props.get("ingress") or args.props.get("egress"):
        report("declare rules as SecurityGroupIngressRule/EgressRule resources, not inline.", None)


@_only(OBJECT_LOCK)
def _compliance_lock(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Published bundles are locked in COMPLIANCE mode: no one can delete or shorten a lock."""
    rule = (args.props.get("rule") or {}).get("defaultRetention") or {}
    if rule.get("mode") != "COMPLIANCE":
        report(
            f"default retention mode is {rule.get('mode')}: GOVERNANCE locks can be bypassed; "
            "production bundles need COMPLIANCE.",
            None,
        )
    if not (rule.get("days") or rule.get("years")):
        report("the bucket needs a default retention period.", None)


@_only(LAUNCH_TEMPLATE)
def _nodes_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Nodes require IMDSv2 with a hop limit of 1 (pods cannot take the node's credentials)
    and encrypt every volume (the pulled bundle lands there)."""
    metadata = args.props.get("metadataOptions") or {}
    if metadata.get("httpTokens") != "required":
        report("metadataOptions.httpTokens must be 'required' (IMDSv2 only).", None)
    if int(metadata.get("httpPutResponseHopLimit") or 2) > 1:
        report(
            "metadataOptions.httpPutResponseHopLimit must be 1: with 2, any pod can read the "
            "node role's credentials.",
            None,
        )
    for mapping in args.props.get("blockDeviceMappings") or []:
        if str((mapping.get("ebs") or {}).get("encrypted")).lower() != "true":
            report(f"volume {mapping.get('deviceName')} is not encrypted.", None)


@_only(EKS_CLUSTER)
def _cluster_private(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """The Kubernetes API is private, or public only to listed addresses; secrets are
    encrypted with KMS; audit logs are on."""
    vpc = args.props.get("vpcConfig") or {}
    if vpc.get("endpointPublicAccess", True):
        cidrs = vpc.get("publicAccessCidrs") or ["0.0.0.0/0"]
        if "0.0.0.0/0" in cidrs:
            report("the API endpoint is open to the internet: list publicAccessCidrs.", None)
    encryption = args.props.get("encryptionConfig") or {}
    if "secrets" not in (encryption.get("resources") or []):
        report("encryptionConfig must encrypt secrets with a KMS key.", None)
    if "audit" not in (args.props.get("enabledClusterLogTypes") or []):
        report("enabledClusterLogTypes must include audit.", None)


@_only(DEPLOYMENT)
def _images_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    """Every container image is pinned by digest: a tag can move under a running rollout,
    and then blue and green are no longer what was reviewed."""
    pod = ((args.props.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        image = str(container.get("image", ""))
        if not IMAGE_BY_DIGEST.search(image):
            report(
                f"container {container.get('name')}: image {image!r} is not pinned by digest.", None
            )


def _of_type(args: StackValidationArgs, resource_type: str) -> list[PolicyResource]:
    return [r for r in args.resources if r.resource_type == resource_type]


def _refers_to(resource: PolicyResource, prop: str, value: Any, target: PolicyResource) -> bool:
    """``resource``'s ``prop`` names ``target``: by value, or (while values are not known yet)
    because the property's value came from ``target``."""
    if value is not None and value == target.props.get("arn"):
        return True
    return any(dep.urn == target.urn for dep in resource.property_dependencies.get(prop, []))


def _on_call_subscribed(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every on-call topic has a subscription: an automated rollback nobody hears about is
    a rollback nobody investigates."""
    subscriptions = _of_type(args, SUBSCRIPTION)
    for topic in _of_type(args, TOPIC):
        if not any(_refers_to(s, "topic", s.props.get("topic"), topic) for s in subscriptions):
            report(
                f"topic {topic.name} has no subscription: set weightshift:rollback.onCall "
                "(email addresses or https endpoints) so a rollback pages someone.",
                topic.urn,
            )


def _weight_has_targets(args: StackValidationArgs, report: ReportViolation) -> None:
    """No listener weight goes to a target group that nothing registers targets in: the ALB
    answers that share of requests with 503."""
    groups = _of_type(args, TARGET_GROUP)
    bindings = _of_type(args, TARGET_GROUP_BINDING)
    for listener in _of_type(args, LISTENER):
        for arn, weight in forwarded(listener):
            if not isinstance(weight, int | float) or weight <= 0:
                continue
            group = next((g for g in groups if g.props.get("arn") == arn), None)
            if group is None:
                continue  # a target group of another stack: not ours to judge
            bound = any(
                _refers_to(b, "spec", (b.props.get("spec") or {}).get("targetGroupARN"), group)
                for b in bindings
            )
            if not bound:
                report(
                    f"listener {listener.name} sends weight {weight} to target group "
                    f"{group.name}, which no TargetGroupBinding registers targets in: the ALB "
                    "would answer that share of requests with 503.",
                    listener.urn,
                )


def _inline_policies_fit(args: StackValidationArgs, report: ReportViolation) -> None:
    """A role's inline policies together stay within IAM's 10,240 characters (whitespace not
    counted); beyond it PutRolePolicy fails and the deploy stops."""
    by_role: dict[str, list[PolicyResource]] = {}
    for policy in _of_type(args, ROLE_POLICY):
        sources = [dep.urn for dep in policy.property_dependencies.get("role", [])]
        by_role.setdefault(sources[0] if sources else str(policy.props.get("role")), []).append(
            policy
        )
    for policies in by_role.values():
        size = sum(
            sum(1 for c in str(p.props.get("policy") or "") if not c.isspace()) for p in policies
        )
        if size > IAM_ROLE_INLINE_POLICY_CHARACTERS:
            names = ", ".join(p.name for p in policies)
            report(
                f"inline policies {names} of one role total {size} characters; IAM allows "
                f"{IAM_ROLE_INLINE_POLICY_CHARACTERS} per role: PutRolePolicy would fail.",
                policies[0].urn,
            )


def _source(resource: PolicyResource, prop: str) -> Any:
    """``prop``'s value, or (not known yet) the resources it comes from."""
    value = resource.props.get(prop)
    if isinstance(value, str) and value:
        return value
    return tuple(sorted(dep.urn for dep in resource.property_dependencies.get(prop, []))) or None


def _rules_unique(args: StackValidationArgs, report: ReportViolation) -> None:
    """No two security group rules are the same rule (group, direction, protocol, ports,
    peer): EC2 refuses the second with InvalidPermission.Duplicate, and deleting either
    revokes the one rule both stand for."""
    seen: dict[tuple[Any, ...], PolicyResource] = {}
    for kind in (INGRESS_RULE, EGRESS_RULE):
        for rule in _of_type(args, kind):
            peer = next(
                (
                    (prop, _source(rule, prop))
                    for prop in PEERS
                    if rule.props.get(prop) or rule.property_dependencies.get(prop)
                ),
                None,
            )
            key = (
                kind,
                _source(rule, "securityGroupId"),
                str(rule.props.get("ipProtocol")),
                rule.props.get("fromPort"),
                rule.props.get("toPort"),
                peer,
            )
            if key in seen:
                report(
                    f"{rule.name} is the same rule as {seen[key].name} (group, protocol, "
                    "ports, peer): EC2 refuses the second (InvalidPermission.Duplicate). "
                    "Declare it once.",
                    rule.urn,
                )
            else:
                seen[key] = rule


def _pods_schedulable(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every pod of the stack (our Deployments, every Helm release's pods as its pinned
    chart's defaults and our values define them) can land on some node group, and a pod
    that needs GPUs only where a device plugin advertises them."""
    items = [Item(r.resource_type, r.name, r.props) for r in args.resources]
    if not any(item.type == "aws:eks/nodeGroup:NodeGroup" for item in items):
        return  # an existing cluster: its nodes are not part of this stack
    found, unknown = placements(items)
    for problem in unknown:
        report(f"cannot check where its pods run: {problem}", None)
    for placement in found:
        if not placement.groups:
            reasons = "; ".join(f"{g}: {why}" for g, why in sorted(placement.refused.items()))
            report(f"{placement.workload.name} can land on no node group ({reasons}).", None)


# --- traffic, alarms and the rollback function: stack policies over the whole graph ---------

FUNCTION = "aws:lambda/function:Function"
PERMISSION = "aws:lambda/permission:Permission"
COMPOSITE_ALARM = "aws:cloudwatch/compositeAlarm:CompositeAlarm"
METRIC_ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
ROLE = "aws:iam/role:Role"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
KMS_KEY = "aws:kms/key:Key"
BUCKET = "aws:s3/bucket:Bucket"
ARTIFACT_STORE = "weightshift:index:ArtifactStore"
"""The component that holds published bundles (``components/artifact_store.py``)."""
ALARM_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"
"""The service principal a CloudWatch alarm invokes a Lambda function as (CloudWatch user
guide, "Using Amazon CloudWatch alarms", Lambda alarm actions)."""
STAGE_ANNOTATION = "weightshift.io/stage"
"""The candidate's Deployment carries the configured ``"<strategy> <stage>"`` here
(``__main__.py``, ``stage_marker``): the stage the program was asked to deploy."""
COLOUR_LABEL = "weightshift.io/colour"
BUNDLE_ANNOTATION = "weightshift.io/bundle"
ROLLBACK_SETTINGS = ("LISTENER_ARN", "STABLE_TARGET_GROUP_ARN", "CANDIDATE_TARGET_GROUP_ARN")
"""Environment variables that make a Lambda function a rollback function
(``components/rollback.py``, ``function_variables``)."""

WILDCARD_ONLY_ACTIONS: Mapping[str, str] = {
    "elasticloadbalancing:DescribeListeners": (
        "https://docs.aws.amazon.com/service-authorization/latest/reference/"
        "list_awselasticloadbalancingv2.html (DescribeListeners: no resource type, so the "
        'Resource element must be "*")'
    ),
}
"""The IAM actions the rollback function may be granted on ``"*"``, each because AWS
supports no resource-level permission for it, with the page that says so (Service
Authorization Reference). Any other ``"*"`` in its role is a violation."""


@dataclass(frozen=True)
class RollbackFunction:
    """A rollback function of the stack, as its environment describes what it protects."""

    resource: PolicyResource
    settings: Mapping[str, Any]

    @property
    def listener(self) -> Any:
        return self.settings.get("LISTENER_ARN")

    @property
    def stable(self) -> Any:
        return self.settings.get("STABLE_TARGET_GROUP_ARN")

    @property
    def guarded(self) -> tuple[Any, ...]:
        """Target groups whose traffic this function's alarm takes away."""
        keys = ("CANDIDATE_TARGET_GROUP_ARN", "MIRROR_TARGET_GROUP_ARN")
        return tuple(self.settings[k] for k in keys if self.settings.get(k))

    @property
    def candidate(self) -> Colour | None:
        colour = self.settings.get("CANDIDATE_COLOUR")
        return Colour(colour) if colour in {c.value for c in Colour} else None


def _rollback_functions(args: StackValidationArgs) -> list[RollbackFunction]:
    found = []
    for function in _of_type(args, FUNCTION):
        variables = (function.props.get("environment") or {}).get("variables") or {}
        if all(variables.get(key) for key in ROLLBACK_SETTINGS):
            found.append(RollbackFunction(function, variables))
    return found


def _weights_by_arn(listener: PolicyResource) -> dict[Any, Any]:
    return dict(forwarded(listener))


@dataclass(frozen=True)
class StageMarker:
    """What the candidate's Deployment says the program was asked to deploy."""

    strategy: Strategy
    stage: int
    candidate: Colour
    version: str | None
    urn: str | None = None


def _stage_markers(args: StackValidationArgs) -> tuple[list[StageMarker], list[str]]:
    """Every stage marker of the stack, and why any that cannot be read is unreadable."""
    markers, problems = [], []
    for deployment in _of_type(args, DEPLOYMENT):
        metadata = deployment.props.get("metadata") or {}
        marker = (metadata.get("annotations") or {}).get(STAGE_ANNOTATION)
        if marker is None:
            continue
        strategy, _, index = str(marker).partition(" ")
        colour = (metadata.get("labels") or {}).get(COLOUR_LABEL)
        try:
            stage_of(Strategy(strategy), int(index))
            markers.append(
                StageMarker(
                    Strategy(strategy),
                    int(index),
                    Colour(str(colour)),
                    (metadata.get("annotations") or {}).get(BUNDLE_ANNOTATION),
                    deployment.urn,
                )
            )
        except ValueError:
            problems.append(
                f"Deployment {deployment.name}: {STAGE_ANNOTATION} {marker!r} with colour "
                f"{colour!r} is not '<strategy> <stage>' of a known strategy and colour."
            )
    return markers, problems


def _expected(function: RollbackFunction, weights: Weights) -> dict[Any, int]:
    candidate = function.candidate or Colour.GREEN
    expected = {function.stable: weights.of(candidate.other)}
    expected[function.settings["CANDIDATE_TARGET_GROUP_ARN"]] = weights.of(candidate)
    mirror = function.settings.get("MIRROR_TARGET_GROUP_ARN")
    if mirror:
        expected[mirror] = weights.mirror
    return expected


def _weights_are_a_stage(args: StackValidationArgs, report: ReportViolation) -> None:
    """The listener's forward weights are exactly a stage of the configured strategy: the
    stage the candidate's Deployment is marked with, or all to the stable colour (stage 0,
    where a rollback record holds the stack). No hand-edited split reaches the ALB."""
    markers, problems = _stage_markers(args)
    for problem in problems:
        report(problem, None)
    functions = _rollback_functions(args)
    for listener in _of_type(args, LISTENER):
        actual = {arn: w for arn, w in _weights_by_arn(listener).items() if w}
        if not actual:
            continue
        function = next((f for f in functions if _names(f.listener, listener)), None)
        if function is None or function.candidate is None:
            if len(actual) > 1:
                report(
                    f"listener {listener.name} splits traffic over {len(actual)} target groups "
                    "but no rollback function names this listener, so no stage can be checked: "
                    "a split without a candidate and its rollback is not a stage.",
                    listener.urn,
                )
            continue
        marker = next((m for m in markers if m.candidate is function.candidate), None)
        if marker is None:
            report(
                f"listener {listener.name}: the candidate ({function.candidate.value}) has no "
                f"Deployment marked with {STAGE_ANNOTATION}, so its weights cannot be checked "
                "against a stage.",
                listener.urn,
            )
            continue
        mirror_weight = actual.get(function.settings.get("MIRROR_TARGET_GROUP_ARN"), 0)
        mirror_percent = mirror_weight / 10 if mirror_weight else DEFAULT_MIRROR_PERCENT
        staged = weights_for(
            marker.strategy,
            marker.stage,
            marker.candidate,
            mirror_percent,
            _shadow_sample(marker, mirror_weight),
        )
        allowed = [_expected(function, staged), _expected(function, all_stable(marker.candidate))]
        if not any({k: v for k, v in e.items() if v} == actual for e in allowed):
            shown = ", ".join(f"{_label(function, arn)} {w}" for arn, w in actual.items())
            wanted = ", ".join(f"{_label(function, arn)} {w}" for arn, w in allowed[0].items() if w)
            report(
                f"listener {listener.name} forwards {shown}, which is not stage "
                f"{marker.stage} of {marker.strategy.value} ({wanted}) nor all to the stable "
                "colour: set weightshift:rollout.stage, never the weights.",
                listener.urn,
            )


def _shadow_sample(marker: StageMarker, mirror_weight: int) -> float:
    """The ``rollout.shadowSample`` a canary stage's mirror weight stands for (the stable
    colour's share, sampled: ``(100 - served) * sample`` %), as the shadow strategy's
    ``mirrorPercent`` is read from its weight; 0 at any other strategy or stage. A weight
    beyond the stable colour's share stands for no sample, and so matches no stage."""
    if marker.strategy is not Strategy.CANARY or not mirror_weight:
        return 0.0
    served = stage_of(marker.strategy, marker.stage).served_percent
    if not 0.0 < served < 100.0:
        return 0.0
    return min(1.0, (mirror_weight / 10) / (100.0 - served))


def _label(function: RollbackFunction, arn: Any) -> str:
    if arn == function.stable:
        return "stable"
    if arn == function.settings.get("MIRROR_TARGET_GROUP_ARN"):
        return "mirror"
    if arn == function.settings.get("CANDIDATE_TARGET_GROUP_ARN"):
        return "candidate"
    return str(arn)


def _names(value: Any, target: PolicyResource) -> bool:
    return value is not None and value == target.props.get("arn")


class BaseStage(BaseModel):
    """The policy config of ``stage-moves-one-step``: the state the change starts from (the
    base branch's stack config, or the deployed stack's), set by ``weightshift policy check
    --base-config`` and by the pull-request workflow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    base_strategy: Literal["canary", "blue-green", "shadow"] = Field(alias="baseStrategy")
    base_stage: int = Field(alias="baseStage", ge=0)
    base_candidate: Literal["blue", "green"] = Field(alias="baseCandidate")
    base_version: str | None = Field(default=None, alias="baseVersion")


def _base_stage_schema() -> PolicyConfigSchema:
    schema = BaseStage.model_json_schema(by_alias=True)
    properties = {
        name: {k: v for k, v in prop.items() if k != "title"}
        for name, prop in schema["properties"].items()
    }
    # Nothing required: the engine validates every policy's config against its schema, with
    # {} when none is given, so a required key would stop a plain `pulumi preview
    # --policy-pack policies` before it starts. A partial base is reported by the rule.
    return PolicyConfigSchema(properties, [])


def _one_stage(args: StackValidationArgs, report: ReportViolation) -> None:
    """A change moves the rollout at most one stage from where it starts (the base branch's
    config in a pull request, the deployed stack's otherwise): forward one stage, back to
    stage 0 (abort), or a new candidate (a new version, or ``rollout finish``) at stage 0.
    Without a base in the pack's config the rule has nothing to compare with and passes."""
    config = {k: v for k, v in args.get_config().items() if k != "enforcementLevel"}
    if not config:
        return
    try:
        base = BaseStage.model_validate(config)
    except ValidationError as error:
        report(f"the policy config is not a base stage: {_first_error(error)}", None)
        return
    markers, _ = _stage_markers(args)
    if not markers:
        return  # no candidate deployed: nothing gets traffic beyond the stable colour
    for marker in markers:
        where = f"{marker.strategy.value} stage {marker.stage}"
        start = f"{base.base_strategy} stage {base.base_stage}"
        new_candidate = marker.candidate.value != base.base_candidate or (
            base.base_version is not None and marker.version != base.base_version
        )
        if new_candidate:
            if marker.stage != 0:
                report(
                    f"a new candidate ({marker.candidate.value} {marker.version}) starts at "
                    f"{where}; the change starts from {start} with {base.base_candidate} "
                    f"{base.base_version}: a new candidate starts at stage 0.",
                    marker.urn,
                )
            continue
        if marker.strategy.value != base.base_strategy:
            moved = is_legal_move(
                Strategy(base.base_strategy), base.base_stage, marker.strategy, marker.stage
            )
            if marker.stage != 0 and not (base.base_stage == 0 and marker.stage == 1) and not moved:
                report(
                    f"the change moves from {start} to {where}: a strategy changes only at "
                    "stage 0 (then one stage at most), or from shadow stage 1 to canary stage 1 "
                    "(`weightshift rollout promote`, on the shadow gate).",
                    marker.urn,
                )
            continue
        if marker.stage != base.base_stage and not is_legal_transition(
            marker.strategy, base.base_stage, marker.stage
        ):
            report(
                f"the change moves from {start} to {where}: a change may go forward one "
                "stage or back to stage 0, never further. Promote one stage per change.",
                marker.urn,
            )


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first.get('msg')}"


def _alarms_wired(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every target group that receives traffic, other than the stable colour a rollback
    falls back to, is guarded by a rollback function whose composite alarm has its actions
    enabled, names the function and the on-call topic, and may invoke the function."""
    functions = _rollback_functions(args)
    composites = _of_type(args, COMPOSITE_ALARM)
    permissions = _of_type(args, PERMISSION)
    groups = {g.props.get("arn"): g for g in _of_type(args, TARGET_GROUP)}
    for listener in _of_type(args, LISTENER):
        mine = [f for f in functions if _names(f.listener, listener)]
        live = [arn for arn, weight in forwarded(listener) if weight]
        if len(live) < 2 and not mine:
            continue  # one target group takes everything: nothing to roll back to
        for arn in live:
            if any(arn == f.stable for f in mine):
                continue
            name = groups[arn].name if arn in groups else str(arn)
            guard = next((f for f in mine if arn in f.guarded), None)
            if guard is None:
                report(
                    f"listener {listener.name} sends traffic to {name}, which no rollback "
                    "function guards: its alarms would page nobody and move no weight.",
                    listener.urn,
                )
                continue
            for problem in _wiring_problems(guard, composites, permissions, args):
                report(f"{name} receives traffic but {problem}", guard.resource.urn)


def _wiring_problems(
    function: RollbackFunction,
    composites: list[PolicyResource],
    permissions: list[PolicyResource],
    args: StackValidationArgs,
) -> list[str]:
    alarm_name = function.settings.get("ALARM_NAME")
    composite = next((c for c in composites if c.props.get("alarmName") == alarm_name), None)
    if composite is None:
        return [f"its rollback alarm {alarm_name} is not in the stack."]
    problems = []
    if composite.props.get("actionsEnabled") is False:
        problems.append(f"alarm {alarm_name} has its actions disabled.")
    actions = composite.props.get("alarmActions") or []
    if not any(_refers_to(composite, "alarmActions", a, function.resource) for a in actions):
        problems.append(f"alarm {alarm_name} does not invoke {function.resource.name}.")
    topic = function.settings.get("TOPIC_ARN")
    if not topic or topic not in actions:
        problems.append(f"alarm {alarm_name} does not notify the on-call topic {topic}.")
    alarms = {
        str(a.props.get("name") or a.props.get("alarmName")) for a in _of_type(args, METRIC_ALARM)
    }
    named = re.findall(r'ALARM\("([^"]+)"\)', str(composite.props.get("alarmRule") or ""))
    if not named or not set(named) <= alarms:
        problems.append(
            f"alarm {alarm_name}'s rule names no alarm of the stack (or one not in it)."
        )
    invokes = any(
        p.props.get("action") == "lambda:InvokeFunction"
        and p.props.get("principal") == ALARM_PRINCIPAL
        and (
            p.props.get("function")
            in (function.resource.props.get("name"), function.resource.props.get("arn"))
            or _refers_to(p, "function", None, function.resource)
        )
        and _refers_to(p, "sourceArn", p.props.get("sourceArn"), composite)
        for p in permissions
    )
    if not invokes:
        problems.append(
            f"no Lambda permission lets alarm {alarm_name} ({ALARM_PRINCIPAL}) invoke "
            f"{function.resource.name}: the alarm action would fail."
        )
    return problems


def _least_privilege(args: StackValidationArgs, report: ReportViolation) -> None:
    """The rollback function has reserved concurrency (a throttled account cannot starve
    it) and its role grants only what it does on its own listener, rollback record (and
    its page markers), topic, incident prefix, their keys and its log group: no managed
    policies, no wildcard action, no ``"*"`` resource beyond ``WILDCARD_ONLY_ACTIONS``."""
    roles = _of_type(args, ROLE)
    keys = {k.props.get("arn") for k in _of_type(args, KMS_KEY)}
    log_groups = {g.props.get("name"): g.props.get("arn") for g in _of_type(args, LOG_GROUP)}
    for function in _rollback_functions(args):
        resource = function.resource
        reserved = resource.props.get("reservedConcurrentExecutions")
        if not isinstance(reserved, int) or reserved < 1:
            report(
                f"{resource.name} has no reserved concurrency ({reserved}): with the account's "
                "concurrency used up, the rollback would be throttled exactly when it is needed. "
                "Set weightshift:rollback.reservedConcurrency (1 or more).",
                resource.urn,
            )
        role = next(
            (r for r in roles if _refers_to(resource, "role", resource.props.get("role"), r)), None
        )
        if role is None:
            report(
                f"{resource.name}'s role is not in the stack, so its grants cannot be checked.",
                resource.urn,
            )
            continue
        if role.props.get("managedPolicyArns") or role.props.get("inlinePolicies"):
            report(
                f"role {role.name} of {resource.name} declares policies on the role itself "
                "(managedPolicyArns, inlinePolicies): grant through one RolePolicy.",
                role.urn,
            )
        for attachment in _of_type(args, ROLE_POLICY_ATTACHMENT):
            if _refers_to(attachment, "role", None, role) or attachment.props.get("role") in (
                role.props.get("name"),
                role.props.get("id"),
            ):
                report(
                    f"managed policy {attachment.props.get('policyArn')} is attached to "
                    f"{resource.name}'s role: it grants more than the function does.",
                    attachment.urn,
                )
        allowed = _own_resources(function, keys, log_groups, resource)
        for policy in _of_type(args, ROLE_POLICY):
            if not _refers_to(policy, "role", None, role) and policy.props.get("role") not in (
                role.props.get("name"),
                role.props.get("id"),
            ):
                continue
            for problem in _grant_problems(policy.props.get("policy"), allowed):
                report(f"{resource.name}'s role policy {policy.name}: {problem}", policy.urn)


def _own_resources(
    function: RollbackFunction,
    keys: set[Any],
    log_groups: Mapping[Any, Any],
    resource: PolicyResource,
) -> set[str]:
    """The ARNs the rollback function's role may name: what its environment says it acts
    on, the stack's KMS keys and its own log group's streams."""
    settings = function.settings
    # arn:<partition>:elasticloadbalancing:<region>:<account>:listener/...
    _, partition, _, region, account = (str(settings["LISTENER_ARN"]).split(":") + [""] * 5)[:5]
    record = settings.get("RECORD_PARAMETER")
    parameter = f"arn:{partition}:ssm:{region}:{account}:parameter{record}"
    own = {
        str(settings["LISTENER_ARN"]),
        parameter,
        page_marker(parameter, "*"),
        str(settings.get("TOPIC_ARN")),
        f"arn:{partition}:s3:::{settings.get('INCIDENT_BUCKET')}/{settings.get('INCIDENT_PREFIX')}/*",
        *(str(k) for k in keys if k),
    }
    group = (resource.props.get("loggingConfig") or {}).get("logGroup")
    if log_groups.get(group):
        own.add(f"{log_groups[group]}:*")
    return own


def _grant_problems(raw: Any, allowed: set[str]) -> list[str]:
    try:
        document = json.loads(raw) if isinstance(raw, str) else raw or {}
    except json.JSONDecodeError:
        return ["the policy is not valid JSON."]
    statements = document.get("Statement") or []
    problems = []
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        sid = statement.get("Sid") or "(no Sid)"
        if "NotAction" in statement or "NotResource" in statement:
            problems.append(
                f"statement {sid} uses NotAction/NotResource: it grants everything else."
            )
            continue
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        for action in actions:
            if "*" in action:
                problems.append(f"statement {sid} grants the wildcard action {action!r}.")
        for arn in resources:
            if arn == "*":
                loose = [a for a in actions if a not in WILDCARD_ONLY_ACTIONS]
                if loose:
                    problems.append(
                        f'statement {sid} grants {", ".join(loose)} on every resource ("*"); '
                        "only actions AWS authorizes on no resource (WILDCARD_ONLY_ACTIONS) may."
                    )
            elif arn not in allowed:
                problems.append(
                    f"statement {sid} names {arn}, which is not the function's own listener, "
                    "rollback record, topic, incident prefix, key or log group."
                )
    return problems


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _artifact_bucket_locked(args: StackValidationArgs, report: ReportViolation) -> None:
    """Every bucket of the artifact store (published bundles, evaluation reports, incident
    records) is created with Object Lock and has a COMPLIANCE default retention: a bundle
    that traffic reached can be neither deleted nor overwritten."""
    locks = _of_type(args, OBJECT_LOCK)
    for bucket in _of_type(args, BUCKET):
        if f"{ARTIFACT_STORE}$" not in bucket.urn:
            continue
        if bucket.props.get("objectLockEnabled") is not True:
            report(
                f"artifact bucket {bucket.name} is created without Object Lock "
                "(objectLockEnabled): published bundles could be deleted or overwritten, and "
                "Object Lock cannot be turned on for an existing bucket's old objects.",
                bucket.urn,
            )
        lock = next(
            (
                lock
                for lock in locks
                if _refers_to(lock, "bucket", None, bucket)
                or lock.props.get("bucket") == bucket.props.get("bucket")
            ),
            None,
        )
        if lock is None:
            report(
                f"artifact bucket {bucket.name} has no Object Lock configuration: nothing "
                "retains a published bundle.",
                bucket.urn,
            )
            continue
        lock_args = ResourceValidationArgs(
            lock.resource_type, lock.props, lock.urn, lock.name, lock.opts, None
        )
        _compliance_lock(lock_args, _prefixed(report, f"artifact bucket {bucket.name}: ", lock.urn))


def _prefixed(report: ReportViolation, prefix: str, urn: str) -> ReportViolation:
    def relay(message: str, _urn: str | None = None) -> None:
        report(prefix + message, urn)

    return relay


def _policy(name: str, validate: Validate, level: EnforcementLevel) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=(validate.__doc__ or name).strip(),
        validate=validate,
        enforcement_level=level,
    )


def _stack_policy(
    name: str,
    validate: Callable[[StackValidationArgs, ReportViolation], None],
    level: EnforcementLevel = EnforcementLevel.MANDATORY,
    config_schema: PolicyConfigSchema | None = None,
) -> StackValidationPolicy:
    return StackValidationPolicy(
        name=name,
        description=(validate.__doc__ or name).strip(),
        validate=validate,
        enforcement_level=level,
        config_schema=config_schema,
    )


REPLACED_BY: Mapping[str, tuple[str, ...]] = {
    TOPIC: ("name", "namePrefix", "fifoTopic"),
    SUBSCRIPTION: ("topic", "protocol", "endpoint"),
    LOG_GROUP: ("name", "namePrefix"),
}
"""The inputs whose change replaces the resource (``forceNew`` in the AWS provider:
registry.terraform.io/providers/hashicorp/aws, resources ``aws_sns_topic``,
``aws_sns_topic_subscription`` and ``aws_cloudwatch_log_group``; pulumi-aws wraps them)."""


@dataclass(frozen=True)
class TransitionPolicy:
    """A rule over two states of one stack: what a stage change (or ``rollout finish``)
    would do, which no policy over one state can see. ``weightshift policy check`` runs it
    between consecutive stages of every strategy and from the last stage to the state after
    ``rollout finish``."""

    name: str
    validate: Callable[[StackValidationArgs, StackValidationArgs, ReportViolation], None]
    enforcement_level: EnforcementLevel = EnforcementLevel.MANDATORY

    @property
    def description(self) -> str:
        return (self.validate.__doc__ or self.name).strip()


def _paging_survives(
    before: StackValidationArgs, after: StackValidationArgs, report: ReportViolation
) -> None:
    """No stage change and no ``rollout finish`` replaces or deletes the on-call topic, its
    subscriptions or a log group: a replaced email subscription stays pending until someone
    confirms it again (the next rollback pages nobody), and a replaced log group loses its
    logs."""
    kept = {r.urn: r for r in after.resources}
    for old in before.resources:
        keys = REPLACED_BY.get(old.resource_type)
        if keys is None:
            continue
        new = kept.get(old.urn)
        kind = old.resource_type.rsplit(":", 1)[-1]
        if new is None:
            report(f"{kind} {old.name} would be deleted.", old.urn)
            continue
        changed = [k for k in keys if old.props.get(k) != new.props.get(k)]
        if changed:
            what = ", ".join(f"{k} {old.props.get(k)!r} -> {new.props.get(k)!r}" for k in changed)
            report(
                f"{kind} {old.name} would be replaced ({what}): name it after the stack, not "
                "after anything a stage or `rollout finish` changes.",
                old.urn,
            )


TRANSITION_POLICIES: tuple[TransitionPolicy, ...] = (
    TransitionPolicy("paging-and-logs-survive-stage-changes", _paging_survives),
)

MANDATORY = EnforcementLevel.MANDATORY
POLICIES: tuple[ResourceValidationPolicy | StackValidationPolicy, ...] = (
    _policy("alb-forward-weights-legal", _weights_legal, MANDATORY),
    _policy("alb-tls-only", _tls_only, MANDATORY),
    _policy("alb-hardened", _alb_hardened, MANDATORY),
    _policy("alb-deletion-protection", _alb_protected, EnforcementLevel.ADVISORY),
    _policy("target-group-drains", _drains, MANDATORY),
    _policy("s3-no-public-access", _no_public_buckets, MANDATORY),
    _policy("s3-tls-only", _bucket_tls_only, MANDATORY),
    _policy("s3-object-lock-compliance", _compliance_lock, MANDATORY),
    _policy("sg-only-https-open", _open_ingress, MANDATORY),
    _policy("sg-rules-as-resources", _inline_rules, EnforcementLevel.ADVISORY),
    _policy("nodes-imdsv2-encrypted", _nodes_hardened, MANDATORY),
    _policy("eks-private-encrypted-audited", _cluster_private, MANDATORY),
    _policy("images-pinned-by-digest", _images_pinned, MANDATORY),
    _stack_policy("on-call-topic-subscribed", _on_call_subscribed),
    _stack_policy("listener-weight-reaches-targets", _weight_has_targets),
    _stack_policy("pods-schedulable", _pods_schedulable),
    _stack_policy("iam-inline-policies-fit", _inline_policies_fit),
    _stack_policy("sg-rules-unique", _rules_unique),
    _stack_policy("listener-weights-are-a-stage", _weights_are_a_stage),
    _stack_policy("stage-moves-one-step", _one_stage, config_schema=_base_stage_schema()),
    _stack_policy("traffic-colours-alarmed", _alarms_wired),
    _stack_policy("rollback-function-least-privilege", _least_privilege),
    _stack_policy("artifact-bucket-object-lock", _artifact_bucket_locked),
    _stack_policy("candidate-evaluated", candidate_evaluated),
)
