"""Simulated canary stages, to check what the stage gate's test promises and to show it
(``scripts/gate_simulation.py``, ``tests/test_evidence.py``).

A stage of ``minutes`` minutes at ``rps`` requests per second, Poisson per minute, each
request sent to the candidate with ``share`` (the ALB's weighted forward), each failing with
its colour's rate; the gate looked at once a minute on the cumulative counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weightshift.evidence.sequential import log_e_value


@dataclass(frozen=True)
class Looks:
    """Per simulated stage (row) and minute (column), cumulative counts."""

    candidate_errors: np.ndarray
    stable_errors: np.ndarray
    candidate_requests: np.ndarray
    stable_requests: np.ndarray


def simulate_stages(
    p_candidate: float,
    p_stable: float,
    *,
    runs: int,
    minutes: int,
    rps: float,
    share: float,
    seed: int,
) -> Looks:
    """``runs`` stages with the candidate's and the stable colour's error rates."""
    rng = np.random.default_rng(seed)
    per_minute = rng.poisson(rps * 60, size=(runs, minutes))
    candidate = rng.binomial(per_minute, share)
    stable = per_minute - candidate
    errors_c = rng.binomial(candidate, p_candidate)
    errors_s = rng.binomial(stable, p_stable)
    return Looks(
        errors_c.cumsum(axis=1),
        errors_s.cumsum(axis=1),
        candidate.cumsum(axis=1),
        stable.cumsum(axis=1),
    )


def first_failures(looks: Looks, share: float, alpha: float) -> list[int | None]:
    """Per stage, the first look (minute, from 0) at which the gate fails the candidate
    (``sequential.compare_rates`` with margin 0: the e-value against equal rates reaches
    ``1/alpha`` with the candidate's share of the errors above its share of the traffic);
    None if it never does."""
    threshold = math.log(1 / alpha)
    firsts: list[int | None] = []
    for xs, ss in zip(looks.candidate_errors.tolist(), looks.stable_errors.tolist(), strict=True):
        found = None
        for minute, (x, s) in enumerate(zip(xs, ss, strict=True)):
            n = x + s
            if n and x / n > share and log_e_value(x, n, share) >= threshold:
                found = minute
                break
        firsts.append(found)
    return firsts
