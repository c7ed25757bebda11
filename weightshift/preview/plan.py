"""Every stage of a stack's strategy, synthesized, and what each changes from the one before."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightshift import jsondiff
from weightshift.bundles.catalog import BundleCatalog
from weightshift.config import NAMESPACE, ConfigError, StackConfig, load
from weightshift.console import paragraph, table_text, width
from weightshift.preview.synth import (
    Graph,
    StageBlocked,
    apply_overrides,
    offline_catalog,
    stack_config,
    synthesize,
)
from weightshift.rollout.capacity import GpuHours, extra_gpu_hours, finishes, held, hold_size
from weightshift.rollout.record import RollbackRecord
from weightshift.stages import STRATEGY_MOVES, Weights, schedule, weights_for


@dataclass(frozen=True)
class ValueChange:
    """One input value that differs: its dotted path, before and after (absent: None)."""

    path: str
    before: Any
    after: Any

    def __str__(self) -> str:
        return f"{self.path} {_value(self.before)} → {_value(self.after)}"


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
    values: tuple[ValueChange, ...] = ()
    """Every leaf value that differs (updates only)."""
    summary: tuple[str, ...] = ()
    """The values as a reviewer reads them (listener weights by target, one line each)."""

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]

    def __str__(self) -> str:
        if self.action == "update":
            return f"~ {self.kind} {self.name}: {'; '.join(self.summary)}"
        return f"{'+' if self.action == 'create' else '-'} {self.kind} {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "urn": self.urn,
            "type": self.type,
            "name": self.name,
            "action": self.action,
            "keys": list(self.keys),
            "values": [{"path": v.path, "before": v.before, "after": v.after} for v in self.values],
            "summary": list(self.summary),
        }


SUMMARY_LIMIT = 6
"""Value changes shown per resource; the rest are counted (``--json`` has them all)."""
_WEIGHT = re.compile(r"^defaultActions\[0\]\.forward\.targetGroups\[\d+\]\.weight$")


def _value(value: Any) -> str:
    if value is None:
        return "(none)"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _leaves(before: Any, after: Any) -> list[ValueChange]:
    """The leaf values that differ between two input trees, by dotted path: lists of one
    length compared item by item, a key missing on one side None there
    (:data:`weightshift.jsondiff.ALIGNED`)."""
    found = jsondiff.changes(before, after, jsondiff.ALIGNED)
    return [ValueChange(leaf.path, leaf.before, leaf.after) for leaf in found]


def _summary(
    before: dict[str, Any], after: dict[str, Any], values: list[ValueChange], labels: dict[str, str]
) -> tuple[str, ...]:
    lines: list[str] = []
    weights = [v for v in values if _WEIGHT.match(v.path)]
    if weights:
        targets = [
            [(labels.get(group["arn"], "?"), group["weight"]) for group in _groups(inputs)]
            for inputs in (before, after)
        ]
        names = "/".join(name for name, _ in targets[1])
        shown = ["/".join(str(weight) for _, weight in side) for side in targets]
        lines.append(f"weights {names} {shown[0]} → {shown[1]}")
    sticky = [v for v in values if v.path.startswith(_STICKY)]
    if sticky:
        shown = [_stickiness(inputs) for inputs in (before, after)]
        lines.append(f"stickiness {shown[0]} → {shown[1]}")
    rest = [
        ValueChange(_SHORT.get(v.path, v.path), v.before, v.after)
        for v in values
        if not _WEIGHT.match(v.path) and not v.path.startswith(_STICKY)
    ]
    lines += [str(v) for v in rest[:SUMMARY_LIMIT]]
    if len(rest) > SUMMARY_LIMIT:
        lines.append(f"and {len(rest) - SUMMARY_LIMIT} more value(s) (see --json)")
    return tuple(lines)


_STICKY = "defaultActions[0].forward.stickiness."
_SHORT = {
    "metadata.annotations.weightshift.io/stage": "stage",
    "metadata.annotations.pulumi.com/skipAwait": "skipAwait",
    "spec.replicas": "replicas",
}
"""Paths shown by a shorter name in the summary (``--json`` keeps the full path)."""


def _stickiness(inputs: dict[str, Any]) -> str:
    sticky = inputs["defaultActions"][0]["forward"].get("stickiness") or {}
    return f"{sticky.get('duration')} s" if sticky.get("enabled") else "off"


def _groups(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = inputs["defaultActions"][0]["forward"]["targetGroups"]
    return groups


def diff(before: Graph, after: Graph) -> list[Change]:
    """Resources created, deleted or updated going from ``before`` to ``after``."""
    old, new = before.by_urn(), after.by_urn()
    labels = {
        str(arn): target
        for graph in (before, after)
        for target, arn in (graph.outputs.get("targetGroupArns") or {}).items()
    }
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
            values = _leaves(a.inputs, b.inputs)
            summary = _summary(a.inputs, b.inputs, values, labels)
            changes.append(Change(urn, b.type, b.name, "update", keys, tuple(values), summary))
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
            "changes": [c.to_json() for c in self.changes],
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
    hold: dict[str, Any] | None = None
    """After ``rollout finish``: the old stable colour's hold (colour, replicas, GPUs, hours,
    and ``until`` where a finish already set it); None where no finish can follow."""
    cannot_finish: str | None = None
    """Why ``rollout finish`` cannot follow this strategy (shadow); None where it can."""

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "strategy": self.strategy,
            "candidate": self.candidate,
            "stages": [row.to_json() for row in self.rows],
            "rolloutBudgets": self.rollout_budgets,
            "extraGpuHours": self.extra_gpu_hours.to_json() if self.extra_gpu_hours else None,
            "hold": self.hold,
            "cannotFinish": self.cannot_finish,
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
    except StageBlocked as blocked:
        return str(blocked)


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
    return _in_workers(jobs, workers)


def _in_workers(
    jobs: list[tuple[Path, str, dict[str, Any], BundleCatalog, RollbackRecord | None]],
    workers: int,
) -> list[Graph | str]:
    """The jobs in forked workers. Ctrl-C is this process's to handle: the workers ignore
    SIGINT, and on any exception here (KeyboardInterrupt first) they are terminated, not
    waited for, so none is left running and none prints anything."""
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker
    )
    # Ctrl-C raises KeyboardInterrupt here, whatever handler the caller has (the command's
    # ends the process at once, which would leave the workers running); ignored stays ignored.
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # The workers are forked with SIGINT blocked, so a Ctrl-C pressed meanwhile reaches
        # this process once they exist (and ignore it), never a half-started worker.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            outcomes = pool.map(_synthesize_one, jobs)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return list(outcomes)
    except BaseException:
        # Python 3.14 has pool.terminate_workers(); until then, the pool's own processes.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(cancel_futures=True)
        signal.signal(signal.SIGINT, handler)


def _worker() -> None:
    """A worker's start: ignore Ctrl-C (the parent stops the workers), then take SIGINT out
    of the blocked set it was forked with."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


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
    stages = schedule(rollout.strategy, rollout.mirror_percent, rollout.mirror_sample)
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
                rollout.strategy,
                stage.index,
                rollout.candidate,
                rollout.mirror_percent,
                rollout.mirror_sample,
            ),
            duration=_duration(stage.duration.total_seconds() if stage.duration else None),
            gate=stage.gate,
            current=stage.index == rollout.stage,
        )
        if isinstance(outcome, str):
            row.blocked = outcome
            previous = None
        else:
            _measure(row, outcome, config, budgets)
            if previous is not None:
                row.changes = diff(previous, outcome)
            previous = outcome
        rows.append(row)
    candidate = rollout.candidate.value
    gpu_hours = extra_gpu_hours(
        config, {row.index: row.replicas.get(candidate, 0) for row in rows if not row.blocked}
    )
    return Plan(
        stack,
        rollout.strategy.value,
        candidate,
        rows,
        budgets,
        gpu_hours,
        _hold(config),
        _cannot_finish(config),
    )


