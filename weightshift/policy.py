"""`weightshift policy check`: the project's CrossGuard pack over the offline graph.

The same rules run under `pulumi preview --policy-pack policies` with a cloud
account; here they run over what `weightshift synth` produced, so a pull request
is checked without credentials.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

from weightshift.synth import Graph, Resource


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


def load_policies(project: Path) -> Sequence[ResourceValidationPolicy]:
    """The pack's rules, imported from ``policies/rules.py`` of ``project``."""
    folder = str(project)
    sys.path.insert(0, folder)
    try:
        module = importlib.import_module("policies.rules")
    finally:
        sys.path.remove(folder)
    policies: Sequence[ResourceValidationPolicy] = module.POLICIES
    return policies


def validation_args(resource: Resource) -> ResourceValidationArgs:
    """What the policy engine hands a resource policy, built from the offline graph."""
    options = PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent,
    )
    return ResourceValidationArgs(
        resource.type, resource.inputs, resource.urn, resource.name, options, None
    )


def check(graph: Graph, policies: Sequence[ResourceValidationPolicy]) -> list[Violation]:
    """Every violation of every policy by every custom resource of the graph."""
    violations: list[Violation] = []
    for resource in graph.resources:
        if not resource.custom:
            continue
        args = validation_args(resource)
        for policy in policies:
            policy.validate(args, _reporter(violations, policy, resource))
    return violations


def _reporter(
    into: list[Violation], policy: ResourceValidationPolicy, resource: Resource
) -> Callable[..., None]:
    level = (policy.enforcement_level or EnforcementLevel.ADVISORY).value

    def report(message: str, _urn: str | None = None) -> None:
        into.append(
            Violation(policy.name, level, resource.urn, resource.name, resource.type, message)
        )

    return report
