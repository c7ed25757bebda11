"""How many requests a stage needs before its gate can see a regression.

A regression is a rate going from ``baseline`` to ``baseline + regression`` per request: the
error rate, or for latency the share of requests whose first token is slower than the
threshold (the stable colour's p99 makes that share 1 %: ``baseline 0.01``), which is what
the latency alarm and the stage gate count.

- ``fixed_horizon``: the classical one-sided two-proportion z-test's requests per arm at
  ``confidence`` and ``power`` (Fleiss, Levin and Paik, *Statistical Methods for Rates and
  Proportions*, 3rd ed., eq. (4.14) without continuity correction). Valid for one look, at
  that count, decided in advance.
- ``sequential``: the same regression detected by ``sequential.compare_rates`` (margin 0),
  which may be looked at after every request; its requests per arm at ``power`` are found
  by simulation (seeded, so the answer is reproducible), since anytime validity is bought
  with a sample larger than the fixed horizon's.
- ``minimum_duration``: at a request rate and the candidate's share, the time until the
  smaller arm has that many requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from weightshift.evidence.sequential import DEFAULT_CONCENTRATION


@dataclass(frozen=True)
class Regression:
    baseline: float
    """The stable colour's rate per request."""
    regression: float
    """How much higher the candidate's rate is (absolute)."""
    confidence: float = 0.95
    power: float = 0.8

    def __post_init__(self) -> None:
        checks = {
            "baseline": 0 < self.baseline < 1,
            "regression": 0 < self.regression < 1 - self.baseline,
            "confidence": 0.5 <= self.confidence < 1,
            "power": 0.5 <= self.power < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} {getattr(self, name)} is out of range: {_RANGES[name]}")

    @property
    def candidate(self) -> float:
        return self.baseline + self.regression


_RANGES = {
    "baseline": "a rate per request, above 0 and below 1 (0.01 is 1 %)",
    "regression": "an absolute increase above 0 that keeps baseline + regression below 1",
    "confidence": "at least 0.5 and below 1 (0.95 is 95 %)",
    "power": "at least 0.5 and below 1 (0.8 is 80 %)",
}


def fixed_horizon(question: Regression) -> int:
    """Requests per arm for a one-sided two-proportion z-test."""
    p1, p2 = question.baseline, question.candidate
    mean = (p1 + p2) / 2
    normal = NormalDist()
    z_alpha = normal.inv_cdf(question.confidence)
    z_beta = normal.inv_cdf(question.power)
    spread = z_alpha * math.sqrt(2 * mean * (1 - mean)) + z_beta * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2)
    )
    return math.ceil(spread**2 / (p2 - p1) ** 2)


def sequential(
    question: Regression,
    *,
    runs: int = 2000,
    seed: int = 20221214,
    concentration: float = DEFAULT_CONCENTRATION,
) -> int:
    """Requests per arm (equal shares) by which the anytime-valid test has failed the
    candidate in ``power`` of ``runs`` simulated stages."""
    p1, p2 = question.baseline, question.candidate
    rho0 = 0.5
    # Each event lands on the candidate with this probability under the regression.
    rho1 = p2 / (p1 + p2)
    events = _events_to_detect(
        rho0,
        rho1,
        alpha=1 - question.confidence,
        power=question.power,
        runs=runs,
        seed=seed,
        concentration=concentration,
    )
    # Events arrive at (p1 + p2) / 2 per request; each arm gets half of the requests.
    return math.ceil(events / ((p1 + p2) / 2) / 2)


def _events_to_detect(
    rho0: float,
    rho1: float,
    *,
    alpha: float,
    power: float,
    runs: int,
    seed: int,
    concentration: float,
) -> int:
    """The ``power`` quantile of the event count at which the e-value against ``rho0``
    first reaches ``1/alpha`` with the candidate's share above ``rho0`` (the confidence
    sequence's lower bound above it), over ``runs`` streams of Bernoulli(``rho1``) events."""
    rng = np.random.default_rng(seed)
    a, b = concentration * rho0, concentration * (1 - rho0)
    threshold = math.log(1 / alpha)
    horizon = 1024
    while True:
        draws = rng.random((runs, horizon)) < rho1
        candidate = np.cumsum(draws, axis=1)
        before: np.ndarray = candidate - draws  # candidate events before this one
        index = np.arange(horizon)
        step = np.where(
            draws,
            np.log((a + before) / (a + b + index)),
            np.log((b + index - before) / (a + b + index)),
        )
        log_mixture = np.cumsum(step, axis=1)
        count = index + 1
        log_null = candidate * math.log(rho0) + (count - candidate) * math.log(1 - rho0)
        detected = (log_mixture - log_null >= threshold) & (candidate > rho0 * count)
        first = np.where(detected.any(axis=1), detected.argmax(axis=1) + 1, horizon * 10)
        needed = float(np.quantile(first, power, method="higher"))
        if needed <= horizon:
            return int(needed)
        if horizon >= 1 << 22:
            raise ValueError("the regression is too small to detect within 4 million events")
        horizon *= 4


def minimum_duration(requests_per_arm: int, *, rps: float, share: float) -> float:
    """Seconds until the smaller arm has ``requests_per_arm`` requests, at ``rps`` requests
    per second in all and the candidate's ``share`` of them."""
    if rps <= 0:
        raise ValueError(f"the request rate must be above 0, got {rps}")
    if not 0 < share < 1:
        raise ValueError(f"the candidate's share must be between 0 and 1, got {share}")
    return requests_per_arm / (rps * min(share, 1 - share))
