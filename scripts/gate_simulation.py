"""What the stage gate's anytime-valid test buys, by simulation, beside the alternative.

A canary stage at a given request rate and candidate share, looked at every minute:
- with no difference between the colours, the share of stages the gate fails (the anytime-
  valid test, ``weightshift/evidence/sequential.py``), beside a fixed-horizon one-sided
  z-test re-run at every look (what a tool that tests on every interval does);
- with the candidate's error rate doubled, how many candidate requests the gate needs to fail
  the stage (median and 80th percentile), and the share of stages it fails at all.

Usage: python scripts/gate_simulation.py [--rps 20] [--share 0.01] [--minutes 240]
       [--baseline 0.01] [--runs 400]
"""

from __future__ import annotations

import argparse
from statistics import NormalDist

import numpy as np

from weightshift.evidence.simulation import Looks, first_failures, simulate_stages

ALPHA = 0.05


def naive_fails(looks: Looks) -> float:
    """A one-sided two-proportion z-test at 95 %, re-run at every look."""
    errors_c, errors_s = looks.candidate_errors, looks.stable_errors
    req_c, req_s = looks.candidate_requests, looks.stable_requests
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_c, rate_s = errors_c / req_c, errors_s / req_s
        pooled = (errors_c + errors_s) / (req_c + req_s)
        z = (rate_c - rate_s) / np.sqrt(pooled * (1 - pooled) * (1 / req_c + 1 / req_s))
    critical = NormalDist().inv_cdf(1 - ALPHA)
    return float(np.mean(np.nan_to_num(z, nan=0.0).max(axis=1) > critical))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=20.0)
    parser.add_argument("--share", type=float, default=0.01)
    parser.add_argument("--minutes", type=int, default=240)
    parser.add_argument("--baseline", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    print(
        f"stage: {args.share:.0%} of {args.rps:g} requests/s for {args.minutes} min, looked at "
        f"every minute; stable error rate {args.baseline:.2%}; {args.runs} stages each"
    )
    stage = {"runs": args.runs, "minutes": args.minutes, "rps": args.rps, "share": args.share}
    same = simulate_stages(args.baseline, args.baseline, seed=1, **stage)
    anytime = np.mean([f is not None for f in first_failures(same, args.share, ALPHA)])
    print(
        f"no difference: stages failed, anytime-valid test {anytime:.1%} (bound {ALPHA:.0%}); "
        f"z-test at every look {naive_fails(same):.1%}"
    )
    worse = simulate_stages(2 * args.baseline, args.baseline, seed=2, **stage)
    firsts = first_failures(worse, args.share, ALPHA)
    caught = [int(worse.candidate_requests[i, m]) for i, m in enumerate(firsts) if m is not None]
    if caught:
        median, p80 = np.percentile(caught, [50, 80])
        print(
            f"doubled error rate: {len(caught) / args.runs:.0%} of stages failed; candidate "
            f"requests to fail: median {median:,.0f}, 80th percentile {p80:,.0f} (minutes: "
            f"median {np.median([m for m in firsts if m is not None]) + 1:.0f})"
        )
    else:
        print("doubled error rate: no stage failed")


if __name__ == "__main__":
    main()
