"""Time to restore: from the first bad minute to all traffic back on the stable colour.

Reads the alarms of the synthesized prod stack (at a stage where the candidate has
traffic) and adds the steps after detection. Detection is exact arithmetic on the
synthesized alarms (datapoints needed x period); the other steps are AWS behaviour that
cannot be measured without an account, so they are stated as assumptions (flags) and
printed beside the result.

Usage: python scripts/restore_time.py [--stage 2] [--publish-delay 30] ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightshift.synth import synthesize_stack

PROJECT = Path(__file__).resolve().parent.parent
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"


def period_of(inputs: dict[str, Any]) -> int:
    if inputs.get("period"):
        return int(inputs["period"])
    periods = [q["metric"]["period"] for q in inputs.get("metricQueries", []) if q.get("metric")]
    return int(max(periods))


def verdict(seconds: float) -> str:
    return "met" if seconds <= 90 else "NOT met"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, default=2, help="a stage with candidate traffic")
    parser.add_argument(
        "--publish-delay",
        type=float,
        default=30,
        help="seconds from the end of a minute until its ALB datapoint is in CloudWatch",
    )
    parser.add_argument(
        "--evaluation-interval",
        type=float,
        default=60,
        help="CloudWatch evaluates standard-resolution alarms about once a minute",
    )
    parser.add_argument("--composite", type=float, default=2, help="child ALARM to composite")
    parser.add_argument("--invoke", type=float, default=2, help="alarm action to handler start")
    parser.add_argument("--function", type=float, default=2, help="handler: describe + modify")
    parser.add_argument(
        "--propagation", type=float, default=5, help="ModifyListener until every ALB node applies"
    )
    args = parser.parse_args()
    graph = synthesize_stack(PROJECT, "prod", [f"rollout.stage={args.stage}"])
    alarms = [r for r in graph.resources if r.type == ALARM]
    after = args.composite + args.invoke + args.function + args.propagation
    print(
        f"stack prod at stage {args.stage}: {len(alarms)} alarms; after detection: composite "
        f"{args.composite:g} s + invoke {args.invoke:g} s + function {args.function:g} s + "
        f"listener propagation {args.propagation:g} s = {after:g} s"
    )
    print(f"{'alarm':<46} {'period':>6} {'needs':>5}   best  typical  worst (s)")
    rows = []
    for alarm in sorted(alarms, key=lambda r: r.name):
        inputs = alarm.inputs
        period = period_of(inputs)
        needs = int(inputs.get("datapointsToAlarm") or inputs["evaluationPeriods"])
        # The first bad minute's datapoint closes it; (needs - 1) more periods must close.
        # A datapoint over a window longer than a minute (the dead man's switch: no answer at
        # all in it) is bad only once the whole window is: (period - 60) s more.
        detect = (needs - 1) * period + (period - 60) + args.publish_delay
        best = detect + after
        worst = detect + args.evaluation_interval + after
        typical = detect + args.evaluation_interval / 2 + after
        rows.append((inputs["name"], best, worst, typical))
        print(
            f"{inputs['name']:<46} {period:>6} {needs:>5} {best:>6.0f} {typical:>8.0f} "
            f"{worst:>6.0f}"
        )
    fast = [r for r in rows if r[0].endswith(("-errors", "-latency-p99", "-no-healthy-hosts"))]
    worst_fast = max(r[2] for r in fast)
    typical_fast = max(r[3] for r in fast)
    print(
        f"ALB-metric alarms (errors, p99 latency, no healthy host), from the end of the first "
        f"bad minute: best {min(r[1] for r in fast):.0f} s, typical {typical_fast:.0f} s, worst "
        f"{worst_fast:.0f} s (target <= 90 s: typical "
        f"{verdict(typical_fast)}, worst {verdict(worst_fast)})."
        " Counting from the first bad request instead adds up to one period (60 s)."
    )
    silent = next((r for r in rows if r[0].endswith("-no-answers")), None)
    if silent is not None:
        print(
            f"Dead man's switch (no answer at all, e.g. hung targets): worst {silent[2]:.0f} s "
            "from the end of the first minute without an answer, once its window holds "
            "deadManRequests requests sent to the candidate (with less traffic it waits for "
            "that evidence; a candidate that never answered trips as soon as it has been sent "
            "that many). A target that dies outright fails its health checks first "
            "(no-healthy-hosts)."
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
