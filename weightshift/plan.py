"""Every stage of a stack's strategy, synthesized, and what each changes from the one before."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightshift.capacity import GpuHours, extra_gpu_hours, held, hold_size
from weightshift.catalog import BundleCatalog
from weightshift.config import NAMESPACE, ConfigError, StackConfig, load
from weightshift.rollback_record import RollbackRecord
from weightshift.stages import Weights, schedule, weights_for
from weightshift.synth import Graph, apply_overrides, offline_catalog, stack_config, synthesize


@dataclass(frozen=True)
class Change:
    """One resource that differs between two graphs."""

    urn: str
    type: str
    name: str
    action: str
    """``update``, ``create`` or ``delete``."""
    keys: tuple[str, ...] = ()
    """Top-level inputs that differ (updates only)."""

    def __str__(self) -> str:
        kind = self.type.rsplit(":", 1)[-1]
        if self.action == "update":
            return f"~ {kind} {self.name} ({', '.join(self.keys)})"
        return f"{'+' if self.action == 'create' else '-'} {kind} {self.name}"


def diff(before: Graph, after: Graph) -> list[Change]:
    """Resources created, deleted or updated going from ``before`` to ``after``."""
    old, new = before.by_urn(), after.by_urn()
    changes: list[Change] = []
    for urn in sorted(old.keys() | new.keys()):
        a, b = old.get(urn), new.get(urn)
        if a is None and b is not None:
            changes.append(Change(urn, b.type, b.name, "create"))
        elif b is None and a is not None:
            changes.append(Change(urn, a.type, a.name, "delete"))
        elif a is not None and b is not None and a.inputs != b.inputs:
            keys = tuple(
                sorted(
                    k
                    for k in a.inputs.keys() | b.inputs.keys()
                    if a.inputs.get(k) != b.inputs.get(k)
                )
            )
            changes.append(Change(urn, b.type, b.name, "update", keys))
    return changes


@dataclass
class StageRow:
    index: int
    weights: Weights
    duration: str
    gate: str
    current: bool
    changes: list[Change] = field(default_factory=list)
    blocked: str | None = None
    """Why the stage cannot be deployed with this config, if it cannot."""
    resources: int = 0
    replicas: dict[str, int] = field(default_factory=dict)
    """Colour -> its Deployment's replicas at this stage (0: no pods, or not deployed)."""
    gpus: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.index,
            "current": self.current,
            "percent": {
                "blue": round(self.weights.percent("blue"), 2),
                "green": round(self.weights.percent("green"), 2),
                "mirror": round(self.weights.percent("mirror"), 2),
            },
            "weights": {
                "blue": self.weights.blue,
                "green": self.weights.green,
                "mirror": self.weights.mirror,
            },
            "duration": self.duration,
            "gate": self.gate,
            "resources": self.resources,
            "replicas": self.replicas,
            "gpus": self.gpus,
            "blocked": self.blocked,
            "changes": [
                {
                    "urn": c.urn,
                    "type": c.type,
                    "name": c.name,
                    "action": c.action,
                    "keys": list(c.keys),
                }
                for c in self.changes
            ],
        }


@dataclass
class Plan:
    stack: str
    strategy: str
    candidate: str
    rows: list[StageRow]
    rollout_budgets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Colour -> how long ``pulumi up`` may wait for its pods to roll (seconds, text)."""
    extra_gpu_hours: GpuHours | None = None
    hold: dict[str, Any] = field(default_factory=dict)
    """After ``rollout finish``: the old stable colour's hold (colour, replicas, GPUs, hours,
    and ``until`` where a finish already set it)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "strategy": self.strategy,
            "candidate": self.candidate,
            "stages": [row.to_json() for row in self.rows],
            "rolloutBudgets": self.rollout_budgets,
            "extraGpuHours": self.extra_gpu_hours.to_json() if self.extra_gpu_hours else None,
            "hold": self.hold,
        }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours = seconds / 3600
    return f"{hours:g} h"


