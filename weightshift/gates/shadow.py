"""The divergence gate: may a shadow rollout leave mirroring (shadow stage 1) for canary
stage 1? Decided on a shadow report (``weightshift shadow report``'s JSON model,
:class:`weightshift.shadow.report.Report`) against ``rollout.shadowGate``.

Criteria, each pass, fail or inconclusive, each on its figure's interval as the report
computed it (pass when the whole interval is on the good side of the limit, fail when the
whole interval is on the bad side, inconclusive when it straddles or touches it, as
:func:`weightshift.gates.check.side` decides the pre-deployment gates):

- ``pairs``: the report stands on at least ``minPairs`` mirrored pairs;
- ``exact_match`` (floor ``minExactMatch``; not applicable while unset);
- ``refusal_delta``, ``block_delta`` (ceilings ``maxRefusalDelta``, ``maxBlockDelta``): the
  candidate's rate minus the stable colour's on the same requests;
- ``p99_latency_ratio`` (ceiling ``maxP99Ratio``);
- ``candidate_failures`` (ceiling ``maxCandidateErrorRate``): copies the candidate answered
  with an error or not in time, of all pairs (the other figures stand on answered pairs
  only, so a candidate that fails half its copies must not pass on the other half);
- ``judge_win_rate`` (floor ``minJudgeWinRate``): only where text was sampled and a judge
  ran; otherwise not applicable.

The gate fails when any criterion fails, passes when every one passes (or does not apply),
and is inconclusive otherwise, saying how many more pairs would decide at the present
estimates: for a share (Wilson interval) the exact projection of
:func:`weightshift.gates.check.more_trials`; for a difference, a ratio of means or a win rate
the interval's half-width scaled as one over the square root of the pairs; for the p99 ratio
without an upper bound, the pairs an upper order statistic needs. A projection is an
estimate, not a promise: the next report decides.

A report is evidence only for the comparison it names: the stack's model, its stable
colour's version and its candidate's (:func:`check_comparison`), at a confidence of at
least 95 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from weightshift.config.rollout import ShadowGate as Limits
from weightshift.evidence.sequential import Decision
from weightshift.gates.check import Outcome, more_trials, side, wilson
from weightshift.shadow.report import Figure, Report, Skipped
from weightshift.shadow.stats import quantile_ranks

MIN_CONFIDENCE = 0.95
"""The gate decides on intervals at least this wide."""
_MOST = 10**9


class ShadowEvidenceError(ValueError):
    """The report is not evidence for this gate (another comparison, too narrow a
    confidence); the message says which and what to do."""


@dataclass(frozen=True)
class Criterion:
    name: str
    decision: Decision
    limit: float | None
    estimate: float | None = None
    interval: tuple[float | None, float | None] | None = None
    pairs: int = 0
    needed: int | None = None
    """Inconclusive: more pairs that would decide at the present estimate (None: no number
    would, or none can be projected)."""
    unit: str = "pairs"
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decision": self.decision.value,
            "limit": self.limit,
            "estimate": self.estimate,
            "interval": list(self.interval) if self.interval is not None else None,
            "pairs": self.pairs,
            "needed": self.needed,
            "unit": self.unit,
            "note": self.note,
        }

    def text(self) -> str:
        parts = [f"{self.name}: {self.decision.value}"]
        if self.estimate is not None:
            low, high = self.interval or (None, None)
            parts.append(f"estimate {self.estimate:.4g} in [{_bound(low)}, {_bound(high)}]")
        if self.limit is not None:
            parts.append(f"limit {self.limit:g}")
        parts.append(f"{self.pairs:,} {self.unit}")
        if self.decision is Decision.INCONCLUSIVE and self.needed is not None:
            parts.append(f"about {self.needed:,} more {self.unit} would decide")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


def _bound(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:.4g}"


@dataclass
class ShadowGateDecision:
    """The divergence gate over one report."""

    model: str
    stable: str
    candidate: str | None
    since: str | None
    until: str | None
    pairs: int
    confidence: float
    source: str
    criteria: list[Criterion] = field(default_factory=list)

    @property
    def decision(self) -> Decision:
        found = {c.decision for c in self.criteria}
        if Decision.FAIL in found:
            return Decision.FAIL
        if Decision.INCONCLUSIVE in found:
            return Decision.INCONCLUSIVE
        return Decision.PASS

    def failing(self) -> list[Criterion]:
        return [c for c in self.criteria if c.decision is Decision.FAIL]

    def undecided(self) -> list[Criterion]:
        return [c for c in self.criteria if c.decision is Decision.INCONCLUSIVE]

    @property
    def needed(self) -> int | None:
        """More mirrored pairs that would decide every undecided criterion at the present
        estimates; None when some criterion cannot be projected."""
        needs = [c.needed for c in self.undecided()]
        if not needs or None in needs:
            return None
        return max(n for n in needs if n is not None)

    def wait_text(self) -> str:
        undecided = self.undecided()
        names = ", ".join(c.name for c in undecided)
        if self.needed is None:
            return (
                f"{names} undecided, and no count of pairs would decide at the present "
                "estimates (an estimate on its limit, or nothing measured yet): mirror longer "
                "and look again"
            )
        units = {c.unit for c in undecided}
        unit = units.pop() if len(units) == 1 else "pairs (judged pairs for the judge)"
        return f"about {self.needed:,} more {unit} would decide ({names}) at the present estimates"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "shadow-gate",
            "decision": self.decision.value,
            "model": self.model,
            "stableVersion": self.stable,
            "candidateVersion": self.candidate,
            "window": {"since": self.since, "until": self.until},
            "pairs": self.pairs,
            "confidence": self.confidence,
            "source": self.source,
            "needed": self.needed if self.decision is Decision.INCONCLUSIVE else None,
            "criteria": [c.to_json() for c in self.criteria],
        }

    def render(self) -> str:
        lines = [
            f"shadow gate: {self.decision.value.upper()} ({self.pairs:,} pairs, "
            f"{self.model} {self.stable} vs {self.candidate}, from {self.source})"
        ]
        lines += [f"  {c.text()}" for c in self.criteria]
        if self.decision is Decision.INCONCLUSIVE:
            lines.append(f"  {self.wait_text()}")
        return "\n".join(lines)


def check_comparison(
    report: Report, *, model: str, stable: str | None, candidate: str | None
) -> None:
    """Refuse a report that is not evidence about this stack's two versions."""
    problems: list[str] = []
    compared = report.comparison
    if compared.model != model:
        problems.append(f"its model is {compared.model!r}, the stack's is {model!r}")
    if compared.stable_version != stable:
        problems.append(
            f"its stable version is {compared.stable_version!r}, the stack's stable colour "
            f"runs {stable!r}"
        )
    if compared.candidate_version != candidate:
        problems.append(
            f"its candidate version is {compared.candidate_version!r}, the stack's candidate "
            f"runs {candidate!r}"
            + (
                " (the candidate answered no copy in the report's window)"
                if compared.candidate_version is None
                else ""
            )
        )
    if report.confidence < MIN_CONFIDENCE:
        problems.append(
            f"its intervals are at {report.confidence:.0%} confidence; the gate decides on "
            f"{MIN_CONFIDENCE:.0%} or wider (weightshift shadow report --confidence 0.95)"
        )
    if problems:
        raise ShadowEvidenceError(
            "the shadow report is not evidence for this rollout: "
            + "; ".join(problems)
            + ". Make a report over this rollout's own pairs (weightshift shadow report "
            "--records ... --stable ... --candidate ...)."
        )