def _measure(
    row: StageRow, graph: Graph, config: StackConfig, budgets: dict[str, dict[str, Any]]
) -> None:
    """Fill ``row`` from its stage's graph (resources, replicas and GPUs of each colour), and
    ``budgets`` with each colour's rollout budget, from the first stage that runs it."""
    row.resources = len(graph.resources)
    inference: dict[str, dict[str, Any]] = graph.outputs.get("inference") or {}
    row.replicas = {
        colour: int((inference.get(colour) or {}).get("replicas", 0))
        for colour in ("blue", "green")
    }
    row.gpus = {
        colour: count * config.serving.gpus_per_replica for colour, count in row.replicas.items()
    }
    for colour, served in inference.items():
        budgets.setdefault(
            colour,
            {"seconds": served["rolloutBudgetSeconds"], "text": served["rolloutBudget"]},
        )


def _hold(config: StackConfig) -> dict[str, Any] | None:
    """What ``rollout finish`` holds: the stable colour now, once the candidate is stable;
    or, after a finish (``rollout.hold``), the held candidate colour until its time. None
    where neither: no finish can follow the strategy and none left a hold."""
    rollout = config.rollout
    after_finish = held(config)
    if not after_finish and not finishes(rollout.strategy):
        return None
    colour = rollout.candidate if after_finish else rollout.stable
    count = hold_size(config, colour)
    return {
        "colour": colour.value,
        "version": config.colour(colour).version,
        "replicas": count,
        "gpus": count * config.serving.gpus_per_replica,
        "hours": rollout.capacity.hold_hours,
        "until": rollout.hold.until.isoformat() if after_finish and rollout.hold else None,
        "released": bool(after_finish and rollout.hold and rollout.hold.released),
    }