def _with_stage(values: Mapping[str, Any], stage: int) -> dict[str, Any]:
    return apply_overrides(values, [f"rollout.stage={stage}"])


def _synthesize_one(
    job: tuple[Path, str, dict[str, Any], BundleCatalog, RollbackRecord | None],
) -> Graph | str:
    """One stage's graph, or why the config cannot reach it."""
    project, stack, values, catalog, record = job
    try:
        return synthesize(project, stack, values, catalog, record)
    except ConfigError as error:
        return "; ".join(str(p) for p in error.problems)


def _os_threads() -> int:
    """Threads of this process as the kernel sees them (Linux), Python's or not."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count() + 1  # cannot tell: never fork


def synthesize_many(
    project: Path,
    stack: str,
    stage_values: list[dict[str, Any]],
    catalog: BundleCatalog,
    record: RollbackRecord | None,
) -> list[Graph | str]:
    """Every stage synthesized; on Linux in forked workers, one per core (each synthesis is
    independent and CPU-bound), else here. ``WEIGHTSHIFT_SERIAL=1`` forces this process."""
    jobs = [(project, stack, values, catalog, record) for values in stage_values]
    workers = min(len(jobs), os.cpu_count() or 1)
    # Forking is safe only from a single-threaded process: a lock another thread holds at
    # the fork stays locked forever in the child. Count the OS's threads, not Python's: a
    # synthesis leaves threads of gRPC's C core behind that threading does not list, and a
    # child forked beside them hung (seen in a test worker that had synthesized before).
    if (
        workers < 2
        or sys.platform != "linux"
        or _os_threads() > 1
        or os.environ.get("WEIGHTSHIFT_SERIAL")
    ):
        return [_synthesize_one(job) for job in jobs]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return list(pool.map(_synthesize_one, jobs))


def build_plan(
    project: Path,
    stack: str,
    overrides: Sequence[str] = (),
    catalog: BundleCatalog | None = None,
    record: RollbackRecord | None = None,
) -> Plan:
    """Synthesize every stage of the stack's strategy and diff each against the previous."""
    catalog = catalog or offline_catalog(project)
    values = apply_overrides(stack_config(project, stack), overrides)
    config = load(values, source=f"config of stack {stack}")
    rollout = config.rollout
    stages = schedule(rollout.strategy, rollout.mirror_percent)
    outcomes = synthesize_many(
        project,
        stack,
        [_with_stage(values, stage.index) for stage in stages],
        catalog,
        record,
    )
    rows: list[StageRow] = []
    budgets: dict[str, dict[str, Any]] = {}
    previous: Graph | None = None
    for stage, outcome in zip(stages, outcomes, strict=True):
        row = StageRow(
            index=stage.index,
            weights=weights_for(
                rollout.strategy, stage.index, rollout.candidate, rollout.mirror_percent
            ),
            duration=_duration(stage.duration.total_seconds() if stage.duration else None),
            gate=stage.gate,
            current=stage.index == rollout.stage,
        )
        if isinstance(outcome, str):
            row.blocked = outcome
            previous = None
        else:
            graph = outcome
            row.resources = len(graph.resources)
            inference: dict[str, dict[str, Any]] = graph.outputs.get("inference") or {}
            row.replicas = {
                colour: int((inference.get(colour) or {}).get("replicas", 0))
                for colour in ("blue", "green")
            }
            row.gpus = {
                colour: count * config.serving.gpus_per_replica
                for colour, count in row.replicas.items()
            }
            for colour, served in inference.items():
                budgets.setdefault(
                    colour,
                    {"seconds": served["rolloutBudgetSeconds"], "text": served["rolloutBudget"]},
                )
            if previous is not None:
                row.changes = diff(previous, graph)
            previous = graph
        rows.append(row)
    candidate = rollout.candidate.value
    gpu_hours = extra_gpu_hours(
        config, {row.index: row.replicas.get(candidate, 0) for row in rows if not row.blocked}
    )
    return Plan(stack, rollout.strategy.value, candidate, rows, budgets, gpu_hours, _hold(config))


