"""Automated rollback of the candidate colour: alarms, a composite alarm, the function it
invokes, and the on-call topic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pulumi
import pulumi_aws as aws

from components.iam import allow, policy_document, service_trust
from components.rollback_alarms import (
    ALB_NAMESPACE,
    NAMESPACE,
    QUALITY_METRIC,
    SLOW_PERCENT,
    CandidateAlarms,
    RollbackArgs,
    metric_query,
    slower_than,
)
from weightshift.lambdas.rollback import page_marker
from weightshift.rollout.record import composite_alarm_name

__all__ = [
    "ALB_NAMESPACE",
    "NAMESPACE",
    "QUALITY_METRIC",
    "SLOW_PERCENT",
    "Rollback",
    "RollbackArgs",
    "metric_query",
    "slower_than",
]

FUNCTION_SOURCE = Path(__file__).resolve().parent.parent / "weightshift" / "lambdas" / "rollback.py"
ALARM_PRINCIPAL = "lambda.alarms.cloudwatch.amazonaws.com"


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


def rollback_log_group(model: str, stack: str) -> str:
    """Where every rollback function of a stack logs (blue's and green's alike)."""
    return f"/weightshift/{model}/{stack}/rollback"


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


def function_variables(
    args: RollbackArgs,
    *,
    composite_name: str,
    incident_prefix: str,
    topic_arn: pulumi.Input[str],
) -> dict[str, pulumi.Input[str]]:
    """The function's environment (``weightshift/lambdas/rollback.py`` reads it)."""
    stable = args.candidate.other.value
    return {
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
        "TOPIC_ARN": topic_arn,
        "CANDIDATE_VERSION": args.candidate_version,
        "CANDIDATE_COLOUR": args.candidate.value,
        "STABLE_COLOUR": stable,
        "STAGE_WEIGHTS": ",".join(str(w) for w in args.stage_weights),
    }


class Rollback(pulumi.ComponentResource):
    """Alarms on the candidate, a composite alarm over them that invokes the rollback
    function and pages on-call, and the function itself.

    Children: ``{name}-errors``, ``{name}-errors-1m``, ``{name}-latency-p99``,
    ``{name}-latency-p99-1m``, ``{name}-quality``, ``{name}-safety``, ``{name}-no-heartbeat``
    (the candidate's gateways' metrics, the fast ones at 10-second periods),
    ``{name}-refused``, ``{name}-no-healthy-hosts``, ``{name}-no-answers`` (the load
    balancer's) MetricAlarms (declared by ``CandidateAlarms``,
    ``components/rollback_alarms.py``);
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
        prefix = f"{args.model}-{args.stack}-{args.candidate.value}"
        alarms = CandidateAlarms(name, args, parent=self).create()
        # Per stack, not per colour: `rollout finish` flips the candidate colour, and a topic
        # named after it would be replaced with its subscriptions (an email subscription
        # stays pending until confirmed again: nobody paged during the hold).
        key, topic = self._on_call(name, f"{args.model}-{args.stack}", args)
        composite_name = composite_alarm_name(args.model, args.stack, args.candidate.value)
        incident_prefix = f"incidents/{args.model}/{args.stack}"
        variables = function_variables(
            args,
            composite_name=composite_name,
            incident_prefix=incident_prefix,
            topic_arn=topic.arn,
        )
        function = self._function(
            name, prefix, args, key, topic, incident_prefix=incident_prefix, variables=variables
        )
        composite = self._composite(
            name, composite_name, args, alarms=alarms, function=function, topic=topic
        )
        aws.lambda_.Permission(
            f"{name}-function",
            action="lambda:InvokeFunction",
            function=function.name,
            principal=ALARM_PRINCIPAL,
            source_arn=composite.arn,
            source_account=args.account,
            opts=pulumi.ResourceOptions(parent=self),
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

    def _on_call(
        self, name: str, prefix: str, args: RollbackArgs
    ) -> tuple[aws.kms.Key, aws.sns.Topic]:
        """The on-call topic, its key and policy, and a subscription per endpoint."""
        child = pulumi.ResourceOptions(parent=self)
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
        return key, topic

    def _function(
        self,
        name: str,
        prefix: str,
        args: RollbackArgs,
        key: aws.kms.Key,
        topic: aws.sns.Topic,
        *,
        incident_prefix: str,
        variables: dict[str, pulumi.Input[str]],
    ) -> aws.lambda_.Function:
        """The rollback function, its log group, and its role with exactly what it does."""
        child = pulumi.ResourceOptions(parent=self)
        function_name = f"{prefix}-rollback"[:64]
        # One log group per stack, whichever colour's function writes to it: a group named
        # after the function would go (with its logs) when `rollout finish` flips the colour.
        logs = aws.cloudwatch.LogGroup(
            f"{name}-function",
            name=rollback_log_group(args.model, args.stack),
            retention_in_days=args.settings.log_retention_days,
            opts=child,
        )
        role = aws.iam.Role(
            f"{name}-function",
            assume_role_policy=service_trust("lambda.amazonaws.com"),
            opts=child,
        )
        policy = self._function_policy(
            name, args, role, grants=(key, topic, logs), incident_prefix=incident_prefix
        )
        return aws.lambda_.Function(
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

    def _function_policy(
        self,
        name: str,
        args: RollbackArgs,
        role: aws.iam.Role,
        *,
        grants: tuple[aws.kms.Key, aws.sns.Topic, aws.cloudwatch.LogGroup],
        incident_prefix: str,
    ) -> aws.iam.RolePolicy:
        """The function's role policy: exactly what it does, on exactly its resources."""
        key, topic, logs = grants
        child = pulumi.ResourceOptions(parent=self)
        parameter_arn = pulumi.Output.from_input(args.account).apply(
            lambda account: (
                f"arn:{args.partition}:ssm:{args.region}:{account}:parameter{args.record_parameter}"
            )
        )
        return aws.iam.RolePolicy(
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

    def _composite(
        self,
        name: str,
        composite_name: str,
        args: RollbackArgs,
        *,
        alarms: Sequence[aws.cloudwatch.MetricAlarm],
        function: aws.lambda_.Function,
        topic: aws.sns.Topic,
    ) -> aws.cloudwatch.CompositeAlarm:
        """Any alarm in ALARM: invoke the function and page on-call."""
        return aws.cloudwatch.CompositeAlarm(
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
            opts=pulumi.ResourceOptions(parent=self),
        )
