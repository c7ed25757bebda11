"""Evaluation reports from what teams already produce.

Three sources, each mapped onto the four gates' counts; whatever a source holds that no
gate reads, and every gate it cannot feed, becomes a ``notes`` line of the report (a gate
with no counts is *no evidence* when checked).

- **promptfoo** (``promptfoo eval -o out.json``; the ``results.results`` list of
  ``EvaluateResult``, output versions 2 and 3). Per result of the candidate's provider,
  each assertion's component result (``gradingResult.componentResults``) is read by its
  assertion: ``select-best`` (and ``max-score``) judge the candidate's output against the
  baseline provider's on the same test and prompt (won when only the candidate's is picked,
  lost when only the baseline's is, a tie otherwise); ``moderation``, or any assertion whose
  ``metric`` is ``toxicity`` or ``moderation``, flags the answer when it fails; an assertion
  whose ``metric`` is ``adversarial``, or every assertion of a red-team result (a
  ``pluginId`` in its metadata), makes the test an adversarial case, passed when all of them
  pass. ``latencyMs`` of both providers' uncached, successful results are the latency
  samples. Errored results are left out and counted in a note.
- **lm-evaluation-harness** (``results_<date>.json``: ``results`` per task with metrics
  ``<metric>,<filter>`` and ``n-samples``). A task's mean of 0/1 scores times its effective
  sample count gives counts: the toxicity task (default ``realtoxicityprompts``, whose
  Perspective metric scores an answer 1 at toxicity 0.5 or more) gives flagged of total, the
  adversarial task (named with ``--adversarial-task``) passed of total. A mean that is not a
  whole number of samples is not a share of 0/1 scores and is not used. Every other task's
  metrics (with their stderr) become notes; it has no pairwise judgements or latency.
- **bundle tests** (a bundle's own ``tests/evaluation.json``): adversarial passed of total;
  toxicity and win rate when the optional counts are present (``toxicity_flagged``,
  ``toxicity_total``; ``wins``, ``losses``, ``ties``), else their point estimates become notes;
  its candidate-only ``latency_p99_ms`` is a note.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from weightshift.bundles import strict_json
from weightshift.bundles.schemas import Evaluation
from weightshift.evaluation.report import (
    Adversarial,
    AdversarialCase,
    BundleRef,
    EvaluationReport,
    Latency,
    Pairwise,
    Source,
    Toxicity,
)

MAX_SOURCE_BYTES = 256 * 1024 * 1024
"""An input file larger than this is refused before it is parsed."""
PAIRWISE_ASSERTIONS = frozenset({"select-best", "max-score"})
TOXICITY_ASSERTIONS = frozenset({"moderation"})
TOXICITY_METRICS = frozenset({"toxicity", "moderation"})
ADVERSARIAL_METRIC = "adversarial"
LEAK_ASSERTIONS = frozenset({"not-contains", "not-icontains", "not-regex", "not-contains-any"})
DEFAULT_TOXICITY_TASK = "realtoxicityprompts"
_WHOLE = 1e-6
"""A mean times its sample count within this of a whole number is a count."""


class SourceError(ValueError):
    """An input that cannot be imported; the message says what and how to fix it."""


@dataclass(frozen=True)
class Subject:
    """What the report is about: the candidate, its baseline, the prompt set's name."""

    bundle: BundleRef
    baseline: BundleRef | None = None
    dataset: str | None = None


def read_json(data: bytes, where: str) -> Any:
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceError(f"{where} is {len(data):,} bytes; at most {MAX_SOURCE_BYTES:,}.")
    try:
        return strict_json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise SourceError(f"{where} is not JSON ({error}).") from None


def _report(
    subject: Subject,
    source: Source,
    dataset: str,
    created: datetime,
    notes: list[str],
    **parts: Any,
) -> EvaluationReport:
    try:
        return EvaluationReport(
            bundle=subject.bundle,
            baseline=subject.baseline,
            created=created,
            source=source,
            dataset=subject.dataset or dataset,
            notes=tuple(notes),
            **parts,
        )
    except ValidationError as error:
        raise SourceError(f"the imported figures do not make a report: {error}") from None


# --- promptfoo --------------------------------------------------------------------------------


def _provider(result: Mapping[str, Any]) -> str:
    provider = result.get("provider")
    if isinstance(provider, Mapping):
        return str(provider.get("label") or provider.get("id") or "")
    return str(provider or "")


def _prompt(result: Mapping[str, Any]) -> str:
    prompt = result.get("prompt")
    if isinstance(prompt, Mapping):
        return str(prompt.get("label") or prompt.get("raw") or result.get("promptIdx", ""))
    return str(result.get("promptIdx", ""))


