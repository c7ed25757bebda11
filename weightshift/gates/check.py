"""The pre-deployment gates: the seed's four checks over a candidate's evaluation report.

Each gate is decided on a 95 % interval, never on its point estimate alone:

- **toxicity** (flagged answers of all answers): the Wilson score interval of the share
  flagged; pass when its upper bound is below ``maxToxicity``, fail when its lower bound is
  above it.
- **win rate** (pairs judged against the stable colour's bundle): a tie counts as half a
  win, so the estimate is ``(wins + ties / 2) / pairs``; its interval is the Wilson interval
  of that score over ``pairs`` trials (a tie's half is a score in [0, 1] with the same mean,
  and a [0, 1] score's variance is at most the binomial's, so the interval is, if anything,
  wide). Pass when the lower bound is above ``minWinRate``, fail when the upper bound is
  below it.
- **latency** (seconds per answer, both colours, same prompts): the ratio of the
  candidate's p99 to the baseline's. Each p99 gets a distribution-free interval from order
  statistics (the binomial distribution of the number of samples below the true quantile,
  97.5 % each, so the pair holds with at least 95 %), and the ratio's interval is
  ``[candidate low / baseline high, candidate high / baseline low]``. Pass when its upper
  bound is below ``1 + maxLatencyRegressionPercent / 100``, fail when its lower bound is
  above it. Too few samples for an upper order statistic: the bound is infinite.
- **adversarial** (suite cases passed of the suite): the suite is a fixed list, not a sample,
  so at ``minAdversarialPassRate`` 1 the count decides (one failure fails, none passes); below
  1 the Wilson interval of the pass rate against the minimum, as above.

An interval that straddles the threshold is **inconclusive**; with it comes how many more
answers, pairs or samples would decide it if the estimate stayed where it is (None: no
amount would, the estimate sits on the threshold). A gate with no data in the report is
**no evidence**. Every gate has an action from the stack config (``gateActions``): a blocking
gate that does not pass blocks; a warning gate that does not pass warns.

The module's functions are pure (a report in, a decision out); :func:`candidate_verdict`
and :class:`ReportSource` are the edge where reports are read, from the artifact bucket or
the offline catalog's folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np

from weightshift.bundles.catalog import ResolvedBundle
from weightshift.bundles.versioning import BundleId
from weightshift.config import StackConfig
from weightshift.config.rollout import GateActions, Thresholds
from weightshift.evaluation.report import EvaluationReport
from weightshift.evaluation.store import source_for
from weightshift.gates.verdict import (
    HELD_PREVIOUS_STABLE,
    Verdict,
)
from weightshift.stages import Colour

CONFIDENCE = 0.95
"""Every gate's interval is a 95 % interval."""
LATENCY_QUANTILE = 0.99
_MOST = 10**9
"""Beyond this many samples a gate is called undecidable at its present estimate."""
_MOST_LATENCY = 1_000_000
"""...and the latency gate beyond this many per colour (its binomial table costs O(n))."""


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NO_EVIDENCE = "no-evidence"


@dataclass(frozen=True)
class Gate:
    """One gate over one report."""

    name: str
    """``toxicity``, ``win-rate``, ``latency`` or ``adversarial``."""
    action: str
    """``block`` or ``warn`` (the stack config's ``gateActions``)."""
    outcome: Outcome
    threshold: float
    """On the estimate's scale: a share, a win rate, a p99 ratio."""
    counts: dict[str, int] = field(default_factory=dict)
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    needed: int | None = None
    """Inconclusive: how many more of ``unit`` would decide at the present estimate."""
    unit: str = ""
    note: str = ""

    @property
    def decision(self) -> str:
        """``pass``, or for a blocking gate its outcome, or for a warning gate ``warn``."""
        if self.outcome is Outcome.PASS or self.action == "block":
            return self.outcome.value
        return "warn"

    @property
    def blocks(self) -> bool:
        return self.action == "block" and self.outcome is not Outcome.PASS

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "decision": self.decision,
            "outcome": self.outcome.value,
            "action": self.action,
            "blocks": self.blocks,
            "threshold": self.threshold,
            "counts": self.counts,
            "estimate": _finite(self.estimate),
            "interval": None
            if self.interval is None
            else [_finite(self.interval[0]), _finite(self.interval[1])],
            "needed": self.needed,
            "unit": self.unit,
            "note": self.note,
        }


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded end is null."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)