def decide(report: Report, limits: Limits) -> ShadowGateDecision:
    """The divergence gate over ``report`` (see the module's docstring); check the
    comparison first with :func:`check_comparison`."""
    gate = ShadowGateDecision(
        model=report.comparison.model,
        stable=report.comparison.stable_version,
        candidate=report.comparison.candidate_version,
        since=report.window.since or report.window.first,
        until=report.window.until or report.window.last,
        pairs=report.records.pairs,
        confidence=report.confidence,
        source=report.records.source,
    )
    pairs = report.records.pairs
    if pairs >= limits.min_pairs:
        gate.criteria.append(Criterion("pairs", Decision.PASS, limits.min_pairs, pairs=pairs))
    else:
        gate.criteria.append(
            Criterion(
                "pairs",
                Decision.INCONCLUSIVE,
                limits.min_pairs,
                pairs=pairs,
                needed=limits.min_pairs - pairs,
                note=f"the gate needs {limits.min_pairs:,} mirrored pairs",
            )
        )
    figures = report.figures
    if limits.min_exact_match is None:
        gate.criteria.append(
            Criterion("exact_match", Decision.PASS, None, note="not applicable: no minExactMatch")
        )
    else:
        gate.criteria.append(
            _share("exact_match", figures.get("exact_match"), limits.min_exact_match, True)
        )
    gate.criteria.append(
        _scaled("refusal_delta", figures.get("refusal_delta"), limits.max_refusal_delta, False)
    )
    gate.criteria.append(
        _scaled("block_delta", figures.get("block_delta"), limits.max_block_delta, False)
    )
    gate.criteria.append(_p99(report, limits.max_p99_ratio))
    gate.criteria.append(_failures(report, limits.max_candidate_error_rate))
    judged = figures.get("judge_win_rate")
    if isinstance(judged, Figure) and judged.pairs:
        criterion = _scaled("judge_win_rate", judged, limits.min_judge_win_rate, True)
        gate.criteria.append(replace(criterion, unit="judged pairs"))
    else:
        why = judged.skipped if isinstance(judged, Skipped) else "no pair was judged"
        gate.criteria.append(
            Criterion("judge_win_rate", Decision.PASS, None, note=f"not applicable: {why}")
        )
    return gate