def _hold(config: StackConfig) -> dict[str, Any]:
    """What ``rollout finish`` holds: the stable colour now, once the candidate is stable;
    or, after a finish (``rollout.hold``), the held candidate colour until its time."""
    rollout = config.rollout
    after_finish = held(config)
    colour = rollout.candidate if after_finish else rollout.stable
    count = hold_size(config, colour)
    return {
        "colour": colour.value,
        "version": config.colour(colour).version,
        "replicas": count,
        "gpus": count * config.serving.gpus_per_replica,
        "hours": rollout.capacity.hold_hours,
        "until": rollout.hold.until.isoformat() if after_finish and rollout.hold else None,
    }


def render(plan: Plan) -> str:
    """The plan as a table a reviewer reads top to bottom."""
    mirror = any(row.weights.mirror for row in plan.rows)
    header = [
        "",
        "stage",
        "blue %",
        "green %",
        *(["mirror %"] if mirror else []),
        "replicas b/g",
        "GPUs b/g",
        "duration",
        "gate",
        "changes",
    ]
    lines: list[list[str]] = []
    for row in plan.rows:
        if row.blocked:
            changes = f"BLOCKED: {row.blocked}"
        elif row.index == plan.rows[0].index:
            changes = f"baseline ({row.resources} resources)"
        elif not row.changes:
            changes = "nothing"
        else:
            changes = "; ".join(str(change) for change in row.changes)
        lines.append(
            [
                ">" if row.current else "",
                str(row.index),
                f"{row.weights.percent('blue'):g}",
                f"{row.weights.percent('green'):g}",
                *([f"{row.weights.percent('mirror'):g}"] if mirror else []),
                _pair(row.replicas, row.blocked),
                _pair(row.gpus, row.blocked),
                row.duration,
                row.gate,
                changes,
            ]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header) - 1)]

    def fmt(cells: list[str]) -> str:
        return (
            "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
            + "  "
            + cells[-1]
        )

    title = (
        f"{NAMESPACE} plan: stack {plan.stack}, strategy {plan.strategy}, "
        f"candidate {plan.candidate} ('>' marks the configured stage)"
    )
    notes = (
        [
            "",
            "mirror %: answered by the stable colour through the mirror proxy and copied to the "
            "candidate, whose answers are compared, never served",
        ]
        if mirror
        else []
    )
    notes += _capacity_notes(plan)
    if plan.rollout_budgets:
        notes += [
            "",
            "A new bundle (or serving change) rolls a colour's pods; pulumi up waits for them:",
            *(
                f"  {colour}: {budget['text']}"
                for colour, budget in sorted(plan.rollout_budgets.items())
            ),
        ]
    return "\n".join([title, "", fmt(header), *(fmt(cells) for cells in lines), *notes])


def _pair(values: dict[str, int], blocked: str | None) -> str:
    return "-" if blocked else f"{values.get('blue', 0)}/{values.get('green', 0)}"


def _capacity_notes(plan: Plan) -> list[str]:
    """The hold after finish, and the GPU-hours beyond the stable colour's own."""
    lines: list[str] = []
    hold = plan.hold
    if hold:
        until = f"until {hold['until']}" if hold.get("until") else f"for {hold['hours']:g} h"
        lines += [
            "",
            f"After rollout finish: {hold['colour']} ({hold['version']}) is held warm at "
            f"{hold['replicas']} replicas ({hold['gpus']} GPUs) {until}, then the next pulumi "
            "up scales it to 0 and the autoscaler releases its nodes.",
        ]
    hours = plan.extra_gpu_hours
    if hours is not None and hours.static_pair:
        lines.append(
            f"GPU-hours beyond the stable colour's own (bake times and hold, {hours.hours:g} h): "
            f"{hours.rollout:,.0f} with capacity following the rollout, "
            f"{hours.static_pair:,.0f} for a static pair ({100 * (hours.ratio or 0):.0f} %)."
        )
    return lines
