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

from weightshift.catalog import BundleCatalog
from weightshift.config import NAMESPACE, ConfigError, load
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

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "strategy": self.strategy,
            "candidate": self.candidate,
            "stages": [row.to_json() for row in self.rows],
            "rolloutBudgets": self.rollout_budgets,
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
            for colour, served in inference.items():
                budgets.setdefault(
                    colour,
                    {"seconds": served["rolloutBudgetSeconds"], "text": served["rolloutBudget"]},
                )
            if previous is not None:
                row.changes = diff(previous, graph)
            previous = graph
        rows.append(row)
    return Plan(stack, rollout.strategy.value, rollout.candidate.value, rows, budgets)


def render(plan: Plan) -> str:
    """The plan as a table a reviewer reads top to bottom."""
    mirror = any(row.weights.mirror for row in plan.rows)
    header = [
        "",
        "stage",
        "blue %",
        "green %",
        *(["mirror %"] if mirror else []),
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