def _components(result: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    grading = result.get("gradingResult")
    if not isinstance(grading, Mapping):
        return []
    parts = grading.get("componentResults")
    if isinstance(parts, list):
        return [part for part in parts if isinstance(part, Mapping)]
    return [grading] if isinstance(grading.get("assertion"), Mapping) else []


def _assertion(component: Mapping[str, Any]) -> tuple[str, str]:
    assertion = component.get("assertion")
    if not isinstance(assertion, Mapping):
        return "", ""
    return str(assertion.get("type") or ""), str(assertion.get("metric") or "").lower()


def _red_team(result: Mapping[str, Any]) -> bool:
    for holder in (result.get("testCase"), result.get("gradingResult"), result):
        if isinstance(holder, Mapping):
            metadata = holder.get("metadata")
            if isinstance(metadata, Mapping) and metadata.get("pluginId"):
                return True
    return False


def _errored(result: Mapping[str, Any]) -> bool:
    return result.get("failureReason") == 2 or (
        bool(result.get("error")) and not isinstance(result.get("gradingResult"), Mapping)
    )


def _latency_ms(result: Mapping[str, Any]) -> float | None:
    response = result.get("response")
    if isinstance(response, Mapping) and response.get("cached"):
        return None
    value = result.get("latencyMs")
    if value is None and isinstance(response, Mapping):
        value = response.get("latencyMs")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value) if value >= 0 else None
    return None


def _pick_providers(
    providers: list[str], candidate: str | None, baseline: str | None
) -> tuple[str, str | None]:
    listed = ", ".join(repr(p) for p in providers) or "none"
    for option, name in (("--candidate-provider", candidate), ("--baseline-provider", baseline)):
        if name is not None and name not in providers:
            raise SourceError(f"{option} {name!r} is not a provider of the file ({listed}).")
    if candidate is None:
        if len(providers) != 1:
            raise SourceError(
                f"the file has {len(providers)} providers ({listed}): name the candidate's "
                "with --candidate-provider (its label, or its id where it has no label)."
            )
        candidate = providers[0]
    if baseline is None:
        others = [p for p in providers if p != candidate]
        if len(others) > 1:
            raise SourceError(
                f"the file has {len(providers)} providers ({listed}): name the baseline's "
                "with --baseline-provider."
            )
        baseline = others[0] if others else None
    if baseline == candidate:
        raise SourceError("the candidate and baseline providers must differ.")
    return candidate, baseline


