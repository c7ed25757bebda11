"""Time to restore: from the first bad request to all traffic back on the stable colour.

Reads the alarms of the synthesized prod stack (at a stage where the candidate has traffic)
and adds what happens after a request goes wrong. What the synthesized alarms fix is exact
arithmetic (periods, datapoints needed); what AWS does in between cannot be measured without
an account, so it is stated as assumptions (flags) and printed beside the result.

Two kinds of signal:
- the candidate's gateways (namespace ``weightshift``): a bad request is counted in the
  gateway's current interval (``--interval``, 10 s), sent when it closes (``--put``), and
  usable by an alarm a few seconds later (``--hires-delay``); high-resolution alarms of a
  10-second period are evaluated every 10 seconds;
- the load balancer (``AWS/ApplicationELB``): one-minute datapoints, delivered about
  ``--alb-delay`` after their minute closes, alarms evaluated every minute.

Usage: python scripts/restore_time.py [--stage 2] [--interval 10] ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightshift.preview.synth import synthesize_stack

PROJECT = Path(__file__).resolve().parent.parent
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
TARGET_SECONDS = 45


def period_of(inputs: dict[str, Any]) -> int:
    if inputs.get("period"):
        return int(inputs["period"])
    periods = [q["metric"]["period"] for q in inputs.get("metricQueries", []) if q.get("metric")]
    return int(max(periods))


def namespace_of(inputs: dict[str, Any]) -> str:
    if inputs.get("namespace"):
        return str(inputs["namespace"])
    return str(next(q["metric"]["namespace"] for q in inputs["metricQueries"] if q.get("metric")))


def window(
    period: int, needs: int, *, interval: float, delivery: float, evaluation: float
) -> tuple[float, float]:
    """Best and worst seconds from the first bad request to the alarm's ALARM state.

    The bad request lands in a collection interval that closes at most ``interval`` later
    (best: at once); ``needs`` datapoints of ``period`` must then be bad, which takes
    ``needs - 1`` more periods (and the rest of a period longer than the interval, so that a
    whole window is bad); the last is usable ``delivery`` later and evaluated within
    ``evaluation`` (best: at once)."""
    fill = (needs - 1) * period + max(0.0, period - interval)
    best = fill + delivery
    worst = interval + fill + delivery + evaluation
    return best, worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, default=2, help="a stage with candidate traffic")
    parser.add_argument("--interval", type=float, default=10, help="gateway metric interval")
    parser.add_argument("--put", type=float, default=1, help="gateway PutMetricData call")
    parser.add_argument(
        "--hires-delay",
        type=float,
        default=5,
        help="seconds until a high-resolution datapoint can be evaluated",
    )
    parser.add_argument(
        "--alb-delay",
        type=float,
        default=30,
        help="seconds from the end of a minute until its ALB datapoint is in CloudWatch",
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
        f"stack prod at stage {args.stage}: {len(alarms)} alarms, timed from the first bad "
        f"request. After the alarm: composite {args.composite:g} s + invoke {args.invoke:g} s "
        f"+ function {args.function:g} s + listener propagation {args.propagation:g} s = "
        f"{after:g} s. Gateway metrics: {args.interval:g} s interval, {args.put:g} s to send, "
        f"{args.hires_delay:g} s until usable; ALB metrics: 60 s, {args.alb_delay:g} s late."
    )
    print(f"{'alarm':<46} {'source':<8} {'period':>6} {'needs':>5}   best  worst (s)")
    fast: list[float] = []
    minute: list[float] = []
    heartbeat: list[float] = []
    for alarm in sorted(alarms, key=lambda r: r.name):
        inputs = alarm.inputs
        period = period_of(inputs)
        needs = int(inputs.get("datapointsToAlarm") or inputs["evaluationPeriods"])
        gateway = namespace_of(inputs) == "weightshift"
        best, worst = window(
            period,
            needs,
            interval=args.interval if gateway else 60.0,
            delivery=args.put + args.hires_delay if gateway else args.alb_delay,
            evaluation=min(period, 60) if gateway else 60.0,
        )
        best, worst = best + after, worst + after
        if inputs["name"].endswith("-no-heartbeat"):
            heartbeat.append(worst)  # no bad request: the gateways went silent
        elif gateway and period <= args.interval:
            fast.append(worst)
        elif gateway and inputs["name"].endswith("-1m"):
            minute.append(worst)
        print(
            f"{inputs['name']:<46} {'gateway' if gateway else 'ALB':<8} {period:>6} "
            f"{needs:>5} {best:>6.0f} {worst:>6.0f}"
        )
    slowest = max(fast)
    print(
        f"Fast gateway alarms (10-second periods: errors, p99 time to first token): worst "
        f"{slowest:.0f} s from the first bad request (target <= {TARGET_SECONDS} s: "
        f"{'met' if slowest <= TARGET_SECONDS else 'NOT met'}), where the candidate gets at "
        "least rollback.minRequests requests in 10 s; below that their one-minute twins judge, "
        f"worst {max(minute):.0f} s. Heartbeat (every candidate gateway silent): worst "
        f"{max(heartbeat):.0f} s from its last report. Load-balancer alarms keep their "
        "one-minute cadence: they cover what only the ALB sees (no healthy or no answering "
        "target, refused connections)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
