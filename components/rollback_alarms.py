"""The candidate's alarms, for ``Rollback`` (``components/rollback.py``): what its
composite alarm combines.

Each alarm is a child of the ``Rollback`` component, named ``{name}-{suffix}`` and
``{model}-{stack}-{colour}-{suffix}`` in CloudWatch; their actions are off (the composite
alarm acts, not these).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from weightshift.config import RollbackConfig, Thresholds
from weightshift.gateway.metrics import NAMESPACE as GATEWAY_NAMESPACE
from weightshift.rollout import dead_man, rates
from weightshift.stages import Colour

NAMESPACE = GATEWAY_NAMESPACE
"""The gateway's metrics (``weightshift/gateway/metrics.py``): Model, Version, Colour."""
QUALITY_METRIC = "QualityScore"
ALB_NAMESPACE = "AWS/ApplicationELB"
SLOW_PERCENT = 1.0
"""p99 above the threshold is the same as more than 1 % of samples above it."""

Dimensions = Mapping[str, pulumi.Input[str]]


@dataclass(frozen=True)
class RollbackArgs:
    settings: RollbackConfig
    thresholds: Thresholds
    model: str
    stack: str
    candidate: Colour
    candidate_version: str
    active: bool
    """The candidate receives traffic (served or mirrored): alarm actions on."""
    stage_weights: Sequence[int]
    """The candidate's served plus mirrored weight at each stage (the function reads the
    stage off the listener with it)."""
    listener_arn: pulumi.Input[str]
    target_group_arns: Mapping[str, pulumi.Input[str]]
    """By target: blue, green, and mirror for shadow."""
    candidate_target_group_suffix: pulumi.Input[str]
    load_balancer_suffix: pulumi.Input[str]
    incident_bucket: pulumi.Input[str]
    incident_bucket_arn: pulumi.Input[str]
    incident_key_arn: pulumi.Input[str]
    record_parameter: str
    region: str
    partition: str
    account: pulumi.Input[str]


def metric_query(
    query_id: str,
    namespace: str,
    metric: str,
    dimensions: Dimensions,
    period: int,
    *,
    stat: str = "Sum",
) -> aws.cloudwatch.MetricAlarmMetricQueryArgs:
    """One metric's ``stat`` per ``period``, as a metric math input (not the alarm's value)."""
    return aws.cloudwatch.MetricAlarmMetricQueryArgs(
        id=query_id,
        metric=aws.cloudwatch.MetricAlarmMetricQueryMetricArgs(
            namespace=namespace,
            metric_name=metric,
            dimensions=dimensions,
            period=period,
            stat=stat,
        ),
        return_data=False,
    )


def slower_than(seconds: float) -> str:
    """The percentile-rank statistic: the percentage of samples above ``seconds``."""
    return f"PR({seconds:g}:)"


