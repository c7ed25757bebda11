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
from dataclasses import dataclass, field
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
from weightshift.config import ConfigError, StackConfig, load
from weightshift.preview.synth import (
    Graph,
    Resource,
    SynthError,
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


PACK_CONFIG = Path("policies") / "config.json"
"""The pack's configuration in the project: each rule's enforcement level (and a rule's
settings), in the format ``pulumi preview --policy-pack-config`` reads; the pack itself
(``policies/__main__.py``) starts from it, so both runs enforce the same levels."""
MAX_CONFIG_BYTES = 1 << 20
LEVELS = {level.value: level for level in EnforcementLevel}
ALL = "all"


class PolicyConfigError(ValueError):
    """A pack config or base config that cannot be used: says which field and the fix."""


@dataclass(frozen=True)
class PackConfig:
    """Enforcement levels and settings by rule, as CrossGuard applies them: a rule's own
    entry overrides ``all``, which overrides the level the rule is written with."""

    levels: Mapping[str, EnforcementLevel] = field(default_factory=dict)
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def level(self, name: str, written: EnforcementLevel | None) -> EnforcementLevel:
        level = self.levels.get(name) or self.levels.get(ALL) or written
        if level is EnforcementLevel.REMEDIATE:
            return EnforcementLevel.MANDATORY  # as the SDK reports a remediate violation
        return level or EnforcementLevel.ADVISORY

    def of(self, name: str) -> dict[str, Any]:
        return dict(self.settings.get(name) or {})

    def with_settings(self, name: str, values: Mapping[str, Any]) -> PackConfig:
        settings = {**self.settings, name: {**self.of(name), **values}}
        return PackConfig(self.levels, settings)

    def to_json(self, names: set[str]) -> dict[str, Any]:
        """The config of the rules in ``names`` (and ``all``) as ``pulumi preview
        --policy-pack-config`` reads it."""
        data: dict[str, Any] = {}
        for name in sorted((set(self.levels) | set(self.settings)) & (names | {ALL})):
            level = self.levels.get(name)
            settings = self.of(name)
            if settings:
                data[name] = {**({"enforcementLevel": level.value} if level else {}), **settings}
            elif level is not None:
                data[name] = level.value
        return data


def parse_pack_config(
    data: Any, names: Mapping[str, Policy | TransitionPolicy], source: str
) -> PackConfig:
    """``data`` (the JSON of a pack config) checked against the rules in ``names``: every key
    a rule or ``all``, every level one CrossGuard knows, every setting one the rule's schema
    declares."""
    if not isinstance(data, dict):
        raise PolicyConfigError(
            f"{source}: the pack config is a {type(data).__name__}; it must be a JSON object "
            'of rule name to level or settings, e.g. {"alb-deletion-protection": "advisory"}.'
        )
    levels: dict[str, EnforcementLevel] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name, value in data.items():
        if name != ALL and name not in names:
            known = ", ".join(sorted(names))
            raise PolicyConfigError(
                f"{source}: {name!r} is not a rule of the pack. Rules: {known} (or {ALL!r})."
            )
        entry = {"enforcementLevel": value} if isinstance(value, str) else value
        if not isinstance(entry, dict):
            raise PolicyConfigError(
                f"{source}: {name} must be a level or an object with enforcementLevel."
            )
        level = entry.get("enforcementLevel")
        if level is not None:
            if level not in LEVELS:
                raise PolicyConfigError(
                    f"{source}: {name}.enforcementLevel {level!r} is not a level: use one of "
                    f"{', '.join(LEVELS)}."
                )
            levels[name] = LEVELS[level]
        values = {k: v for k, v in entry.items() if k != "enforcementLevel"}
        if values:
            schema = getattr(names.get(name), "config_schema", None)
            declared = schema.properties if schema is not None else {}
            unknown = sorted(set(values) - set(declared))
            if unknown:
                raise PolicyConfigError(
                    f"{source}: {name} has no setting {', '.join(unknown)}"
                    + (f" (it takes {', '.join(declared)})." if declared else " (it takes none).")
                )
            settings[name] = values
    return PackConfig(levels, settings)


def load_pack_config(path: Path, names: Mapping[str, Policy | TransitionPolicy]) -> PackConfig:
    """The pack config at ``path`` (JSON), checked; a missing default file is no config."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise PolicyConfigError(
            f"{path}: no such pack config. Pass a JSON file like policies/config.json."
        ) from None
    except OSError as error:
        raise PolicyConfigError(f"{path}: cannot read the pack config: {error}.") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise PolicyConfigError(f"{path}: over {MAX_CONFIG_BYTES} bytes; a pack config is small.")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PolicyConfigError(f"{path}: not valid JSON ({error}). Fix the file.") from None
    return parse_pack_config(data, names, str(path))


def rule_names(
    policies: Sequence[Policy], transitions: Sequence[TransitionPolicy] = ()
) -> dict[str, Policy | TransitionPolicy]:
    return {**{t.name: t for t in transitions}, **{p.name: p for p in policies}}


BASE_RULE = "stage-moves-one-step"
"""The rule whose settings carry the base stage (``policies/rules.py``)."""


def base_settings(path: Path) -> dict[str, Any]:
    """The rollout the change starts from, read from the base branch's stack file
    (``Pulumi.<stack>.yaml``), as the settings of :data:`BASE_RULE`."""
    stem = path.name
    if not (stem.startswith("Pulumi.") and stem.endswith(".yaml")) or stem == "Pulumi.yaml":
        raise PolicyConfigError(
            f"--base-config {path}: give the base branch's stack file, Pulumi.<stack>.yaml."
        )
    stack = stem[len("Pulumi.") : -len(".yaml")]
    try:
        values = stack_config(path.parent, stack)
        config = load(values, source=f"base config {path}")
    except (SynthError, ConfigError) as error:
        raise PolicyConfigError(f"--base-config {path}: {error}") from None
    rollout = config.rollout
    version = config.colour(rollout.candidate).version
    return {
        "baseStrategy": rollout.strategy.value,
        "baseStage": rollout.stage,
        "baseCandidate": rollout.candidate.value,
        **({"baseVersion": str(version)} if version is not None else {}),
    }


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


def validation_args(
    resource: Resource, config: Mapping[str, Any] | None = None
) -> ResourceValidationArgs:
    """What the policy engine hands a resource policy, built from the offline graph."""
    return ResourceValidationArgs(
        resource.type,
        resource.inputs,
        resource.urn,
        resource.name,
        _options(resource),
        None,
        dict(config or {}),
    )


def stack_args(graph: Graph, config: Mapping[str, Any] | None = None) -> StackValidationArgs:
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
    return StackValidationArgs(list(wrapped.values()), dict(config or {}))


def check(
    graph: Graph, policies: Sequence[Policy], config: PackConfig | None = None
) -> list[Violation]:
    """Every violation of every policy: resource policies over every custom resource of the
    graph, stack policies over the whole graph, at the levels (and with the settings) of
    ``config``; a disabled rule does not run."""
    config = config or PackConfig()
    violations: list[Violation] = []
    by_urn = graph.by_urn()
    enabled = [
        (policy, config.level(policy.name, policy.enforcement_level))
        for policy in policies
        if config.level(policy.name, policy.enforcement_level) is not EnforcementLevel.DISABLED
    ]
    stack_policies = [(p, lv) for p, lv in enabled if isinstance(p, StackValidationPolicy)]
    if stack_policies:
        whole = stack_args(graph)  # built once: every stack policy reads the same graph
        resources = whole.resources
        for stack_policy, level in stack_policies:
            settings = config.of(stack_policy.name)
            args = StackValidationArgs(resources, settings) if settings else whole
            stack_policy.validate(args, _reporter(violations, stack_policy, level, None, by_urn))
    resource_policies = [(p, lv) for p, lv in enabled if isinstance(p, ResourceValidationPolicy)]
    for resource in graph.resources:
        if not resource.custom:
            continue
        resource_args = validation_args(resource)
        for policy, level in resource_policies:
            policy.validate(resource_args, _reporter(violations, policy, level, resource, by_urn))
    return violations


def _reporter(
    into: list[Violation],
    policy: Policy,
    level: EnforcementLevel,
    resource: Resource | None,
    by_urn: dict[str, Resource],
) -> Callable[..., None]:
    def report(message: str, urn: str | None = None) -> None:
        subject = resource or by_urn.get(urn or "")
        into.append(
            Violation(
                policy.name,
                level.value,
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
    config: PackConfig | None = None,
) -> list[StageCheck]:
    """The pack over every stage of every strategy of ``stack``: what a stage *would* deploy
    is checked before anyone promotes to it, whichever strategy the stack uses now. The
    transition rules run from each stage to the next and, for a strategy that can finish,
    from its last stage to the state ``rollout finish`` leaves (their violations are listed
    at the stage they go to; a finish's at the last stage)."""
    from weightshift.preview.plan import synthesize_many  # noqa: PLC0415 (plan imports this module)

    values = apply_overrides(stack_config(project, stack), overrides)
    stack_cfg = load(values, source=f"config of stack {stack}")  # the stage must be valid
    pack = config or PackConfig()
    later = PackConfig(pack.levels, {k: v for k, v in pack.settings.items() if k != BASE_RULE})
    configured = (stack_cfg.rollout.strategy, stack_cfg.rollout.stage)
    cases = [(strategy, stage.index) for strategy in Strategy for stage in schedule(strategy)]
    finishing = [s for s in Strategy if s is not Strategy.SHADOW]
    outcomes = synthesize_many(
        project,
        stack,
        [
            apply_overrides(values, [f"rollout.strategy={strategy.value}", f"rollout.stage={i}"])
            for strategy, i in cases
        ]
        + [_finished(values, stack_cfg, strategy) for strategy in finishing],
        catalog or offline_catalog(project),
        record,
    )
    staged, finished = outcomes[: len(cases)], outcomes[len(cases) :]
    results = []
    for (strategy, index), outcome in zip(cases, staged, strict=True):
        if isinstance(outcome, str):
            results.append(StageCheck(strategy.value, index, [], refused=outcome))
        else:
            used = pack if (strategy, index) == configured else later
            results.append(StageCheck(strategy.value, index, check(outcome, policies, used)))
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
                result.violations += check_transition(before, after, rules, step, pack)
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
    before: Graph,
    after: Graph,
    rules: Sequence[TransitionPolicy],
    step: str,
    config: PackConfig | None = None,
) -> list[Violation]:
    """Every violation of the transition rules going from ``before`` to ``after``."""
    found: list[Violation] = []
    config = config or PackConfig()
    levels = {rule.name: config.level(rule.name, rule.enforcement_level) for rule in rules}
    active = [rule for rule in rules if levels[rule.name] is not EnforcementLevel.DISABLED]
    if not active:
        return found
    old, new, by_urn = stack_args(before), stack_args(after), before.by_urn()
    for rule in active:
        report = _transition_reporter(found, rule, levels[rule.name], by_urn, step)
        rule.validate(old, new, report)
    return found


def _transition_reporter(
    into: list[Violation],
    rule: TransitionPolicy,
    level: EnforcementLevel,
    by_urn: dict[str, Resource],
    step: str,
) -> Callable[..., None]:
    def report(message: str, urn: str | None = None) -> None:
        subject = by_urn.get(urn or "")
        into.append(
            Violation(
                rule.name,
                level.value,
                subject.urn if subject else "",
                subject.name if subject else "stack",
                subject.type if subject else "stack",
                f"{message} (at {step})",
            )
        )

    return report
