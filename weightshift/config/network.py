"""Where the service lives and how requests reach it: the VPC (new or existing), the load
balancer's traffic settings, and the artifact store's bucket.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from weightshift.config.fields import Flag, Int, LogRetentionDays, Section, aws_ids, cidr_block

MODERN_TLS_POLICIES = (
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
)
"""TLS 1.2+ policies with forward-secret ciphers only; TLS 1.0/1.1 policies are refused."""

_ACM_ARN = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]{36}$")
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_AZ = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9][a-z]$")


class NetworkConfig(Section):
    """Either an existing VPC (``vpcId`` and subnets) or a new one (``cidr`` and zones)."""

    vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    vpc_cidr: str | None = None
    """The existing VPC's block; given, not looked up, so the plan is reviewable offline."""
    public_subnet_ids: tuple[str, ...] = ()
    private_subnet_ids: tuple[str, ...] = ()
    public_subnet_cidrs: tuple[str, ...] = ()
    private_subnet_cidrs: tuple[str, ...] = ()
    """An existing VPC's subnet blocks, in the order of the ids: the pods accept requests
    only from the load balancer's subnets."""
    cidr: str | None = None
    availability_zones: tuple[str, ...] = ()
    nat_gateways: Literal["single", "per-az"] = "per-az"
    flow_log_retention_days: LogRetentionDays = 365
    transit_gateway_id: str | None = Field(default=None, pattern=r"^tgw-[0-9a-f]{8,17}$")
    """A new VPC only: attach it to this transit gateway (private subnets) and route the
    deployer's blocks (``cluster.deployerCidrs``) through it, so a runner in another network
    reaches the private Kubernetes API and its answers come back. The transit gateway's own
    route tables and the runner's network are the network team's."""

    @field_validator("public_subnet_ids", "private_subnet_ids")
    @classmethod
    def _subnets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return aws_ids(value, "subnet", "subnet")

    @field_validator("public_subnet_cidrs", "private_subnet_cidrs")
    @classmethod
    def _subnet_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(cidr_block(cidr) for cidr in value)

    @field_validator("cidr", "vpc_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        net = ipaddress.IPv4Network(cidr_block(value))
        if not 16 <= net.prefixlen <= 20:
            raise ValueError(f"{value} must be a /16 to /20 block to hold the subnets")
        return str(net)

    @field_validator("availability_zones")
    @classmethod
    def _zones(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for zone in value:
            if not _AZ.match(zone):
                raise ValueError(f"{zone!r} is not an availability zone name such as us-east-1a")
        if len(set(value)) != len(value):
            raise ValueError("availability zones must not repeat")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> NetworkConfig:
        if self.vpc_id is not None:
            if self.vpc_cidr is None:
                raise ValueError("an existing VPC needs vpcCidr, its IPv4 block (e.g. 10.0.0.0/16)")
            if self.cidr is not None or self.availability_zones:
                raise ValueError(
                    "give either vpcId with subnet ids (existing VPC) or cidr with "
                    "availabilityZones (new VPC), not both"
                )
            if self.transit_gateway_id is not None:
                raise ValueError(
                    "transitGatewayId attaches a VPC this stack creates; an existing VPC's "
                    "routes are its owner's: drop transitGatewayId"
                )
            if len(self.public_subnet_ids) < 2 or len(self.private_subnet_ids) < 2:
                raise ValueError(
                    "an existing VPC needs publicSubnetIds and privateSubnetIds, at least two "
                    "each in different zones (an ALB spans two or more zones)"
                )
            if len(self.public_subnet_cidrs) != len(self.public_subnet_ids) or len(
                self.private_subnet_cidrs
            ) != len(self.private_subnet_ids):
                raise ValueError(
                    "an existing VPC needs publicSubnetCidrs and privateSubnetCidrs, the blocks "
                    "of the subnet ids in the same order (the pods admit only the ALB's subnets)"
                )
            return self
        if self.cidr is None or len(self.availability_zones) < 2:
            raise ValueError(
                "a new VPC needs cidr (e.g. 10.40.0.0/16) and availabilityZones (two or more); "
                "or give vpcId, publicSubnetIds and privateSubnetIds to use an existing VPC"
            )
        if len(self.availability_zones) > 6:
            raise ValueError("at most 6 availability zones")
        if (
            self.public_subnet_ids
            or self.private_subnet_ids
            or self.public_subnet_cidrs
            or self.private_subnet_cidrs
            or self.vpc_cidr
        ):
            raise ValueError(
                "subnet ids, subnet blocks and vpcCidr belong to an existing VPC: "
                "set vpcId too, or drop them"
            )
        return self


class TrafficConfig(Section):
    certificate_arn: str
    ssl_policy: str = MODERN_TLS_POLICIES[0]
    internal: Flag = False
    ingress_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    serving_port: Int = Field(default=8000, ge=1024, le=65535)
    """The gateway's port: the target groups, health checks and bindings point at it."""
    mirror_port: Int = Field(default=8001, ge=1024, le=65535)
    """The gateway's mirror listener: the shadow strategy's ``mirror`` target group."""
    health_check_path: str = Field(default="/health", pattern=r"^/[A-Za-z0-9/_.-]*$")
    deregistration_delay_seconds: Int = Field(default=120, ge=0, le=3600)
    idle_timeout_seconds: Int = Field(default=300, ge=1, le=4000)
    test_header: str = "x-weightshift-colour"
    test_route_cidrs: tuple[str, ...] = Field(default=(), max_length=3)
    """Sources allowed to pick a colour with the test header. Empty: for an internal ALB the
    VPC's block; for an internet-facing one the NAT gateways' addresses (a caller inside
    the VPC reaches it through them, and the ALB matches the connection's source, never
    X-Forwarded-For). The rule's values, header included, are at most five: three sources."""
    access_log_retention_days: Int = Field(default=90, ge=1, le=3653)
    deletion_protection: Flag = True

    @field_validator("certificate_arn")
    @classmethod
    def _acm(cls, value: str) -> str:
        if not _ACM_ARN.match(value):
            raise ValueError(
                "must be an ACM certificate ARN, arn:aws:acm:REGION:ACCOUNT:certificate/UUID"
            )
        return value

    @field_validator("ssl_policy")
    @classmethod
    def _tls(cls, value: str) -> str:
        if value not in MODERN_TLS_POLICIES:
            raise ValueError(f"allowed TLS policies: {', '.join(MODERN_TLS_POLICIES)}")
        return value

    @field_validator("ingress_cidrs")
    @classmethod
    def _ingress(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one CIDR must be allowed to reach the load balancer")
        return tuple(cidr_block(cidr) for cidr in value)

    @field_validator("test_route_cidrs")
    @classmethod
    def _test_sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(cidr_block(cidr) for cidr in value)

    @field_validator("test_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError("a header name of lowercase letters, digits and hyphens (at most 40)")
        return value


class ArtifactsConfig(Section):
    """The artifact store: the bucket every bundle is published to."""

    bucket_name: str
    """Named in config, not generated: ``pulumi up`` reads the manifests of the configured
    bundles from it before declaring the inference stacks."""

    @field_validator("bucket_name")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if (
            not re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", value)
            or "--" in value
            or value.startswith(("xn-", "sthree-"))
            or value.endswith(("-s3alias", "--ol-s3"))
        ):
            raise ValueError(
                "an S3 bucket name: 3-63 lowercase letters, digits and single hyphens "
                "(no dots: TLS to a dotted bucket name breaks virtual-host addressing)"
            )
        return value

    retention_mode: Literal["COMPLIANCE", "GOVERNANCE"] = "COMPLIANCE"
    """COMPLIANCE: nobody, not even the account root, can delete or shorten a lock."""
    retention_days: Int = Field(default=365, ge=1, le=3653)
    """How long each bundle object and evaluation report stays locked. At most 10 years: a
    COMPLIANCE lock cannot be shortened or lifted by anyone, so a slip of a digit would keep
    every object (and its storage bill) for a century."""
    access_log_retention_days: Int = Field(default=365, ge=1, le=3653)
