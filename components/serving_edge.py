"""What both colours' pods share, declared once per stack: the cluster security group's rules
admitting the load balancer to the gateways' ports, and the KMS key feedback tokens are
signed under."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class ServingEdgeArgs:
    cluster_security_group_id: pulumi.Input[str]
    alb_security_group_id: pulumi.Input[str]
    port: int
    """The gateways' port (the colours' target groups)."""
    mirror_port: int
    """The gateways' mirror listener (the shadow strategy's ``mirror`` target group)."""
    description: str
    """Names the stack in the rules' and key's descriptions."""


class ServingEdge(pulumi.ComponentResource):
    """Children: ``{name}-from-alb`` and ``{name}-from-alb-mirror`` SecurityGroupIngressRule,
    ``{name}-feedback`` KMS Key (``HMAC_256``).

    One rule per port for the whole stack, not one per colour: both colours' pods sit behind
    the same cluster security group, and EC2 refuses a second identical rule
    (``InvalidPermission.Duplicate``); a rule per colour would also be revoked for both when
    one colour is removed.
    """

    rules: list[aws.vpc.SecurityGroupIngressRule]
    feedback_key_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: ServingEdgeArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:ServingEdge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.rules = [
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-from-alb" if port == args.port else f"{name}-from-alb-mirror",
                security_group_id=args.cluster_security_group_id,
                referenced_security_group_id=args.alb_security_group_id,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                description=f"ALB {what} to the {args.description} gateways",
                opts=child,
            )
            for port, what in ((args.port, "requests"), (args.mirror_port, "mirrored requests"))
        ]
        # GenerateMac of a fixed message is deterministic: every gateway derives the same
        # token key from it, and no secret is stored anywhere (weightshift/gateway/feedback.py).
        key = aws.kms.Key(
            f"{name}-feedback",
            description=f"{args.description}: feedback tokens of the gateways",
            key_usage="GENERATE_VERIFY_MAC",
            customer_master_key_spec="HMAC_256",
            deletion_window_in_days=30,
            opts=child,
        )
        self.feedback_key_arn = key.arn
        self.register_outputs({"feedback_key_arn": self.feedback_key_arn})