def _decision(outcome: Outcome) -> Decision:
    return Decision(outcome.value)


def _missing(name: str, figure: Figure | Skipped | None, limit: float) -> Criterion:
    why = (
        figure.skipped
        if isinstance(figure, Skipped)
        else (figure.note if figure is not None and figure.note else "not in the report")
    )
    return Criterion(name, Decision.INCONCLUSIVE, limit, note=f"not measured: {why}")


def _share(name: str, figure: Figure | Skipped | None, limit: float, higher: bool) -> Criterion:
    """A Wilson share: decided on the report's interval, projected exactly."""
    if not isinstance(figure, Figure) or figure.value is None:
        return _missing(name, figure, limit)
    low = figure.low if figure.low is not None else 0.0
    high = figure.high if figure.high is not None else 1.0
    decision = _decision(side((low, high), limit, higher_is_better=higher))
    needed = (
        more_trials(figure.value, figure.pairs, limit)
        if decision is Decision.INCONCLUSIVE
        else None
    )
    return Criterion(
        name, decision, limit, figure.value, (figure.low, figure.high), figure.pairs, needed
    )


def _scaled(name: str, figure: Figure | Skipped | None, limit: float, higher: bool) -> Criterion:
    """A figure whose interval narrows as one over the square root of its pairs."""
    if not isinstance(figure, Figure) or figure.value is None:
        return _missing(name, figure, limit)
    low = figure.low if figure.low is not None else -math.inf
    high = figure.high if figure.high is not None else math.inf
    decision = _decision(side((low, high), limit, higher_is_better=higher))
    needed = None
    if decision is Decision.INCONCLUSIVE:
        needed = _more_by_root(figure.value, low, high, limit, figure.pairs)
    return Criterion(
        name, decision, limit, figure.value, (figure.low, figure.high), figure.pairs, needed
    )


def _more_by_root(value: float, low: float, high: float, limit: float, pairs: int) -> int | None:
    """More pairs until the bound facing ``limit`` passes it, the half-width shrinking as
    one over the square root of the pairs (None: on the limit, or unbounded)."""
    gap = abs(value - limit)
    half = value - low if value > limit else high - value
    if gap == 0 or not math.isfinite(half) or pairs <= 0:
        return None
    # Strictly beyond: where the bound only touches the limit, the criterion stays undecided.
    total = math.floor(round(pairs * (half / gap) ** 2, 6)) + 1
    return min(max(total - pairs, 1), _MOST)


def _p99(report: Report, limit: float) -> Criterion:
    figure = report.figures.get("p99_latency_ratio")
    criterion = _scaled("p99_latency_ratio", figure, limit, False)
    if (
        criterion.decision is Decision.INCONCLUSIVE
        and isinstance(figure, Figure)
        and figure.value is not None
        and figure.high is None
    ):
        # No upper order statistic yet: each colour needs enough answers for one, at half the
        # error rate (the report's Bonferroni split).
        half = 1 - (1 - report.confidence) / 2
        needed = _order_statistic_pairs(half) - figure.pairs
        return replace(
            criterion,
            needed=max(needed, 1),
            note="too few answers per colour to bound the p99 from above",
        )
    return criterion


def _order_statistic_pairs(confidence: float) -> int:
    """The fewest samples with an upper order statistic for the p99 at ``confidence``."""
    low, high = 1, 1
    while quantile_ranks(high, 0.99, confidence)[2] is None:
        low, high = high, high * 2
    while low < high:
        middle = (low + high) // 2
        if quantile_ranks(middle, 0.99, confidence)[2] is None:
            low = middle + 1
        else:
            high = middle
    return high


def _failures(report: Report, limit: float) -> Criterion:
    """Copies the candidate answered with an error or not in time, of all pairs."""
    counts = [report.mirror.get(name) for name in ("error", "timeout")]
    pairs = report.records.pairs
    if not pairs or not all(isinstance(f, Figure) and f.count is not None for f in counts):
        return Criterion(
            "candidate_failures",
            Decision.INCONCLUSIVE,
            limit,
            pairs=pairs,
            note="not measured: no pairs",
        )
    failed = sum(f.count or 0 for f in counts if isinstance(f, Figure))
    low, high = wilson(failed, pairs, report.confidence)
    share = failed / pairs
    decision = _decision(side((low, high), limit, higher_is_better=False))
    needed = more_trials(share, pairs, limit) if decision is Decision.INCONCLUSIVE else None
    return Criterion(
        "candidate_failures",
        decision,
        limit,
        share,
        (low, high),
        pairs,
        needed,
        note=f"{failed:,} copies errored or timed out",
    )
