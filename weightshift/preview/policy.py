"""`weightshift policy check`: the project's CrossGuard pack over the offline graph.

The same rules run under `pulumi preview --policy-pack policies` with a cloud
account; here they run over what `weightshift synth` produced, so a pull request
is checked without credentials.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from weightshift.bundles.catalog import BundleCatalog
from weightshift.config import StackConfig, load
from weightshift.preview.synth import (
    Graph,
    Resource,
    apply_overrides,
    offline_catalog,
    stack_config,
)
from weightshift.rollout.record import RollbackRecord
from weightshift.stages import Strategy, schedule


@dataclass(frozen=True)
class Violation:
    policy: str
    level: str
    urn: str
    name: str
    type: str
    message: str

    @property
    def mandatory(self) -> bool:
        return self.level == EnforcementLevel.MANDATORY.value

    def __str__(self) -> str:
        kind = self.type.rsplit(":", 1)[-1]
        return f"[{self.level}] {self.policy}: {kind} {self.name}: {self.message}"


Policy = ResourceValidationPolicy | StackValidationPolicy


class TransitionPolicy(Protocol):
    """A rule over two states of one stack (``policies/rules.py`` ``TRANSITION_POLICIES``)."""

    @property
    def name(self) -> str: ...

    @property
    def enforcement_level(self) -> EnforcementLevel: ...

    def validate(
        self, before: StackValidationArgs, after: StackValidationArgs, report: Callable[..., None]
    ) -> None: ...


def _rules(project: Path) -> Any:
    folder = str(project)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("policies.rules")
    finally:
        sys.path.remove(folder)


def load_policies(project: Path) -> Sequence[Policy]:
    """The pack's rules, imported from ``policies/rules.py`` of ``project``."""
    policies: Sequence[Policy] = _rules(project).POLICIES
    return policies


def load_transition_policies(project: Path) -> Sequence[TransitionPolicy]:
    """The rules over stage changes, from ``policies/rules.py`` of ``project``."""
    found: Sequence[TransitionPolicy] = _rules(project).TRANSITION_POLICIES
    return found


def _options(resource: Resource) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent,
    )


def validation_args(resource: Resource) -> ResourceValidationArgs:
    """What the policy engine hands a resource policy, built from the offline graph."""
    return ResourceValidationArgs(
        resource.type, resource.inputs, resource.urn, resource.name, _options(resource), None
    )


def stack_args(graph: Graph) -> StackValidationArgs:
    """What the engine hands a stack policy: every resource with its properties (inputs and
    what the provider reported), its parent, and what each property's value came from."""
    resources = [r for r in graph.resources if r.custom]
    wrapped = {
        r.urn: PolicyResource(
            r.type, {**r.outputs, **r.inputs}, r.urn, r.name, _options(r), None, None, [], {}
        )
        for r in resources
    }
    for resource in resources:
        policy_resource = wrapped[resource.urn]
        policy_resource.parent = wrapped.get(resource.parent or "")
        policy_resource.dependencies.extend(
            wrapped[urn] for urn in resource.dependencies if urn in wrapped
        )
        for key, urns in resource.property_dependencies.items():
            policy_resource.property_dependencies[key] = [wrapped[u] for u in urns if u in wrapped]
    return StackValidationArgs(list(wrapped.values()))


def check(graph: Graph, policies: Sequence[Policy]) -> list[Violation]:
    """Every violation of every policy: resource policies over every custom resource of the
    graph, stack policies over the whole graph."""
    violations: list[Violation] = []
    by_urn = graph.by_urn()
    stack_policies = [p for p in policies if isinstance(p, StackValidationPolicy)]
    if stack_policies:
        whole = stack_args(graph)  # built once: every stack policy reads the same graph
        for stack_policy in stack_policies:
            stack_policy.validate(whole, _reporter(violations, stack_policy, None, by_urn))
    resource_policies = [p for p in policies if isinstance(p, ResourceValidationPolicy)]
    for resource in graph.resources:
        if not resource.custom:
            continue
        args = validation_args(resource)
        for policy in resource_policies:
            policy.validate(args, _reporter(violations, policy, resource, by_urn))
    return violations


def _reporter(
    into: list[Violation],
    policy: Policy,
    resource: Resource | None,
    by_urn: dict[str, Resource],
) -> Callable[..., None]:
    level = (policy.enforcement_level or EnforcementLevel.ADVISORY).value

    def report(message: str, urn: str | None = None) -> None:
        subject = resource or by_urn.get(urn or "")
        into.append(
            Violation(
                policy.name,
                level,
                subject.urn if subject else "",
                subject.name if subject else "stack",
                subject.type if subject else "stack",
                message,
            )
        )

    return report