def from_promptfoo(
    data: bytes,
    subject: Subject,
    *,
    candidate_provider: str | None = None,
    baseline_provider: str | None = None,
    where: str = "the promptfoo output",
) -> EvaluationReport:
    document = read_json(data, where)
    summary = document.get("results") if isinstance(document, Mapping) else None
    results = summary.get("results") if isinstance(summary, Mapping) else None
    if not isinstance(results, list):
        raise SourceError(
            f"{where} is not promptfoo's JSON output: it has no results.results list. Write it "
            "with `promptfoo eval -o out.json`."
        )
    notes: list[str] = []
    version = summary.get("version") if isinstance(summary, Mapping) else None
    if version not in (2, 3):
        notes.append(f"promptfoo output version {version!r}; read as version 3")
    rows = [r for r in results if isinstance(r, Mapping)]
    providers = sorted({_provider(r) for r in rows} - {""})
    candidate, baseline = _pick_providers(providers, candidate_provider, baseline_provider)

    errored = Counter(_provider(r) for r in rows if _errored(r))
    for name, count in sorted(errored.items()):
        notes.append(f"{count} errored results of provider {name!r} left out")
    usable = [r for r in rows if not _errored(r)]
    ours = [r for r in usable if _provider(r) == candidate]
    theirs = [r for r in usable if baseline is not None and _provider(r) == baseline]

    flagged = moderated = 0
    passed = 0
    failures: list[AdversarialCase] = []
    cases = 0
    other: Counter[str] = Counter()
    other_passed: Counter[str] = Counter()
    picked: dict[tuple[Any, str], bool] = {}
    for result in ours:
        adversarial: list[bool] = []
        leaks = False
        toxic: list[bool] = []
        red_team = _red_team(result)
        for component in _components(result):
            kind, metric = _assertion(component)
            ok = component.get("pass") is True
            if kind in PAIRWISE_ASSERTIONS:
                picked[(result.get("testIdx"), _prompt(result))] = ok
            elif kind in TOXICITY_ASSERTIONS or metric in TOXICITY_METRICS:
                toxic.append(ok)
            elif metric == ADVERSARIAL_METRIC or red_team:
                adversarial.append(ok)
                # A "must not contain" check that failed is a leak; anything else, a refusal.
                leaks = leaks or (not ok and kind in LEAK_ASSERTIONS)
            else:
                other[kind or "(untyped)"] += 1
                other_passed[kind or "(untyped)"] += ok
        if toxic:
            moderated += 1
            flagged += not all(toxic)
        if adversarial:
            cases += 1
            if all(adversarial):
                passed += 1
            else:
                failures.append(
                    AdversarialCase(
                        id=f"test {result.get('testIdx')}",
                        kind="must-not-leak" if leaks else "must-refuse",
                        reason=str((result.get("gradingResult") or {}).get("reason", ""))[:300],
                    )
                )
    for kind in sorted(other):
        notes.append(
            f"{other[kind]} {kind} assertions on {candidate!r} not gated "
            f"({other_passed[kind]} passed)"
        )

    parts: dict[str, Any] = {}
    if moderated:
        parts["toxicity"] = Toxicity(
            flagged=flagged, total=moderated, moderator="promptfoo:moderation"
        )
    if cases:
        parts["adversarial"] = Adversarial(
            passed=passed, total=cases, failures=tuple(failures[:100])
        )
    if baseline is not None:
        rivals: dict[tuple[Any, str], bool] = {}
        for result in theirs:
            for component in _components(result):
                if _assertion(component)[0] in PAIRWISE_ASSERTIONS:
                    rivals[(result.get("testIdx"), _prompt(result))] = component.get("pass") is True
        shared = sorted(set(picked) & set(rivals), key=str)
        if shared:
            wins = sum(picked[k] and not rivals[k] for k in shared)
            losses = sum(rivals[k] and not picked[k] for k in shared)
            parts["pairwise"] = Pairwise(wins=wins, losses=losses, ties=len(shared) - wins - losses)
            notes.append(
                "pairwise from promptfoo select-best/max-score: the judge and its prompt are "
                "in the promptfoo config, not in this report"
            )
        candidate_ms = [ms for r in ours if (ms := _latency_ms(r)) is not None]
        baseline_ms = [ms for r in theirs if (ms := _latency_ms(r)) is not None]
        if candidate_ms and baseline_ms:
            parts["latency"] = Latency(
                candidate_seconds=tuple(ms / 1000 for ms in candidate_ms),
                baseline_seconds=tuple(ms / 1000 for ms in baseline_ms),
            )
            notes.append(
                "latency: promptfoo's latencyMs per provider call (cached results left out)"
            )
    else:
        notes.append("one provider only: no pairwise judgement and no baseline latency")
    if "pairwise" not in parts:
        notes.append("no select-best or max-score assertion on both providers: no win rate")
    if "toxicity" not in parts:
        notes.append("no moderation assertion (or metric toxicity): no toxicity counts")
    if "adversarial" not in parts:
        notes.append("no assertion with metric adversarial and no red-team result")
    created = _timestamp(summary.get("timestamp") if isinstance(summary, Mapping) else None)
    config = document.get("config") if isinstance(document, Mapping) else None
    description = config.get("description") if isinstance(config, Mapping) else None
    dataset = str(description or f"promptfoo {document.get('evalId', '')}".strip())
    return _report(subject, "promptfoo", dataset[:200], created, notes, **parts)


def _timestamp(value: object) -> datetime:
    """When the source says it ran (ISO 8601 or Unix seconds), else now."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            return datetime.now(UTC)
    if isinstance(value, str):
        try:
            found = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return datetime.now(UTC)
        return found if found.tzinfo else found.replace(tzinfo=UTC)
    return datetime.now(UTC)


# --- lm-evaluation-harness ------------------------------------------------------------------


def _metrics(values: Mapping[str, Any]) -> dict[str, tuple[float, float | None]]:
    """``metric,filter`` -> (value, stderr) of one task's results."""
    found: dict[str, tuple[float, float | None]] = {}
    for key, value in values.items():
        if key == "alias" or "_stderr," in key or not isinstance(value, int | float):
            continue
        if isinstance(value, bool) or not math.isfinite(value):
            continue
        name, _, kept = key.partition(",")
        stderr = values.get(f"{name}_stderr,{kept}")
        found[key] = (float(value), float(stderr) if isinstance(stderr, int | float) else None)
    return found


def _count(mean: float, samples: int) -> int | None:
    exact = mean * samples
    whole = round(exact)
    return whole if 0 <= mean <= 1 and abs(exact - whole) <= _WHOLE * max(samples, 1) else None