def _cannot_finish(config: StackConfig) -> str | None:
    """Why ``rollout finish`` refuses this strategy, as the plan says it; None if it can."""
    strategy = config.rollout.strategy
    if finishes(strategy):
        return None
    last = schedule(strategy, config.rollout.mirror_percent)[-1]
    return (
        f"{strategy.value} cannot finish: its last stage serves the candidate "
        f"{last.served_percent:g} % of requests (it only mirrors {last.mirror_percent:g} %), "
        "so `weightshift rollout finish` refuses it, and no hold follows. Switch to "
        "blue-green or canary to ship the candidate."
        + "".join(
            f" `weightshift rollout promote` at stage {index} moves to {target.value} stage "
            f"{to} once the shadow gate passes (rollout.shadowGate)."
            for (source, index), (target, to) in STRATEGY_MOVES.items()
            if source is strategy
        )
    )


def _cells(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows; a row's changes one per line."""
    mirror = any(row.weights.mirror for row in plan.rows)
    header = [
        "",
        "stage",
        "% blue/green",
        *(["% mirror"] if mirror else []),
        "pods b/g",
        "GPUs b/g",
        "bake",
        "gate",
        "changes",
    ]
    rows: list[list[str]] = []
    for row in plan.rows:
        if row.blocked:
            changes = f"BLOCKED: {row.blocked}"
        elif row.index == plan.rows[0].index:
            changes = f"baseline ({row.resources} resources)"
        elif not row.changes:
            changes = "nothing"
        else:
            changes = "\n".join(str(change) for change in row.changes)
        rows.append(
            [
                ">" if row.current else "",
                str(row.index),
                f"{row.weights.percent('blue'):g}/{row.weights.percent('green'):g}",
                *([f"{row.weights.percent('mirror'):g}"] if mirror else []),
                _pair(row.replicas, row.blocked),
                _pair(row.gpus, row.blocked),
                row.duration,
                row.gate,
                changes,
            ]
        )
    return header, rows


def _title(plan: Plan) -> str:
    return (
        f"{NAMESPACE} plan: stack {plan.stack}, strategy {plan.strategy}, "
        f"candidate {plan.candidate} ('>' marks the configured stage)"
    )


def _notes(plan: Plan) -> list[str]:
    notes = (
        [
            "",
            "mirror %: answered by the stable colour through the mirror proxy and copied to the "
            "candidate, whose answers are compared, never served",
        ]
        if any(row.weights.mirror for row in plan.rows)
        else []
    )
    notes += _capacity_notes(plan)
    if plan.rollout_budgets:
        notes += [
            "",
            "A new bundle (or serving change) rolls a colour's pods; pulumi up waits for them:",
            *(
                f"{colour}: {budget['text']}"
                for colour, budget in sorted(plan.rollout_budgets.items())
            ),
            ROLLS_PODS,
        ]
    return notes


SERVER_GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_tokens")
"""The bundle's generation parameters the model server receives
(``components/inference_pods.py`` ``server_generation_defaults``: those vLLM honours,
``facts.VLLM_GENERATION_CONFIG_KEYS``)."""

ROLLS_PODS = (
    "Any new bundle version rolls its colour's GPU pods (each pod pulls its bundle by id; the "
    "gateway runs beside vLLM). vLLM receives the weights, the tokenizer and the generation "
    f"defaults {', '.join(SERVER_GENERATION_KEYS)}; the system prompt, few-shot examples, "
    "safety, routing, stop, seed and the presence and frequency penalties are the gateway's "
    "alone (vLLM ignores them in --override-generation-config)."
)
"""What the plan says of bundle changes: nothing of a bundle changes a running pod in place."""


STACKED_BELOW = 120
"""Narrower than this, each stage's changes are listed under the table, not in a column."""


def render(plan: Plan, columns: int | None = None) -> str:
    """The plan as a table a reviewer reads top to bottom, ``columns`` wide (default: the
    terminal's); the gate and changes columns wrap between words. On a narrow terminal the
    changes follow the table, stage by stage, each one a paragraph."""
    columns = columns or width()
    header, rows = _cells(plan)
    stacked = columns < STACKED_BELOW
    changes = [row.pop() for row in rows] if stacked else []
    shown = header[:-1] if stacked else header
    table = table_text(
        shown,
        rows,
        width_=columns,
        no_wrap=[name for name in shown if name not in {"gate", "changes"}],
        max_widths={"gate": 24},
    )
    below: list[str] = []
    if stacked:
        below = ["", "changes:"]
        for row, text in zip(plan.rows, changes, strict=True):
            lead = f"stage {row.index}: "
            for number, line in enumerate(text.splitlines()):
                shown_line = (lead if number == 0 else " " * len(lead)) + line
                below.append(paragraph(shown_line, columns, indent=" " * (len(lead) + 2)))
    notes = [paragraph(note, columns) if note else note for note in _notes(plan)]
    return "\n".join([paragraph(_title(plan), columns), "", table, *below, *notes])


def render_markdown(plan: Plan) -> str:
    """The plan as GitHub-flavoured Markdown, for a pull-request comment."""
    header, rows = _cells(plan)

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", "<br>") or " "

    lines = [
        f"### {_title(plan)}",
        "",
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(cell(c) for c in cells) + " |" for cells in rows),
        "",
        *(note.strip() for note in _notes(plan) if note.strip()),
    ]
    return "\n".join(lines) + "\n"