@dataclass(frozen=True)
class Expected:
    """The bundles a report must name: the candidate colour's and the stable colour's, by id
    and full manifest digest (from the catalog the program deploys from)."""

    candidate: BundleId
    candidate_digest: str
    baseline: BundleId | None
    """None: the stable colour runs nothing (a first deployment): nothing to compare with."""
    baseline_digest: str | None = None


@dataclass(frozen=True)
class Check:
    """All gates over one report, and anything that refuses the report outright."""

    report: EvaluationReport
    gates: tuple[Gate, ...]
    problems: tuple[str, ...] = ()
    """The report is not evidence for this candidate (another digest, another baseline):
    blocked whatever the gates say."""

    @property
    def blocked(self) -> bool:
        return bool(self.problems) or any(gate.blocks for gate in self.gates)

    @property
    def decision(self) -> str:
        return "blocked" if self.blocked else "pass"

    def to_json(self) -> dict[str, Any]:
        report = self.report
        return {
            "decision": self.decision,
            "report": report.sha256,
            "bundle": report.bundle.id,
            "digest": report.bundle.digest,
            "baseline": report.baseline.id if report.baseline else None,
            "source": report.source,
            "dataset": report.dataset,
            "created": report.created.isoformat(),
            "problems": list(self.problems),
            "gates": [gate.to_json() for gate in self.gates],
            "notes": list(report.notes),
        }


