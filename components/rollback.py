"""Automated rollback of the candidate colour: alarms, a composite alarm, the function it
invokes, and the on-call topic."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from components.iam import allow, policy_document, service_trust
from weightshift.config import RollbackConfig, Thresholds
from weightshift.gateway.metrics import NAMESPACE as GATEWAY_NAMESPACE
from weightshift.lambdas.rollback import page_marker
from weightshift.rollout import dead_man, rates
from weightshift.rollout.record import composite_alarm_name
from weightshift.rollout.stages import Colour

FUNCTION_SOURCE = Path(__file__).resolve().parent.parent / "weightshift" / "lambdas" / "rollback.py"
NAMESPACE = GATEWAY_NAMESPACE
"""The gateway's metrics (``weightshift/gateway/metrics.py``): Model, Version, Colour."""
QUALITY_METRIC = "QualityScore"
ALB_NAMESPACE = "AWS/ApplicationELB"
ALARM_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"


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
    dimensions: Mapping[str, pulumi.Input[str]],
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


SLOW_PERCENT = 1.0
"""p99 above the threshold is the same as more than 1 % of samples above it."""


def function_policy(
    *,
    listener_arn: str,
    parameter_arn: str,
    incident_objects: str,
    incident_key_arn: str,
    topic_arn: str,
    topic_key_arn: str,
    log_group_arn: str,
) -> str:
    """Exactly what the function does, on exactly its own resources."""
    return policy_document(
        [
            # Describe calls support no resource-level permissions; it only reads weights.
            allow("ReadWeights", ["elasticloadbalancing:DescribeListeners"], ["*"]),
            allow("SendTrafficToStable", ["elasticloadbalancing:ModifyListener"], [listener_arn]),
            allow("RollbackRecord", ["ssm:PutParameter", "ssm:GetParameter"], [parameter_arn]),
            # One conditional marker per incident claims its page (lambdas/rollback.py).
            allow(
                "PageClaim",
                ["ssm:PutParameter", "ssm:DeleteParameter"],
                [page_marker(parameter_arn, "*")],
            ),
            allow("IncidentRecord", ["s3:PutObject"], [incident_objects]),
            {
                **allow(
                    "EncryptIncidentRecord",
                    ["kms:GenerateDataKey", "kms:Decrypt"],
                    [incident_key_arn],
                ),
                "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
            },
            allow("PageOnCall", ["sns:Publish"], [topic_arn]),
            allow("EncryptPage", ["kms:GenerateDataKey", "kms:Decrypt"], [topic_key_arn]),
            allow("Logs", ["logs:CreateLogStream", "logs:PutLogEvents"], [f"{log_group_arn}:*"]),
        ]
    )