@dataclass
class StageCheck:
    """The pack over one stage of one strategy, or why the config cannot reach it."""

    strategy: str
    stage: int
    violations: list[Violation]
    refused: str | None = None


def check_every_stage(
    project: Path,
    stack: str,
    policies: Sequence[Policy],
    overrides: Sequence[str] = (),
    *,
    catalog: BundleCatalog | None = None,
    record: RollbackRecord | None = None,
    transitions: Sequence[TransitionPolicy] | None = None,
) -> list[StageCheck]:
    """The pack over every stage of every strategy of ``stack``: what a stage *would* deploy
    is checked before anyone promotes to it, whichever strategy the stack uses now. The
    transition rules run from each stage to the next and, for a strategy that can finish,
    from its last stage to the state ``rollout finish`` leaves (their violations are listed
    at the stage they go to; a finish's at the last stage)."""
    from weightshift.preview.plan import synthesize_many  # noqa: PLC0415 (plan imports this module)

    values = apply_overrides(stack_config(project, stack), overrides)
    config = load(values, source=f"config of stack {stack}")  # the configured stage must be valid
    cases = [(strategy, stage.index) for strategy in Strategy for stage in schedule(strategy)]
    finishing = [s for s in Strategy if s is not Strategy.SHADOW]
    outcomes = synthesize_many(
        project,
        stack,
        [
            apply_overrides(values, [f"rollout.strategy={strategy.value}", f"rollout.stage={i}"])
            for strategy, i in cases
        ]
        + [_finished(values, config, strategy) for strategy in finishing],
        catalog or offline_catalog(project),
        record,
    )
    staged, finished = outcomes[: len(cases)], outcomes[len(cases) :]
    results = []
    for (strategy, index), outcome in zip(cases, staged, strict=True):
        if isinstance(outcome, str):
            results.append(StageCheck(strategy.value, index, [], refused=outcome))
        else:
            results.append(StageCheck(strategy.value, index, check(outcome, policies)))
    rules = transitions if transitions is not None else load_transition_policies(project)
    graphs = dict(zip(cases, staged, strict=True))
    for position, ((strategy, index), result) in enumerate(zip(cases, results, strict=True)):
        steps = [
            (
                graphs.get((strategy, index - 1)),
                graphs[(strategy, index)],
                f"stage {index - 1} to {index}",
            )
        ]
        last = position + 1 == len(cases) or cases[position + 1][0] is not strategy
        if last and strategy in finishing:
            steps.append(
                (graphs[(strategy, index)], finished[finishing.index(strategy)], "rollout finish")
            )
        for before, after, step in steps:
            if isinstance(before, Graph) and isinstance(after, Graph):
                result.violations += check_transition(before, after, rules, step)
    return results


def _finished(values: Mapping[str, Any], config: StackConfig, strategy: Strategy) -> dict[str, Any]:
    """The config `rollout finish` leaves after ``strategy``'s last stage: the stable colour
    is the next candidate, at stage 0, the old stable held warm (``rollout/commands.py``)."""
    rollout = config.rollout
    old = config.colour(rollout.stable).version
    until = datetime.now(UTC) + timedelta(hours=rollout.capacity.hold_hours)
    hold = {"version": old, "until": until.isoformat(timespec="seconds")}
    return apply_overrides(
        values,
        [
            f"rollout.strategy={strategy.value}",
            f"rollout.candidate={rollout.stable.value}",
            "rollout.stage=0",
            *([f"rollout.hold={json.dumps(hold)}"] if old else []),
        ],
    )


def check_transition(
    before: Graph, after: Graph, rules: Sequence[TransitionPolicy], step: str
) -> list[Violation]:
    """Every violation of the transition rules going from ``before`` to ``after``."""
    found: list[Violation] = []
    if not rules:
        return found
    old, new, by_urn = stack_args(before), stack_args(after), before.by_urn()
    for rule in rules:
        rule.validate(old, new, _transition_reporter(found, rule, by_urn, step))
    return found


def _transition_reporter(
    into: list[Violation], rule: TransitionPolicy, by_urn: dict[str, Resource], step: str
) -> Callable[..., None]:
    def report(message: str, urn: str | None = None) -> None:
        subject = by_urn.get(urn or "")
        into.append(
            Violation(
                rule.name,
                rule.enforcement_level.value,
                subject.urn if subject else "",
                subject.name if subject else "stack",
                subject.type if subject else "stack",
                f"{message} (at {step})",
            )
        )

    return report