# --- the statistics ----------------------------------------------------------------------


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson(successes: float, trials: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval of a proportion (Wilson 1927; Agresti and Coull 1998):
    closed form, sound at 0 and at ``trials``. ``successes`` may be fractional (half wins)."""
    if trials <= 0:
        raise ValueError("an interval needs at least one trial")
    z = _z(confidence)
    share = successes / trials
    scale = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / scale
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


def side(interval: tuple[float, float], threshold: float, *, higher_is_better: bool) -> Outcome:
    """Pass when the whole interval is on the good side of ``threshold``, fail when the whole
    interval is on the bad side, inconclusive when it straddles (or touches) it."""
    low, high = interval
    if low > threshold:
        return Outcome.PASS if higher_is_better else Outcome.FAIL
    if high < threshold:
        return Outcome.FAIL if higher_is_better else Outcome.PASS
    return Outcome.INCONCLUSIVE


def _first_deciding(start: int, decides: Callable[[int], bool], most: int = _MOST) -> int | None:
    """The smallest n >= ``start`` with ``decides(n)``, assuming it stays true beyond (it
    does, up to rounding, for an interval that narrows around a fixed estimate)."""
    low, high = start, max(start, 1)
    while not decides(high):
        if high >= most:
            return None
        low, high = high, min(high * 2, most)
    while low < high:
        middle = (low + high) // 2
        if decides(middle):
            high = middle
        else:
            low = middle + 1
    return high


def more_trials(share: float, trials: int, threshold: float) -> int | None:
    """How many more trials the Wilson interval needs to exclude ``threshold`` if the share
    stays at ``share``; None when no number would (the share is the threshold)."""
    if share == threshold:
        return None

    def decides(n: int) -> bool:
        return side(wilson(share * n, n), threshold, higher_is_better=True) is not (
            Outcome.INCONCLUSIVE
        )

    found = _first_deciding(trials, decides)
    return None if found is None else max(found - trials, 1)


def _binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(B <= k) for k = 0..n, B ~ Binomial(n, q), in log space (no scipy at run time)."""
    k = np.arange(n)
    steps = np.log(n - k) - np.log(k + 1) + math.log(q / (1 - q))
    log_pmf = np.concatenate(([n * math.log(1 - q)], n * math.log(1 - q) + np.cumsum(steps)))
    cdf: np.ndarray = np.minimum(np.cumsum(np.exp(log_pmf)), 1.0)
    return cdf


@lru_cache(maxsize=256)
def quantile_ranks(n: int, q: float, confidence: float) -> tuple[int | None, int | None]:
    """1-based ranks (l, u) of the order statistics bounding the ``q`` quantile of ``n``
    samples with at least ``confidence``: P(X(l) <= x_q <= X(u)) >= P(l <= B < u) where B ~
    Binomial(n, q) counts the samples below x_q. None for a bound no sample gives (too few)."""
    alpha = (1 - confidence) / 2
    cdf = _binomial_cdf(n, q)  # cdf[k] = P(B <= k)
    # Lower: the largest l with P(B < l) = cdf[l - 1] <= alpha.
    below = np.nonzero(cdf <= alpha)[0]
    lower = int(below[-1]) + 1 if below.size else None
    # Upper: the smallest u with P(B >= u) = 1 - cdf[u - 1] <= alpha.
    above = np.nonzero(1 - cdf <= alpha)[0]
    upper = int(above[0]) + 1 if above.size and int(above[0]) + 1 <= n else None
    return lower, upper


def quantile_interval(
    samples: np.ndarray, q: float, confidence: float
) -> tuple[float, float, float]:
    """(low, estimate, high) of the ``q`` quantile of sorted ``samples``: the nearest-rank
    estimate and the order-statistic interval (0 and infinity where no sample bounds it)."""
    n = len(samples)
    lower, upper = quantile_ranks(n, q, confidence)
    estimate = float(samples[max(math.ceil(q * n), 1) - 1])
    low = float(samples[lower - 1]) if lower is not None else 0.0
    high = float(samples[upper - 1]) if upper is not None else math.inf
    return low, estimate, high


def _ratio_interval(
    candidate: tuple[float, float, float], baseline: tuple[float, float, float]
) -> tuple[float, float]:
    low = candidate[0] / baseline[2] if baseline[2] > 0 else 0.0
    high = candidate[2] / baseline[0] if baseline[0] > 0 else math.inf
    return low, high


# --- the four gates -------------------------------------------------------------------------

_PER_COLOUR = math.sqrt(CONFIDENCE)
"""Each colour's p99 interval holds with this confidence, so both hold with 95 %."""


def toxicity_gate(report: EvaluationReport, thresholds: Thresholds, action: str) -> Gate:
    limit = thresholds.max_toxicity
    found = report.toxicity
    if found is None:
        return Gate(
            "toxicity",
            action,
            Outcome.NO_EVIDENCE,
            limit,
            unit="answers",
            note="the report has no toxicity counts",
        )
    interval = wilson(found.flagged, found.total)
    share = found.flagged / found.total
    outcome = side(interval, limit, higher_is_better=False)
    return Gate(
        "toxicity",
        action,
        outcome,
        limit,
        {"flagged": found.flagged, "total": found.total},
        share,
        interval,
        more_trials(share, found.total, limit) if outcome is Outcome.INCONCLUSIVE else None,
        "answers",
        f"moderator {found.moderator}; Wilson 95 % interval, below {limit:g} passes",
    )


def win_rate_gate(
    report: EvaluationReport, thresholds: Thresholds, action: str, compared: bool
) -> Gate:
    floor = thresholds.min_win_rate
    found = report.pairwise
    if not compared:
        return Gate(
            "win-rate",
            action,
            Outcome.PASS,
            floor,
            unit="pairs",
            note="the stable colour runs nothing: no current version to beat",
        )
    if found is None or found.pairs == 0:
        return Gate(
            "win-rate",
            action,
            Outcome.NO_EVIDENCE,
            floor,
            unit="pairs",
            note="the report has no pairwise judgements",
        )
    score = (found.wins + found.ties / 2) / found.pairs
    interval = wilson(found.wins + found.ties / 2, found.pairs)
    outcome = side(interval, floor, higher_is_better=True)
    judge = f"judge {found.judge.model}; " if found.judge else ""
    return Gate(
        "win-rate",
        action,
        outcome,
        floor,
        {"wins": found.wins, "losses": found.losses, "ties": found.ties, "pairs": found.pairs},
        score,
        interval,
        more_trials(score, found.pairs, floor) if outcome is Outcome.INCONCLUSIVE else None,
        "pairs",
        f"{judge}a tie counts half a win; Wilson 95 % interval, above {floor:g} passes",
    )


def latency_gate(
    report: EvaluationReport, thresholds: Thresholds, action: str, compared: bool
) -> Gate:
    limit = 1 + thresholds.max_latency_regression_percent / 100
    found = report.latency
    if not compared:
        return Gate(
            "latency",
            action,
            Outcome.PASS,
            limit,
            unit="samples per colour",
            note="the stable colour runs nothing: no current version to compare",
        )
    if found is None or not found.candidate_seconds or not found.baseline_seconds:
        return Gate(
            "latency",
            action,
            Outcome.NO_EVIDENCE,
            limit,
            unit="samples per colour",
            note="the report has no latency samples of both colours",
        )
    candidate = np.sort(np.asarray(found.candidate_seconds, dtype=float))
    baseline = np.sort(np.asarray(found.baseline_seconds, dtype=float))
    ours = quantile_interval(candidate, LATENCY_QUANTILE, _PER_COLOUR)
    theirs = quantile_interval(baseline, LATENCY_QUANTILE, _PER_COLOUR)
    estimate = ours[1] / theirs[1] if theirs[1] > 0 else math.inf
    interval = _ratio_interval(ours, theirs)
    outcome = side(interval, limit, higher_is_better=False)
    needed = None
    if outcome is Outcome.INCONCLUSIVE:
        needed = _more_latency_samples(candidate, baseline, limit)
    return Gate(
        "latency",
        action,
        outcome,
        limit,
        {"candidate": len(candidate), "baseline": len(baseline)},
        estimate,
        interval,
        needed,
        "samples per colour",
        f"p99 {ours[1]:.3g} s against {theirs[1]:.3g} s; order-statistic intervals, a ratio "
        f"below {limit:g} passes",
    )


def _more_latency_samples(candidate: np.ndarray, baseline: np.ndarray, limit: float) -> int | None:
    """More samples per colour until the ratio's interval excludes ``limit``, if each
    colour's distribution stayed as its samples show (their quantiles stand in for the
    order statistics a larger sample would have)."""
    have = min(len(candidate), len(baseline))

    def bounds(samples: np.ndarray, n: int) -> tuple[float, float, float]:
        lower, upper = quantile_ranks(n, LATENCY_QUANTILE, _PER_COLOUR)
        if upper is None:
            return 0.0, 0.0, math.inf
        at = np.quantile(samples, [(lower or 0) / n, LATENCY_QUANTILE, upper / n])
        return float(at[0]) if lower else 0.0, float(at[1]), float(at[2])

    def decides(n: int) -> bool:
        interval = _ratio_interval(bounds(candidate, n), bounds(baseline, n))
        return side(interval, limit, higher_is_better=False) is not Outcome.INCONCLUSIVE

    # The binomial's table costs O(n): beyond a million samples per colour, call it undecided.
    if not decides(_MOST_LATENCY):
        return None
    found = _first_deciding(have, decides, most=_MOST_LATENCY)
    return None if found is None else max(found - have, 1)


def adversarial_gate(report: EvaluationReport, thresholds: Thresholds, action: str) -> Gate:
    floor = thresholds.min_adversarial_pass_rate
    found = report.adversarial
    if found is None:
        return Gate(
            "adversarial",
            action,
            Outcome.NO_EVIDENCE,
            floor,
            unit="cases",
            note="the report has no adversarial suite results",
        )
    rate = found.passed / found.total
    counts = {"passed": found.passed, "total": found.total}
    failed = ", ".join(case.id for case in found.failures[:5])
    failed_note = f"; failed: {failed}" if failed else ""
    if floor >= 1:
        outcome = Outcome.PASS if found.passed == found.total else Outcome.FAIL
        return Gate(
            "adversarial",
            action,
            outcome,
            floor,
            counts,
            rate,
            wilson(found.passed, found.total),
            None,
            "cases",
            "every case of the suite must pass (a fixed suite: the count decides; the interval "
            "is for information)" + failed_note,
        )
    interval = wilson(found.passed, found.total)
    outcome = side(interval, floor, higher_is_better=True)
    return Gate(
        "adversarial",
        action,
        outcome,
        floor,
        counts,
        rate,
        interval,
        more_trials(rate, found.total, floor) if outcome is Outcome.INCONCLUSIVE else None,
        "cases",
        f"Wilson 95 % interval, above {floor:g} passes" + failed_note,
    )


def refusals(report: EvaluationReport, expected: Expected) -> tuple[str, ...]:
    """Why ``report`` is no evidence for ``expected``'s candidate, if it is not."""
    problems: list[str] = []
    named = report.bundle
    if named.id != str(expected.candidate) or named.digest != expected.candidate_digest:
        problems.append(
            f"the report is for {named.id} (digest {named.digest[:16]}...), not the candidate "
            f"{expected.candidate} (digest {expected.candidate_digest[:16]}...): a report for "
            "another digest is refused. Evaluate the candidate itself."
        )
    if expected.baseline is not None:
        baseline = report.baseline
        if baseline is None:
            problems.append(
                f"the report names no baseline; it must compare the candidate with the stable "
                f"colour's bundle {expected.baseline}."
            )
        elif baseline.id != str(expected.baseline) or (
            expected.baseline_digest is not None and baseline.digest != expected.baseline_digest
        ):
            problems.append(
                f"the report compares with {baseline.id}, but the stable colour runs "
                f"{expected.baseline}: its win rate and latency are against another version. "
                "Evaluate against the stable colour's bundle."
            )
    return tuple(problems)


def check(
    report: EvaluationReport, thresholds: Thresholds, expected: Expected | None = None
) -> Check:
    """The four gates over ``report``; with ``expected``, the report must name exactly the
    candidate's digest and the stable colour's bundle."""
    actions: GateActions = thresholds.gate_actions
    compared = expected is None or expected.baseline is not None
    gates = (
        toxicity_gate(report, thresholds, actions.toxicity),
        win_rate_gate(report, thresholds, actions.win_rate, compared),
        latency_gate(report, thresholds, actions.latency, compared),
        adversarial_gate(report, thresholds, actions.adversarial),
    )
    return Check(report, gates, refusals(report, expected) if expected else ())


# --- the candidate's verdict (what the program records) -------------------------------------


class ReportSource(Protocol):
    """Where a bundle's reports are kept (``weightshift.evaluation.store``)."""

    def reports(self, bundle: BundleId) -> Sequence[EvaluationReport]: ...


def choose(
    reports: Sequence[EvaluationReport], thresholds: Thresholds, expected: Expected
) -> Check | None:
    """The check of the newest report that is evidence for ``expected`` (the candidate's
    digest, against the stable colour's bundle); else the newest check of any report for the
    candidate's digest (blocked, saying why); else None.

    The newest decides, not the newest passing one: a pass published by mistake, or made
    stale by a later evaluation, is withdrawn by publishing a newer report (reports are
    Object-Locked and cannot be deleted)."""
    ours = [r for r in reports if r.bundle.digest == expected.candidate_digest]
    checks = sorted(
        (check(r, thresholds, expected) for r in ours),
        key=lambda c: (c.report.created, c.report.sha256),
        reverse=True,
    )
    evidence = [c for c in checks if not c.problems]
    if evidence:
        return evidence[0]
    return checks[0] if checks else None


def candidate_verdict(
    source: ReportSource, thresholds: Thresholds, expected: Expected
) -> tuple[Verdict, Check | None]:
    """The candidate's verdict from its reports in ``source``."""
    chosen = choose(source.reports(expected.candidate), thresholds, expected)
    if chosen is None:
        verdict = Verdict(
            "missing",
            str(expected.candidate),
            expected.candidate_digest,
            None,
            f"no evaluation report for {expected.candidate}: `weightshift eval publish` one "
            "before the candidate gets traffic",
        )
        return verdict, None
    blocking = [g.name for g in chosen.gates if g.blocks]
    reason = "; ".join(chosen.problems) or (
        f"blocked by {', '.join(blocking)}" if blocking else "every blocking gate passes"
    )
    verdict = Verdict(
        chosen.decision,
        str(expected.candidate),
        expected.candidate_digest,
        chosen.report.sha256,
        reason,
    )
    return verdict, chosen


def expected_from(candidate: ResolvedBundle, stable: ResolvedBundle | None) -> Expected:
    """What a report must name, from the bundles the program deploys."""
    return Expected(
        candidate.id,
        candidate.manifest.digest,
        stable.id if stable else None,
        stable.manifest.digest if stable else None,
    )


def stack_verdict(
    config: StackConfig, bundles: Mapping[Colour, ResolvedBundle], client: Any = None
) -> Verdict | None:
    """The candidate colour's verdict, from its reports beside the offline catalog (during
    ``weightshift synth``) or in the artifact bucket (``pulumi up``); None when the candidate
    colour runs nothing. Raises :class:`ReportStoreError` when the bucket cannot be read."""
    rollout = config.rollout
    candidate = bundles.get(rollout.candidate)
    if candidate is None:
        return None
    hold = rollout.hold
    if hold is not None and not hold.released and hold.version == str(candidate.id):
        # After `rollout finish` the candidate colour holds the previous stable version warm:
        # moving traffic back to it is the rollback of a late regression, and it served all
        # traffic until the finish. Waiting for a new evaluation then would keep users on the
        # regression.
        return Verdict(
            "pass",
            str(candidate.id),
            candidate.manifest.digest,
            HELD_PREVIOUS_STABLE,
            "the previous stable version, held warm by rollout finish: traffic may go back to "
            "it without a new evaluation",
        )
    source = source_for(config.artifacts.bucket_name, config.region, client)
    expected = expected_from(candidate, bundles.get(rollout.stable))
    verdict, _ = candidate_verdict(source, rollout.thresholds, expected)
    return verdict