def topic_key_policy(account: str, partition: str) -> str:
    """The on-call topic's key: administered by the account; CloudWatch may use it to
    publish alarm notifications from this account only."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "AccountAdministers",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                },
                {
                    "Sid": "CloudWatchPublishes",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudwatch.amazonaws.com"},
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
                    "Resource": "*",
                    "Condition": {"StringEquals": {"aws:SourceAccount": account}},
                },
            ],
        },
        sort_keys=True,
    )


def topic_policy(topic_arn: str, account: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "CloudWatchAlarmsOfThisAccount",
                    "Effect": "Allow",
                    "Principal": {"Service": "cloudwatch.amazonaws.com"},
                    "Action": "sns:Publish",
                    "Resource": topic_arn,
                    "Condition": {"StringEquals": {"aws:SourceAccount": account}},
                },
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": ["sns:Publish", "sns:Subscribe", "sns:Receive"],
                    "Resource": topic_arn,
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                },
            ],
        },
        sort_keys=True,
    )


class Rollback(pulumi.ComponentResource):
    """Alarms on the candidate, a composite alarm over them that invokes the rollback
    function and pages on-call, and the function itself.

    Children: ``{name}-errors``, ``{name}-errors-1m``, ``{name}-latency-p99``,
    ``{name}-latency-p99-1m``, ``{name}-quality``, ``{name}-safety``, ``{name}-no-heartbeat``
    (the candidate's gateways' metrics, the fast ones at 10-second periods),
    ``{name}-refused``, ``{name}-no-healthy-hosts``, ``{name}-no-answers`` (the load
    balancer's) MetricAlarms;
    ``{name}`` CompositeAlarm; ``{name}-on-call`` KMS Key, Topic, TopicPolicy and
    subscriptions; ``{name}-function`` Role, RolePolicy, LogGroup, Function and Permission.
    """

    composite_alarm_name: pulumi.Output[str]
    alarm_names: list[pulumi.Output[str]]
    function_name: pulumi.Output[str]
    topic_arn: pulumi.Output[str]
    settings: pulumi.Output[dict[str, str]]
    """The function's environment: `weightshift rollout abort` acts with the same settings."""

    def __init__(
        self, name: str, args: RollbackArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:Rollback", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        prefix = f"{args.model}-{args.stack}-{args.candidate.value}"
        period = args.settings.period_seconds
        thresholds = args.thresholds
        alb = {
            "LoadBalancer": args.load_balancer_suffix,
            "TargetGroup": args.candidate_target_group_suffix,
        }

        def alarm(suffix: str, description: str, **kwargs: Any) -> aws.cloudwatch.MetricAlarm:
            return aws.cloudwatch.MetricAlarm(
                f"{name}-{suffix}",
                name=f"{prefix}-{suffix}",
                alarm_description=description,
                period=kwargs.pop("period", period),
                actions_enabled=False,  # the composite alarm acts, not these
                opts=child,
                **kwargs,
            )

        settings = args.settings
        fast = settings.fast_period_seconds
        # By colour, not version: the candidate colour's pods report under it whatever
        # bundle they run, so a rolling update of the candidate keeps its heartbeat and its
        # rates (weightshift/gateway/metrics.py sends both dimension sets).
        gateway = {"Model": args.model, "Colour": args.candidate.value}

        def above(
            suffix: str,
            description: str,
            threshold: float,
            verdict: aws.cloudwatch.MetricAlarmMetricQueryArgs,
            *inputs: aws.cloudwatch.MetricAlarmMetricQueryArgs,
        ) -> aws.cloudwatch.MetricAlarm:
            """``verdict`` (metric math over ``inputs``) above ``threshold`` in one period;
            a period without data is no verdict."""
            return alarm(
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

        def rate_alarm(
            suffix: str,
            description: str,
            *,
            events: tuple[str, str, Mapping[str, pulumi.Input[str]]],
            requests: tuple[str, str, Mapping[str, pulumi.Input[str]]],
            every: int,
            threshold: float,
        ) -> aws.cloudwatch.MetricAlarm:
            """``events`` per ``requests`` (namespace, metric, dimensions), in percent, on
            enough evidence (``weightshift/rollout/rates.py``)."""
            return above(
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

        def slow_alarm(suffix: str, every: int) -> aws.cloudwatch.MetricAlarm:
            """p99 time to first token above the threshold: more than 1 % of the period's
            samples above it (percentile rank), on enough evidence. CloudWatch's own p99
            alarm is judged only over 1,000 samples a period (10/(1-0.99)), which a canary's
            share of traffic never reaches in 10 s, and over fewer is a few requests'
            slowest."""
            limit = thresholds.latency_p99_seconds
            return above(
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

        def error_alarm(suffix: str, every: int) -> aws.cloudwatch.MetricAlarm:
            return rate_alarm(
                suffix,
                f"answers failed (5xx, timeouts, upstream down) above "
                f"{thresholds.error_rate_percent} % of requests (at least "
                f"{settings.min_errors} of {settings.min_requests}) over {every} s",
                events=(NAMESPACE, "Errors", gateway),
                requests=(NAMESPACE, "Requests", gateway),
                every=every,
                threshold=thresholds.error_rate_percent,
            )

        alarms = [
            # From the candidate's gateways: every fast period (10 s) for a quick verdict at
            # high traffic, and every minute, where a canary's share of a quiet service
            # gathers enough requests to judge.
            error_alarm("errors", fast),
            error_alarm("errors-1m", period),
            slow_alarm("latency-p99", fast),
            slow_alarm("latency-p99-1m", period),
            alarm(
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
                        expression=rates.mean_expression(
                            "score", "scores", settings.min_feedback, 1.0
                        ),
                        label="mean feedback score",
                        return_data=True,
                    ),
                    # Feedback may reach either colour's pod: it names the colour only.
                    metric_query(
                        "score", NAMESPACE, QUALITY_METRIC, gateway, period, stat="Average"
                    ),
                    metric_query(
                        "scores", NAMESPACE, QUALITY_METRIC, gateway, period, stat="SampleCount"
                    ),
                ],
            ),
            rate_alarm(
                "safety",
                f"answers blocked by output moderation above "
                f"{thresholds.max_safety_violation_percent} % of requests",
                events=(NAMESPACE, "OutputBlocks", gateway),
                requests=(NAMESPACE, "Requests", gateway),
                every=period,
                threshold=thresholds.max_safety_violation_percent,
            ),
            alarm(
                "no-heartbeat",
                f"dead man's switch: no candidate gateway reported for "
                f"{settings.heartbeat_periods * fast} s",
                namespace=NAMESPACE,
                metric_name="Heartbeat",
                dimensions=gateway,
                statistic="Sum",
                period=fast,
                comparison_operator="LessThanThreshold",
                threshold=1,
                evaluation_periods=settings.heartbeat_periods,
                datapoints_to_alarm=settings.heartbeat_periods,
                # Every gateway reports every period from stage 0 on, zeros included: silence
                # means the gateways are gone, never that traffic is low.
                treat_missing_data="breaching",
            ),
            # What only the load balancer sees.
            rate_alarm(
                "refused",
                f"connections the candidate refused above {thresholds.error_rate_percent} % "
                "of requests",
                events=(ALB_NAMESPACE, "TargetConnectionErrorCount", alb),
                requests=(ALB_NAMESPACE, "RequestCount", alb),
                every=period,
                threshold=thresholds.error_rate_percent,
            ),
            alarm(
                "no-healthy-hosts",
                "dead man's switch: no healthy candidate target (none registered is missing "
                "data, a breach)",
                namespace=ALB_NAMESPACE,
                metric_name="HealthyHostCount",
                dimensions=alb,
                statistic="Minimum",
                comparison_operator="LessThanThreshold",
                threshold=1,
                evaluation_periods=1,
                datapoints_to_alarm=1,
                treat_missing_data="breaching",
            ),
            self._dead_man(name, args, alarm, alb),
        ]

        key = aws.kms.Key(
            f"{name}-on-call",
            description=f"{prefix} on-call topic",
            enable_key_rotation=True,
            deletion_window_in_days=30,
            policy=pulumi.Output.from_input(args.account).apply(
                lambda account: topic_key_policy(account, args.partition)
            ),
            opts=child,
        )
        topic = aws.sns.Topic(
            f"{name}-on-call", name=f"{prefix}-on-call", kms_master_key_id=key.arn, opts=child
        )
        aws.sns.TopicPolicy(
            f"{name}-on-call",
            arn=topic.arn,
            policy=pulumi.Output.all(topic.arn, args.account).apply(
                lambda values: topic_policy(values[0], values[1])
            ),
            opts=child,
        )
        for index, endpoint in enumerate(args.settings.on_call):
            aws.sns.TopicSubscription(
                f"{name}-on-call-{index}",
                topic=topic.arn,
                protocol="email" if "@" in endpoint else "https",
                endpoint=endpoint,
                opts=child,
            )

        function_name = f"{prefix}-rollback"[:64]
        logs = aws.cloudwatch.LogGroup(
            f"{name}-function",
            name=f"/aws/lambda/{function_name}",
            retention_in_days=args.settings.log_retention_days,
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-function",
            assume_role_policy=service_trust("lambda.amazonaws.com"),
            opts=child,
        )
        parameter_arn = pulumi.Output.from_input(args.account).apply(
            lambda account: (
                f"arn:{args.partition}:ssm:{args.region}:{account}:parameter{args.record_parameter}"
            )
        )
        incident_prefix = f"incidents/{args.model}/{args.stack}"
        policy = aws.iam.RolePolicy(
            f"{name}-function",
            role=role.id,
            policy=pulumi.Output.all(
                args.listener_arn,
                parameter_arn,
                args.incident_bucket_arn,
                args.incident_key_arn,
                topic.arn,
                key.arn,
                logs.arn,
            ).apply(
                lambda v: function_policy(
                    listener_arn=v[0],
                    parameter_arn=v[1],
                    incident_objects=f"{v[2]}/{incident_prefix}/*",
                    incident_key_arn=v[3],
                    topic_arn=v[4],
                    topic_key_arn=v[5],
                    log_group_arn=v[6],
                )
            ),
            opts=child,
        )
        composite_name = composite_alarm_name(args.model, args.stack, args.candidate.value)
        stable = args.candidate.other.value
        variables: dict[str, pulumi.Input[str]] = {
            "LISTENER_ARN": args.listener_arn,
            "STABLE_TARGET_GROUP_ARN": args.target_group_arns[stable],
            "CANDIDATE_TARGET_GROUP_ARN": args.target_group_arns[args.candidate.value],
            **(
                {"MIRROR_TARGET_GROUP_ARN": args.target_group_arns["mirror"]}
                if "mirror" in args.target_group_arns
                else {}
            ),
            "ALARM_NAME": composite_name,
            "RECORD_PARAMETER": args.record_parameter,
            "INCIDENT_BUCKET": args.incident_bucket,
            "INCIDENT_PREFIX": incident_prefix,
            "TOPIC_ARN": topic.arn,
            "CANDIDATE_VERSION": args.candidate_version,
            "CANDIDATE_COLOUR": args.candidate.value,
            "STABLE_COLOUR": stable,
            "STAGE_WEIGHTS": ",".join(str(w) for w in args.stage_weights),
        }
        function = aws.lambda_.Function(
            f"{name}-function",
            name=function_name,
            # 3.13: its bundled boto3 has S3 conditional writes (If-None-Match).
            runtime="python3.13",
            architectures=["arm64"],
            handler="rollback.handler",
            code=pulumi.AssetArchive({"rollback.py": pulumi.FileAsset(str(FUNCTION_SOURCE))}),
            role=role.arn,
            timeout=60,
            memory_size=256,
            reserved_concurrent_executions=args.settings.reserved_concurrency,
            logging_config=aws.lambda_.FunctionLoggingConfigArgs(
                log_format="JSON", log_group=logs.name
            ),
            environment=aws.lambda_.FunctionEnvironmentArgs(variables=variables),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, logs]),
        )
        composite = aws.cloudwatch.CompositeAlarm(
            name,
            alarm_name=composite_name,
            alarm_description=pulumi.Output.from_input(args.listener_arn).apply(
                lambda arn: (
                    f"weightshift rollback of {args.candidate_version} "
                    f"({args.candidate.value}) listener={arn}"
                )
            ),
            alarm_rule=pulumi.Output.all(*[a.name for a in alarms]).apply(
                lambda names: " OR ".join(f'ALARM("{n}")' for n in names)
            ),
            # An idle colour never pages: actions only while the candidate has traffic.
            actions_enabled=args.active,
            alarm_actions=[function.arn, topic.arn],
            ok_actions=[topic.arn],
            opts=child,
        )
        aws.lambda_.Permission(
            f"{name}-function",
            action="lambda:InvokeFunction",
            function=function.name,
            principal=ALARM_PRINCIPAL,
            source_arn=composite.arn,
            source_account=args.account,
            opts=child,
        )
        self.composite_alarm_name = composite.alarm_name
        self.alarm_names = [a.name for a in alarms]
        self.function_name = function.name
        self.topic_arn = topic.arn
        self.settings = pulumi.Output.all(**variables)
        self.register_outputs(
            {
                "composite_alarm_name": self.composite_alarm_name,
                "function_name": self.function_name,
                "topic_arn": self.topic_arn,
            }
        )

    @staticmethod
    def _dead_man(
        name: str,
        args: RollbackArgs,
        alarm: Callable[..., aws.cloudwatch.MetricAlarm],
        alb: Mapping[str, pulumi.Input[str]],
    ) -> aws.cloudwatch.MetricAlarm:
        """The dead man's switch (``weightshift/rollout/dead_man.py``): requests the ALB sent the
        candidate over the window, against the answers its targets gave. It reads only what
        the candidate was sent, so it is the same at every stage and cannot fire on the
        update that first gives the candidate weight."""
        window = args.settings.dead_man_minutes * 60
        minimum = args.settings.dead_man_requests

        return alarm(
            "no-answers",
            f"dead man's switch: {minimum} or more requests reached the candidate within "
            f"{args.settings.dead_man_minutes} min and none was answered",
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
