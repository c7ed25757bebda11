"""The ALB: the only traffic router. It splits requests between blue and green by weight."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from components.log_bucket import LogBucket, LogBucketArgs
from weightshift.config import TrafficConfig
from weightshift.stages import Colour, Weights

MIRROR = "mirror"
_TEST_ROUTE_PRIORITY = {Colour.BLUE: 10, Colour.GREEN: 20}


@dataclass(frozen=True)
class TrafficArgs:
    settings: TrafficConfig
    weights: Weights
    """The default action's weights; the only input a rollout stage changes."""
    stickiness_seconds: int
    mirror: bool
    """Add the shadow strategy's mirror target group."""
    vpc_id: pulumi.Input[str]
    vpc_cidr: pulumi.Input[str]
    nat_public_ips: pulumi.Input[Sequence[str]]
    """The NAT gateways' addresses: what an internet-facing ALB sees of callers in the VPC."""
    subnet_ids: pulumi.Input[Sequence[str]]
    region: str
    partition: str
    target_group_tags: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Tags per target (``blue``, ``green``): the candidate's evaluation verdict
    (``weightshift.gates.check.Verdict.tags``), which the stack policy reads."""


def _checked_weights(
    weights: dict[str, int],
    after: Sequence[pulumi.Resource],
    check: Callable[[Mapping[str, str]], None] | None,
    groups: Mapping[str, aws.lb.TargetGroup],
) -> dict[str, pulumi.Input[int]]:
    """The weights, released to the engine only after ``after`` is done and ``check``
    passed (an output of each resource in ``after`` resolves only when the engine has
    created or updated it: for a Deployment, when its pods are ready). ``check`` receives
    the target groups' ARNs by target."""
    if check is None:
        return dict(weights)
    done = [r.id for r in after if isinstance(r, pulumi.CustomResource)]
    arns = pulumi.Output.all(**{target: group.arn for target, group in groups.items()})

    def run_check(values: list[Any]) -> dict[str, int]:
        check(values[-1])
        return dict(weights)

    checked = pulumi.Output.all(*done, arns).apply(run_check)
    return {target: checked[target] for target in weights}


def test_route_sources(
    settings: TrafficConfig,
    vpc_cidr: pulumi.Input[str],
    nat_public_ips: pulumi.Input[Sequence[str]],
) -> pulumi.Output[list[str]]:
    """Who may pick a colour with the test header: the configured blocks; else, for an
    internal ALB, the VPC; for an internet-facing one, the NAT gateways' addresses (the ALB
    matches the connection's source address, never X-Forwarded-For)."""
    if settings.test_route_cidrs:
        return pulumi.Output.from_input(list(settings.test_route_cidrs))
    if settings.internal:
        return pulumi.Output.from_input(vpc_cidr).apply(lambda cidr: [cidr])
    return pulumi.Output.from_input(nat_public_ips).apply(lambda ips: [f"{ip}/32" for ip in ips])