class CandidateAlarms:
    """Declares the candidate's MetricAlarms as children of ``parent`` (the ``Rollback``).

    From the candidate's gateways: ``errors``, ``errors-1m``, ``latency-p99``,
    ``latency-p99-1m``, ``quality``, ``safety``, ``no-heartbeat`` (the fast ones at
    10-second periods); from the load balancer: ``refused``, ``no-healthy-hosts``,
    ``no-answers``.
    """

    def __init__(self, name: str, args: RollbackArgs, parent: pulumi.Resource) -> None:
        self.name = name
        self.args = args
        self.settings = args.settings
        self.thresholds = args.thresholds
        self.prefix = f"{args.model}-{args.stack}-{args.candidate.value}"
        self.period = args.settings.period_seconds
        self.fast = args.settings.fast_period_seconds
        self.child = pulumi.ResourceOptions(parent=parent)
        self.alb: Dimensions = {
            "LoadBalancer": args.load_balancer_suffix,
            "TargetGroup": args.candidate_target_group_suffix,
        }
        # By colour, not version: the candidate colour's pods report under it whatever
        # bundle they run, so a rolling update of the candidate keeps its heartbeat and its
        # rates (weightshift/gateway/metrics.py sends both dimension sets).
        self.gateway: Dimensions = {"Model": args.model, "Colour": args.candidate.value}

    def create(self) -> list[aws.cloudwatch.MetricAlarm]:
        """Every alarm, in the order the composite alarm names them."""
        period, fast = self.period, self.fast
        return [
            # From the candidate's gateways: every fast period (10 s) for a quick verdict at
            # high traffic, and every minute, where a canary's share of a quiet service
            # gathers enough requests to judge.
            self._errors("errors", fast),
            self._errors("errors-1m", period),
            self._slow("latency-p99", fast),
            self._slow("latency-p99-1m", period),
            self._quality(),
            self._safety(),
            self._no_heartbeat(),
            # What only the load balancer sees.
            self._refused(),
            self._no_healthy_hosts(),
            self._dead_man(),
        ]

    def _alarm(self, suffix: str, description: str, **kwargs: Any) -> aws.cloudwatch.MetricAlarm:
        return aws.cloudwatch.MetricAlarm(
            f"{self.name}-{suffix}",
            name=f"{self.prefix}-{suffix}",
            alarm_description=description,
            period=kwargs.pop("period", self.period),
            actions_enabled=False,  # the composite alarm acts, not these
            opts=self.child,
            **kwargs,
        )

    def _above(
        self,
        suffix: str,
        description: str,
        threshold: float,
        verdict: aws.cloudwatch.MetricAlarmMetricQueryArgs,
        *inputs: aws.cloudwatch.MetricAlarmMetricQueryArgs,
    ) -> aws.cloudwatch.MetricAlarm:
        """``verdict`` (metric math over ``inputs``) above ``threshold`` in one period;
        a period without data is no verdict."""
        return self._alarm(
            suffix,
            description,
            comparison_operator="GreaterThanThreshold",
            threshold=threshold,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data="notBreaching",
            period=None,
            metric_queries=[verdict, *inputs],
        )

    def _rate(
        self,
        suffix: str,
        description: str,
        *,
        events: tuple[str, str, Dimensions],
        requests: tuple[str, str, Dimensions],
        every: int,
        threshold: float,
    ) -> aws.cloudwatch.MetricAlarm:
        """``events`` per ``requests`` (namespace, metric, dimensions), in percent, on
        enough evidence (``weightshift/rollout/rates.py``)."""
        settings = self.settings
        return self._above(
            suffix,
            description,
            threshold,
            aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id="rate",
                expression=rates.expression(
                    "events", "requests", settings.min_requests, settings.min_errors
                ),
                label=f"{suffix} percent",
                return_data=True,
            ),
            metric_query("events", *events, every),
            metric_query("requests", *requests, every),
        )

    def _slow(self, suffix: str, every: int) -> aws.cloudwatch.MetricAlarm:
        """p99 time to first token above the threshold: more than 1 % of the period's
        samples above it (percentile rank), on enough evidence. CloudWatch's own p99
        alarm is judged only over 1,000 samples a period (10/(1-0.99)), which a canary's
        share of traffic never reaches in 10 s, and over fewer is a few requests'
        slowest."""
        settings, gateway = self.settings, self.gateway
        limit = self.thresholds.latency_p99_seconds
        return self._above(
            suffix,
            f"p99 time to first token above {limit:g} s (more than {SLOW_PERCENT:g} % of "
            f"first tokens slower, at least {settings.min_errors} of "
            f"{settings.min_requests}) over {every} s",
            SLOW_PERCENT,
            aws.cloudwatch.MetricAlarmMetricQueryArgs(
                id="slow",
                expression=rates.percent_expression(
                    "above", "samples", settings.min_requests, settings.min_errors
                ),
                label="percent of first tokens slower than the threshold",
                return_data=True,
            ),
            metric_query(
                "above", NAMESPACE, "TimeToFirstToken", gateway, every, stat=slower_than(limit)
            ),
            metric_query(
                "samples", NAMESPACE, "TimeToFirstToken", gateway, every, stat="SampleCount"
            ),
        )

    def _errors(self, suffix: str, every: int) -> aws.cloudwatch.MetricAlarm:
        settings, thresholds = self.settings, self.thresholds
        return self._rate(
            suffix,
            f"answers failed (5xx, timeouts, upstream down) above "
            f"{thresholds.error_rate_percent} % of requests (at least "
            f"{settings.min_errors} of {settings.min_requests}) over {every} s",
            events=(NAMESPACE, "Errors", self.gateway),
            requests=(NAMESPACE, "Requests", self.gateway),
            every=every,
            threshold=thresholds.error_rate_percent,
        )

    def _quality(self) -> aws.cloudwatch.MetricAlarm:
        settings, thresholds, gateway = self.settings, self.thresholds, self.gateway
        return self._alarm(
            "quality",
            f"user feedback (quality score) below {thresholds.min_quality_score} over "
            f"minutes with at least {settings.min_feedback} scores",
            comparison_operator="LessThanThreshold",
            threshold=thresholds.min_quality_score,
            evaluation_periods=settings.quality_minutes,
            datapoints_to_alarm=min(2, settings.quality_minutes),
            treat_missing_data="notBreaching",
            period=None,
            metric_queries=[
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="quality",
                    # Too few scores: judged as a perfect minute (1), never a breach.
                    expression=rates.mean_expression("score", "scores", settings.min_feedback, 1.0),
                    label="mean feedback score",
                    return_data=True,
                ),
                # Feedback may reach either colour's pod: it names the colour only.
                metric_query(
                    "score", NAMESPACE, QUALITY_METRIC, gateway, self.period, stat="Average"
                ),
                metric_query(
                    "scores", NAMESPACE, QUALITY_METRIC, gateway, self.period, stat="SampleCount"
                ),
            ],
        )

    def _safety(self) -> aws.cloudwatch.MetricAlarm:
        limit = self.thresholds.max_safety_violation_percent
        return self._rate(
            "safety",
            f"answers blocked by output moderation above {limit} % of requests",
            events=(NAMESPACE, "OutputBlocks", self.gateway),
            requests=(NAMESPACE, "Requests", self.gateway),
            every=self.period,
            threshold=limit,
        )

    def _no_heartbeat(self) -> aws.cloudwatch.MetricAlarm:
        periods = self.settings.heartbeat_periods
        return self._alarm(
            "no-heartbeat",
            f"dead man's switch: no candidate gateway reported for {periods * self.fast} s",
            namespace=NAMESPACE,
            metric_name="Heartbeat",
            dimensions=self.gateway,
            statistic="Sum",
            period=self.fast,
            comparison_operator="LessThanThreshold",
            threshold=1,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            # Every gateway reports every period from stage 0 on, zeros included: silence
            # means the gateways are gone, never that traffic is low.
            treat_missing_data="breaching",
        )

    def _refused(self) -> aws.cloudwatch.MetricAlarm:
        limit = self.thresholds.error_rate_percent
        return self._rate(
            "refused",
            f"connections the candidate refused above {limit} % of requests",
            events=(ALB_NAMESPACE, "TargetConnectionErrorCount", self.alb),
            requests=(ALB_NAMESPACE, "RequestCount", self.alb),
            every=self.period,
            threshold=limit,
        )

    def _no_healthy_hosts(self) -> aws.cloudwatch.MetricAlarm:
        return self._alarm(
            "no-healthy-hosts",
            "dead man's switch: no healthy candidate target (none registered is missing "
            "data, a breach)",
            namespace=ALB_NAMESPACE,
            metric_name="HealthyHostCount",
            dimensions=self.alb,
            statistic="Minimum",
            comparison_operator="LessThanThreshold",
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data="breaching",
        )

    def _dead_man(self) -> aws.cloudwatch.MetricAlarm:
        """The dead man's switch (``weightshift/rollout/dead_man.py``): requests the ALB sent the
        candidate over the window, against the answers its targets gave. It reads only what
        the candidate was sent, so it is the same at every stage and cannot fire on the
        update that first gives the candidate weight."""
        window = self.settings.dead_man_minutes * 60
        minimum = self.settings.dead_man_requests
        alb = self.alb
        return self._alarm(
            "no-answers",
            f"dead man's switch: {minimum} or more requests reached the candidate within "
            f"{self.settings.dead_man_minutes} min and none was answered",
            comparison_operator="GreaterThanOrEqualToThreshold",
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data="notBreaching",
            period=None,
            metric_queries=[
                aws.cloudwatch.MetricAlarmMetricQueryArgs(
                    id="silent",
                    expression=dead_man.expression(minimum, "asked", dead_man.ANSWER_QUERY_IDS),
                    label="requests sent, none answered",
                    return_data=True,
                ),
                metric_query("asked", ALB_NAMESPACE, "RequestCount", alb, window),
                *[
                    metric_query(
                        query_id, ALB_NAMESPACE, f"HTTPCode_Target_{cls}_Count", alb, window
                    )
                    for query_id, cls in zip(
                        dead_man.ANSWER_QUERY_IDS, dead_man.ANSWER_CLASSES, strict=True
                    )
                ],
            ],
        )
