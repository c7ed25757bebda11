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
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from weightshift.config import MODERN_TLS_POLICIES
from weightshift.facts import IAM_ROLE_INLINE_POLICY_CHARACTERS
from weightshift.rollout.scheduling import Item, placements
from weightshift.stages import ALB_MAX_TARGET_GROUPS, ALB_WEIGHT_MAX

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


def _forwarded(listener: PolicyResource) -> list[tuple[Any, Any]]:
    """(target group ARN, weight) of every forward in the listener's default actions."""
    found = []
    for action in listener.props.get("defaultActions") or []:
        forward = action.get("forward") if isinstance(action, Mapping) else None
        for group in (forward or {}).get("targetGroups") or []:
            found.append((group.get("arn"), group.get("weight", 1)))
    return found


def _weight_has_targets(args: StackValidationArgs, report: ReportViolation) -> None:
    """No listener weight goes to a target group that nothing registers targets in: the ALB
    answers that share of requests with 503."""
    groups = _of_type(args, TARGET_GROUP)
    bindings = _of_type(args, TARGET_GROUP_BINDING)
    for listener in _of_type(args, LISTENER):
        for arn, weight in _forwarded(listener):
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


def _policy(name: str, validate: Validate, level: EnforcementLevel) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name,
        description=(validate.__doc__ or name).strip(),
        validate=validate,
        enforcement_level=level,
    )


def _stack_policy(
    name: str, validate: Callable[[StackValidationArgs, ReportViolation], None]
) -> StackValidationPolicy:
    return StackValidationPolicy(
        name=name,
        description=(validate.__doc__ or name).strip(),
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
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
)
