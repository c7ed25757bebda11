"""A candidate gets traffic only with a passing evaluation report for its exact digest.

A CrossGuard stack policy over what the program declares: the HTTPS listener's forward
weights, the target groups, the TargetGroupBindings that register each colour's pods in
its group, and the colours' Deployments. The candidate colour's Deployment is the one the
program marks with the rollout stage (annotation ``weightshift.io/stage``); the bundle its
pods run is their ``weightshift.io/bundle`` annotation. The program records the candidate's
evaluation verdict on its target group (``weightshift:evaluation-*`` tags, from
``weightshift.gates.check.stack_verdict``): any weight above 0 to that group needs the
decision ``pass`` for exactly the bundle the pods run (id, and a full digest that begins
with the id's hash). Stage 0 (weight 0) needs no report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, StackValidationArgs

from weightshift.gates.verdict import HELD_PREVIOUS_STABLE

LISTENER = "aws:lb/listener:Listener"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
TARGET_GROUP_BINDING = "kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STAGE_ANNOTATION = "weightshift.io/stage"
BUNDLE_ANNOTATION = "weightshift.io/bundle"
TAG = "weightshift:evaluation-"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_BUNDLE = re.compile(r"^[a-z0-9-]+/v\d+\.\d+\.\d+-([0-9a-f]{12})$")


def _of_type(args: StackValidationArgs, resource_type: str) -> list[PolicyResource]:
    return [r for r in args.resources if r.resource_type == resource_type]


def forwarded(listener: PolicyResource) -> list[tuple[Any, Any]]:
    """(target group ARN, weight) of every forward in the listener's default actions."""
    found = []
    for action in listener.props.get("defaultActions") or []:
        forward = action.get("forward") if isinstance(action, Mapping) else None
        for group in (forward or {}).get("targetGroups") or []:
            found.append((group.get("arn"), group.get("weight", 1)))
    return found


def _binds(binding: PolicyResource, group: PolicyResource) -> bool:
    """``binding`` registers its pods in ``group``: by ARN, or (while the ARN is not known
    yet) because its spec came from the group."""
    arn = (binding.props.get("spec") or {}).get("targetGroupARN")
    if arn is not None and arn == group.props.get("arn"):
        return True
    return any(dep.urn == group.urn for dep in binding.property_dependencies.get("spec", []))


def _namespace(resource: PolicyResource) -> Any:
    return (resource.props.get("metadata") or {}).get("namespace")


def _annotations(deployment: PolicyResource) -> Mapping[str, Any]:
    return (deployment.props.get("metadata") or {}).get("annotations") or {}


def _pod_bundle(deployment: PolicyResource) -> Any:
    template = ((deployment.props.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (template.get("annotations") or {}).get(BUNDLE_ANNOTATION) or _annotations(
        deployment
    ).get(BUNDLE_ANNOTATION)


def _served_by(
    group: PolicyResource, bindings: list[PolicyResource], deployments: list[PolicyResource]
) -> list[PolicyResource]:
    """The Deployments whose pods the group's bindings register."""
    spaces = {_namespace(b) for b in bindings if _binds(b, group)}
    return [d for d in deployments if _namespace(d) in spaces]


def _verdict_problem(group: PolicyResource, bundle: Any) -> str | None:
    """Why the tags on ``group`` do not let pods running ``bundle`` receive traffic."""
    tags = group.props.get("tags") or {}
    decision = tags.get(f"{TAG}decision")
    if decision is None:
        return "it carries no evaluation verdict (weightshift:evaluation-* tags)"
    tagged, digest, report = (tags.get(f"{TAG}{k}") for k in ("bundle", "digest", "report"))
    found = _BUNDLE.match(str(bundle or ""))
    if found is None:
        return f"its pods' bundle annotation {bundle!r} is not a bundle id"
    if tagged != bundle or not _DIGEST.match(str(digest or "")):
        return f"its verdict is for {tagged} (digest {digest}), but its pods run {bundle}"
    if not str(digest).startswith(found.group(1)):
        return f"its verdict's digest {str(digest)[:12]}... is not the digest of {bundle}"
    if decision != "pass":
        return f"its evaluation is {decision} (report {report})"
    if report == HELD_PREVIOUS_STABLE:
        return None  # traffic back to the version `rollout finish` holds warm: a rollback
    if not _DIGEST.match(str(report or "")):
        return f"its verdict names no report ({report!r})"
    return None


def candidate_evaluated(args: StackValidationArgs, report: ReportViolation) -> None:
    """A candidate gets traffic only with a passing evaluation report for its exact digest:
    weight above 0 to the candidate colour's target group needs the verdict `pass`, recorded
    on the group, for exactly the bundle its pods run (stage 0 needs none)."""
    groups = _of_type(args, TARGET_GROUP)
    bindings = _of_type(args, TARGET_GROUP_BINDING)
    deployments = _of_type(args, DEPLOYMENT)
    marked = [d for d in deployments if STAGE_ANNOTATION in _annotations(d)]
    for listener in _of_type(args, LISTENER):
        weighted = []
        for arn, weight in forwarded(listener):
            if not isinstance(weight, int | float) or weight <= 0:
                continue
            group = next((g for g in groups if g.props.get("arn") == arn), None)
            if group is not None:
                weighted.append((group, weight))
        serving = [d for group, _ in weighted for d in _served_by(group, bindings, deployments)]
        if not marked and len({_pod_bundle(d) for d in serving}) > 1:
            report(
                f"listener {listener.name} splits traffic between several bundles, but no "
                f"Deployment carries the {STAGE_ANNOTATION} annotation that marks the "
                "candidate: cannot tell which one needs a passing evaluation report.",
                listener.urn,
            )
            continue
        for group, weight in weighted:
            for deployment in _served_by(group, bindings, marked):
                bundle = _pod_bundle(deployment)
                problem = _verdict_problem(group, bundle)
                if problem is not None:
                    report(
                        f"listener {listener.name} sends weight {weight} to the candidate's "
                        f"target group {group.name} ({bundle}), but {problem}. Publish a "
                        "report that passes `weightshift gates check` for this exact digest "
                        "(`weightshift eval publish`), or keep the candidate at stage 0.",
                        group.urn,
                    )