class Traffic(pulumi.ComponentResource):
    """An Application Load Balancer whose HTTPS listener forwards to the blue and green
    target groups by weight.

    Children: ``{name}-logs`` LogBucket (access logs), ``{name}-alb`` SecurityGroup with
    one ingress rule per allowed CIDR and port and one egress rule to the VPC on the
    serving port, ``{name}-alb`` LoadBalancer, ``{name}-blue`` and ``{name}-green``
    TargetGroups (plus ``{name}-mirror`` for shadow), ``{name}-https`` Listener with the
    weighted default action, ``{name}-http`` Listener that only redirects to HTTPS, and
    ``{name}-route-blue`` / ``{name}-route-green`` ListenerRules that send requests
    carrying the test header from the allowed sources to one colour.

    Two steps, so the program can order the listener against the pods: the constructor
    declares all but the HTTPS listener and its rules (the colours' stacks need the target
    groups); ``listen(after=...)`` declares those, depending on ``after`` (the candidate's
    Deployment when weight moves to it: capacity before traffic), and registers the
    component's outputs.
    """

    load_balancer_arn: pulumi.Output[str]
    """The ALB's ARN."""
    load_balancer_arn_suffix: pulumi.Output[str]
    """The ALB's CloudWatch dimension value."""
    dns_name: pulumi.Output[str]
    """Where clients send requests."""
    zone_id: pulumi.Output[str]
    """The ALB's hosted zone, for an alias record."""
    listener_arn: pulumi.Output[str]
    """The HTTPS listener whose default action holds the weights."""
    target_group_arns: dict[str, pulumi.Output[str]]
    """Target group ARN by colour (and ``mirror`` for shadow)."""
    target_group_arn_suffixes: dict[str, pulumi.Output[str]]
    """Target group CloudWatch dimension value by colour (and ``mirror``)."""
    security_group_id: pulumi.Output[str]
    """The ALB's security group: the only source the inference pods accept."""

    def __init__(
        self, name: str, args: TrafficArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:Traffic", name, None, opts)
        alb, security_group = self._load_balancer(name, args)
        targets = [Colour.BLUE.value, Colour.GREEN.value] + ([MIRROR] if args.mirror else [])
        groups = {
            target: self._target_group(
                f"{name}-{target}",
                args,
                args.settings.mirror_port if target == MIRROR else args.settings.serving_port,
                tags=args.target_group_tags.get(target),
            )
            for target in targets
        }
        weight = {
            Colour.BLUE.value: args.weights.blue,
            Colour.GREEN.value: args.weights.green,
            MIRROR: args.weights.mirror,
        }
        if weight[MIRROR] and not args.mirror:
            raise ValueError("the weights mirror traffic but the mirror target group is off")
        self._http_redirect(name, alb)
        self.load_balancer_arn = alb.arn
        self.load_balancer_arn_suffix = alb.arn_suffix
        self.dns_name = alb.dns_name
        self.zone_id = alb.zone_id
        self.target_group_arns = {target: group.arn for target, group in groups.items()}
        self.target_group_arn_suffixes = {
            target: group.arn_suffix for target, group in groups.items()
        }
        self.security_group_id = security_group.id
        self._args, self._name, self._alb, self._groups = args, name, alb, groups
        self._targets, self._weight = targets, weight

    def listen(
        self,
        after: Sequence[pulumi.Resource] = (),
        check: Callable[[Mapping[str, str]], None] | None = None,
    ) -> aws.lb.Listener:
        """The HTTPS listener with the stage's weights and the test routes; the listener
        waits for ``after`` (what must be ready before weight moves).

        ``check`` runs once everything in ``after`` is created or updated, before the weights
        reach the engine, with the target groups' ARNs: it raises to leave the listener as
        it is. A wait for the candidate's
        pods can take hours, and what was true when the program started (no rollback record)
        may not be true when the weights are applied."""
        https = self._https_listener(after, check)
        self._test_routes(https)
        self.listener_arn = https.arn
        self.register_outputs(
            {
                "load_balancer_arn": self.load_balancer_arn,
                "dns_name": self.dns_name,
                "listener_arn": self.listener_arn,
                "target_group_arns": self.target_group_arns,
                "security_group_id": self.security_group_id,
            }
        )
        return https

    def _load_balancer(
        self, name: str, args: TrafficArgs
    ) -> tuple[aws.lb.LoadBalancer, aws.ec2.SecurityGroup]:
        """The ALB, its security group, and the bucket of its access logs."""
        settings = args.settings
        logs = LogBucket(
            f"{name}-logs",
            LogBucketArgs(
                region=args.region,
                partition=args.partition,
                retention_days=settings.access_log_retention_days,
                elb_prefix="alb",
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        security_group = self._security_group(name, args)
        alb = aws.lb.LoadBalancer(
            f"{name}-alb",
            load_balancer_type="application",
            internal=settings.internal,
            subnets=args.subnet_ids,
            security_groups=[security_group.id],
            drop_invalid_header_fields=True,
            enable_deletion_protection=settings.deletion_protection,
            idle_timeout=settings.idle_timeout_seconds,
            access_logs=aws.lb.LoadBalancerAccessLogsArgs(
                bucket=logs.bucket, prefix="alb", enabled=True
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[logs.ready]),
        )
        return alb, security_group

    def _https_listener(
        self, after: Sequence[pulumi.Resource], check: Callable[[Mapping[str, str]], None] | None
    ) -> aws.lb.Listener:
        """HTTPS only, forwarding to the target groups by the stage's weights."""
        args, name, alb, groups = self._args, self._name, self._alb, self._groups
        targets, settings = self._targets, args.settings
        weight = _checked_weights(self._weight, after, check, groups)
        return aws.lb.Listener(
            f"{name}-https",
            load_balancer_arn=alb.arn,
            port=443,
            protocol="HTTPS",
            ssl_policy=settings.ssl_policy,
            certificate_arn=settings.certificate_arn,
            routing_http_response_server_enabled=False,
            routing_http_response_strict_transport_security_header_value=(
                "max-age=31536000; includeSubDomains"
            ),
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="forward",
                    forward=aws.lb.ListenerDefaultActionForwardArgs(
                        target_groups=[
                            aws.lb.ListenerDefaultActionForwardTargetGroupArgs(
                                arn=groups[target].arn, weight=weight[target]
                            )
                            for target in targets
                        ],
                        stickiness=aws.lb.ListenerDefaultActionForwardStickinessArgs(
                            enabled=args.stickiness_seconds > 0,
                            duration=max(1, args.stickiness_seconds),
                        ),
                    ),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(after)),
        )

    def _test_routes(self, https: aws.lb.Listener) -> None:
        """Requests carrying the test header, from the allowed sources, go to the colour it
        names."""
        args, name, groups, settings = self._args, self._name, self._groups, self._args.settings
        child = pulumi.ResourceOptions(parent=self)
        sources = test_route_sources(settings, args.vpc_cidr, args.nat_public_ips)
        for colour in Colour:
            aws.lb.ListenerRule(
                f"{name}-route-{colour.value}",
                listener_arn=https.arn,
                priority=_TEST_ROUTE_PRIORITY[colour],
                conditions=[
                    aws.lb.ListenerRuleConditionArgs(
                        http_header=aws.lb.ListenerRuleConditionHttpHeaderArgs(
                            http_header_name=settings.test_header, values=[colour.value]
                        )
                    ),
                    aws.lb.ListenerRuleConditionArgs(
                        source_ip=aws.lb.ListenerRuleConditionSourceIpArgs(values=sources)
                    ),
                ],
                actions=[
                    aws.lb.ListenerRuleActionArgs(
                        type="forward", target_group_arn=groups[colour.value].arn
                    )
                ],
                opts=child,
            )

    def _http_redirect(self, name: str, alb: aws.lb.LoadBalancer) -> None:
        aws.lb.Listener(
            f"{name}-http",
            load_balancer_arn=alb.arn,
            port=80,
            protocol="HTTP",
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="redirect",
                    redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        protocol="HTTPS", port="443", status_code="HTTP_301"
                    ),
                )
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _security_group(self, name: str, args: TrafficArgs) -> aws.ec2.SecurityGroup:
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(
            f"{name}-alb",
            vpc_id=args.vpc_id,
            description="weightshift ALB: HTTPS and HTTP in, serving port to the VPC out",
            opts=child,
        )
        for index, cidr in enumerate(args.settings.ingress_cidrs):
            for port in (443, 80):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-alb-in-{port}-{index}",
                    security_group_id=group.id,
                    cidr_ipv4=cidr,
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    description=f"clients on {port}",
                    opts=child,
                )
        outbound = [
            (
                "serving",
                args.settings.serving_port,
                "requests and health checks to the inference pods",
            )
        ]
        if args.mirror:
            outbound.append(
                (
                    "mirror",
                    args.settings.mirror_port,
                    "mirrored requests to the stable colour's gateways (shadow)",
                )
            )
        for suffix, port, description in outbound:
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-alb-out-{suffix}",
                security_group_id=group.id,
                cidr_ipv4=args.vpc_cidr,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                description=description,
                opts=child,
            )
        return group

    def _target_group(
        self,
        name: str,
        args: TrafficArgs,
        port: int,
        tags: Mapping[str, str] | None = None,
    ) -> aws.lb.TargetGroup:
        settings = args.settings
        return aws.lb.TargetGroup(
            name,
            port=port,
            tags=dict(tags) if tags else None,
            protocol="HTTP",
            protocol_version="HTTP1",
            target_type="ip",
            vpc_id=args.vpc_id,
            deregistration_delay=settings.deregistration_delay_seconds,
            # Requests differ in cost by orders of magnitude (prompt and output length):
            # send each to the target with the fewest in flight, not round robin.
            load_balancing_algorithm_type="least_outstanding_requests",
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                enabled=True,
                path=settings.health_check_path,
                port="traffic-port",
                protocol="HTTP",
                matcher="200",
                interval=10,
                timeout=5,
                healthy_threshold=2,
                unhealthy_threshold=3,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