def _pair(values: dict[str, int], blocked: str | None) -> str:
    return "-" if blocked else f"{values.get('blue', 0)}/{values.get('green', 0)}"


def _capacity_notes(plan: Plan) -> list[str]:
    """The hold after finish (or why no finish can follow), and the GPU-hours beyond the
    stable colour's own."""
    lines: list[str] = ["", plan.cannot_finish] if plan.cannot_finish else []
    hold = plan.hold
    if hold and hold.get("released"):
        lines += [
            "",
            f"{hold['colour']} ({hold['version']}) was held after rollout finish and is "
            "released: 0 replicas.",
        ]
    elif hold:
        until = f"until {hold['until']}" if hold.get("until") else f"for {hold['hours']:g} h"
        lines += [
            "",
            f"After rollout finish: {hold['colour']} ({hold['version']}) is held warm at "
            f"{hold['replicas']} replicas ({hold['gpus']} GPUs) {until}; then `weightshift "
            "rollout release` scales it to 0 and the autoscaler releases its nodes.",
        ]
    hours = plan.extra_gpu_hours
    if hours is not None and hours.static_pair:
        counted = "bake times" if plan.cannot_finish else "bake times and hold"
        lines.append(
            f"GPU-hours beyond the stable colour's own ({counted}, {hours.hours:g} h): "
            f"{hours.rollout:,.0f} with capacity following the rollout, "
            f"{hours.static_pair:,.0f} for a static pair ({100 * (hours.ratio or 0):.0f} %)."
        )
    return lines