def from_lm_eval(
    data: bytes,
    subject: Subject,
    *,
    toxicity_task: str = DEFAULT_TOXICITY_TASK,
    adversarial_task: str | None = None,
    where: str = "the lm-eval results file",
) -> EvaluationReport:
    document = read_json(data, where)
    results = document.get("results") if isinstance(document, Mapping) else None
    if not isinstance(results, Mapping) or not results:
        raise SourceError(
            f"{where} is not an lm-evaluation-harness results file: it has no results per "
            "task. Give the results_<date>.json that --output_path wrote."
        )
    samples = document.get("n-samples")
    samples = samples if isinstance(samples, Mapping) else {}
    notes: list[str] = []
    parts: dict[str, Any] = {}
    used: set[str] = set()
    for task, gate in ((toxicity_task, "toxicity"), (adversarial_task, "adversarial")):
        if task is None:
            continue
        values = results.get(task)
        if not isinstance(values, Mapping):
            notes.append(f"no task {task!r} in the file: no {gate} counts")
            continue
        used.add(task)
        counted = samples.get(task)
        n = counted.get("effective") if isinstance(counted, Mapping) else None
        metrics = _metrics(values)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1 or len(metrics) != 1:
            notes.append(
                f"task {task!r}: needs one metric and n-samples.effective to give {gate} "
                f"counts (found {sorted(metrics)} and n-samples {counted!r})"
            )
            continue
        ((metric, (mean, _stderr)),) = metrics.items()
        whole = _count(mean, n)
        if whole is None:
            notes.append(
                f"task {task!r}: {metric} = {mean:g} over {n} samples is not a share of 0/1 "
                f"scores: no {gate} counts"
            )
            continue
        if gate == "toxicity":
            parts["toxicity"] = Toxicity(
                flagged=whole, total=n, moderator=f"lm-eval:{task}:{metric}"
            )
        else:
            parts["adversarial"] = Adversarial(passed=whole, total=n)
    for task in sorted(set(results) - used):
        values = results[task]
        if not isinstance(values, Mapping):
            continue
        counted = samples.get(task)
        n = counted.get("effective") if isinstance(counted, Mapping) else None
        for metric, (value, stderr) in sorted(_metrics(values).items()):
            spread = f" ± {stderr:.4g}" if stderr is not None else ""
            notes.append(f"lm-eval {task} {metric} = {value:.4g}{spread} (n = {n}), not gated")
    notes.append("lm-eval has no pairwise judgements or latency: no win rate, no latency")
    model = document.get("model_name") or (document.get("config") or {}).get("model")
    dataset = f"lm-eval {model}" if model else "lm-eval"
    return _report(
        subject, "lm-eval", str(dataset)[:200], _timestamp(document.get("date")), notes, **parts
    )


# --- the bundle's own tests/evaluation.json -------------------------------------------------


def from_bundle_tests(
    data: bytes, subject: Subject, *, where: str = "tests/evaluation.json"
) -> EvaluationReport:
    document = read_json(data, where)
    try:
        found = Evaluation.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise SourceError(f"{where} is not a bundle's evaluation file: {problems}.") from None
    baseline = subject.baseline
    if found.baseline is not None and baseline is not None and found.baseline != baseline.id:
        raise SourceError(
            f"{where} says its win rate was measured against {found.baseline}, not "
            f"{baseline.id}: pass --baseline {found.baseline}, or import the right file."
        )
    if found.baseline is not None and baseline is None:
        raise SourceError(
            f"{where} was measured against {found.baseline}: pass --baseline {found.baseline} "
            "so the report names its digest."
        )
    notes = [f"imported from the bundle's {where}"]
    parts: dict[str, Any] = {
        "adversarial": Adversarial(passed=found.adversarial.passed, total=found.adversarial.total)
    }
    if found.toxicity_flagged is not None and found.toxicity_total is not None:
        parts["toxicity"] = Toxicity(
            flagged=found.toxicity_flagged,
            total=found.toxicity_total,
            moderator=found.moderator or "unnamed",
        )
    else:
        notes.append(
            f"toxicity {found.toxicity:g} given without counts (toxicity_flagged, "
            "toxicity_total): no interval, no evidence"
        )
    if found.wins is not None and found.losses is not None and found.ties is not None:
        parts["pairwise"] = Pairwise(wins=found.wins, losses=found.losses, ties=found.ties)
    else:
        notes.append(
            f"win rate {found.win_rate:g} given without counts (wins, losses, ties): no "
            "interval, no evidence"
        )
    notes.append(
        f"latency p99 {found.latency_p99_ms:g} ms of the candidate only, without samples or "
        "the baseline's: no evidence"
    )
    dataset = found.dataset or "bundle tests"
    return _report(subject, "bundle-tests", dataset, datetime.now(UTC), notes, **parts)
