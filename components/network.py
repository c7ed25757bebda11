"""The VPC the load balancer and the GPU nodes live in: created here, or an existing one."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.iam import service_trust
from weightshift.config import NetworkConfig


@dataclass(frozen=True)
class NetworkArgs:
    settings: NetworkConfig
    routed_cidrs: tuple[str, ...] = ()
    """Blocks outside the VPC the private subnets reach through the transit gateway (the
    deployer's): the private Kubernetes API must be able to answer them."""


def carve(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Private subnets take the first eighths of the block (room for pod IPs); public
    subnets share the last eighth (they hold only load balancer and NAT interfaces)."""
    eighths = list(ipaddress.IPv4Network(cidr).subnets(prefixlen_diff=3))
    private = [str(net) for net in eighths[:zones]]
    public = [str(net) for net in list(eighths[-1].subnets(prefixlen_diff=3))[:zones]]
    return public, private


class Network(pulumi.ComponentResource):
    """A VPC across the configured zones, or the ids of an existing one.

    Children when creating: ``{name}-vpc`` Vpc, ``{name}-default-sg`` (the default
    security group, stripped of every rule), ``{name}-igw`` InternetGateway,
    ``{name}-public-{zone}`` and ``{name}-private-{zone}`` Subnets, ``{name}-public-rt``
    RouteTable with its associations, ``{name}-nat-{zone}`` Eips and NatGateways (one,
    or one per zone), ``{name}-private-rt-{zone}`` RouteTables and associations (with routes to the
    deployer's blocks through ``{name}-tgw``, a transit gateway VpcAttachment, when
    ``transitGatewayId`` is set), and
    ``{name}-flow-logs`` (LogGroup, Role, RolePolicy, FlowLog) recording rejected and
    accepted traffic. With an existing VPC there are no children.
    """

    vpc_id: pulumi.Output[str]
    """The VPC's id."""
    vpc_cidr: pulumi.Output[str]
    """The VPC's IPv4 block."""
    public_subnet_ids: pulumi.Output[list[str]]
    """Subnets for the internet-facing load balancer."""
    private_subnet_ids: pulumi.Output[list[str]]
    """Subnets for nodes, pods and an internal load balancer."""
    nat_public_ips: pulumi.Output[list[str]]
    """Egress addresses of the NAT gateways (empty for an existing VPC)."""
    public_subnet_cidrs: list[str]
    """The public subnets' blocks (known before deployment)."""
    paths: list[pulumi.Resource]
    """What the deployer's route to the private API runs over (the transit gateway
    attachment and the route tables naming it): the Kubernetes provider waits for them."""
    private_subnet_cidrs: list[str]
    """The private subnets' blocks (known before deployment)."""

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("weightshift:index:Network", name, None, opts)
        settings = args.settings
        self.paths = []
        if settings.vpc_id is not None:
            assert settings.vpc_cidr is not None  # guaranteed by NetworkConfig validation
            self.vpc_id = pulumi.Output.from_input(settings.vpc_id)
            self.vpc_cidr = pulumi.Output.from_input(settings.vpc_cidr)
            self.public_subnet_ids = pulumi.Output.from_input(list(settings.public_subnet_ids))
            self.private_subnet_ids = pulumi.Output.from_input(list(settings.private_subnet_ids))
            self.nat_public_ips = pulumi.Output.from_input([])
            self.public_subnet_cidrs = list(settings.public_subnet_cidrs)
            self.private_subnet_cidrs = list(settings.private_subnet_cidrs)
        else:
            self._create(name, settings, args.routed_cidrs)
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "vpc_cidr": self.vpc_cidr,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
                "nat_public_ips": self.nat_public_ips,
            }
        )

    def _create(self, name: str, settings: NetworkConfig, routed: tuple[str, ...]) -> None:
        assert settings.cidr is not None  # guaranteed by NetworkConfig validation
        child = pulumi.ResourceOptions(parent=self)
        zones = settings.availability_zones
        public_cidrs, private_cidrs = carve(settings.cidr, len(zones))
        self.public_subnet_cidrs, self.private_subnet_cidrs = public_cidrs, private_cidrs
        vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=settings.cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            opts=child,
        )
        aws.ec2.DefaultSecurityGroup(f"{name}-default-sg", vpc_id=vpc.id, opts=child)
        igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, opts=child)
        public_subnets, private_subnets = self._subnets(
            name, vpc, igw, zones=zones, public_cidrs=public_cidrs, private_cidrs=private_cidrs
        )
        extra_routes = self._transit_routes(name, settings, vpc, private_subnets, routed)
        nat_zones = zones if settings.nat_gateways == "per-az" else zones[:1]
        eips, nats = self._nat_gateways(name, nat_zones, public_subnets, igw)
        for index, (zone, private) in enumerate(zip(zones, private_subnets, strict=True)):
            nat = nats[index] if settings.nat_gateways == "per-az" else nats[0]
            table = aws.ec2.RouteTable(
                f"{name}-private-rt-{zone}",
                vpc_id=vpc.id,
                routes=[
                    aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", nat_gateway_id=nat.id),
                    *extra_routes,
                ],
                opts=child,
            )
            if extra_routes:
                self.paths.append(table)
            aws.ec2.RouteTableAssociation(
                f"{name}-private-{zone}", subnet_id=private.id, route_table_id=table.id, opts=child
            )
        self._flow_logs(name, vpc, settings.flow_log_retention_days)

        self.vpc_id = vpc.id
        self.vpc_cidr = vpc.cidr_block
        self.public_subnet_ids = pulumi.Output.all(*[s.id for s in public_subnets])
        self.private_subnet_ids = pulumi.Output.all(*[s.id for s in private_subnets])
        self.nat_public_ips = pulumi.Output.all(*[e.public_ip for e in eips])

    def _subnets(
        self,
        name: str,
        vpc: aws.ec2.Vpc,
        igw: aws.ec2.InternetGateway,
        *,
        zones: Sequence[str],
        public_cidrs: Sequence[str],
        private_cidrs: Sequence[str],
    ) -> tuple[list[aws.ec2.Subnet], list[aws.ec2.Subnet]]:
        """A public and a private subnet per zone; the public ones routed to the internet
        gateway (the private ones' routes follow the NAT gateways)."""
        child = pulumi.ResourceOptions(parent=self)
        public_rt = aws.ec2.RouteTable(
            f"{name}-public-rt",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=igw.id)],
            opts=child,
        )
        public_subnets: list[aws.ec2.Subnet] = []
        private_subnets: list[aws.ec2.Subnet] = []
        for zone, public_cidr, private_cidr in zip(zones, public_cidrs, private_cidrs, strict=True):
            public = aws.ec2.Subnet(
                f"{name}-public-{zone}",
                vpc_id=vpc.id,
                cidr_block=public_cidr,
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={"kubernetes.io/role/elb": "1", "weightshift:tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{name}-public-{zone}",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child,
            )
            private = aws.ec2.Subnet(
                f"{name}-private-{zone}",
                vpc_id=vpc.id,
                cidr_block=private_cidr,
                availability_zone=zone,
                tags={"kubernetes.io/role/internal-elb": "1", "weightshift:tier": "private"},
                opts=child,
            )
            public_subnets.append(public)
            private_subnets.append(private)
        return public_subnets, private_subnets

    def _transit_routes(
        self,
        name: str,
        settings: NetworkConfig,
        vpc: aws.ec2.Vpc,
        private_subnets: Sequence[aws.ec2.Subnet],
        routed: tuple[str, ...],
    ) -> list[aws.ec2.RouteTableRouteArgs]:
        """With a transit gateway: the VPC's attachment, and the private subnets' routes to
        ``routed`` through it (none without)."""
        if settings.transit_gateway_id is None:
            return []
        attachment = aws.ec2transitgateway.VpcAttachment(
            f"{name}-tgw",
            transit_gateway_id=settings.transit_gateway_id,
            vpc_id=vpc.id,
            subnet_ids=[subnet.id for subnet in private_subnets],
            dns_support="enable",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.paths.append(attachment)
        # The target comes from the attachment, so the routes wait for it to exist.
        return [
            aws.ec2.RouteTableRouteArgs(
                cidr_block=cidr, transit_gateway_id=attachment.transit_gateway_id
            )
            for cidr in routed
        ]

    def _nat_gateways(
        self,
        name: str,
        nat_zones: Sequence[str],
        public_subnets: Sequence[aws.ec2.Subnet],
        igw: aws.ec2.InternetGateway,
    ) -> tuple[list[aws.ec2.Eip], list[aws.ec2.NatGateway]]:
        """A NAT gateway and its address in each of ``nat_zones``' public subnets."""
        nats: list[aws.ec2.NatGateway] = []
        eips: list[aws.ec2.Eip] = []
        for zone, public in zip(nat_zones, public_subnets, strict=False):
            eip = aws.ec2.Eip(
                f"{name}-nat-{zone}", domain="vpc", opts=pulumi.ResourceOptions(parent=self)
            )
            nat = aws.ec2.NatGateway(
                f"{name}-nat-{zone}",
                allocation_id=eip.id,
                subnet_id=public.id,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[igw]),
            )
            eips.append(eip)
            nats.append(nat)
        return eips, nats

    def _flow_logs(self, name: str, vpc: aws.ec2.Vpc, retention_days: int) -> None:
        child = pulumi.ResourceOptions(parent=self)
        group = aws.cloudwatch.LogGroup(
            f"{name}-flow-logs", retention_in_days=retention_days, opts=child
        )
        role = aws.iam.Role(
            f"{name}-flow-logs",
            assume_role_policy=service_trust("vpc-flow-logs.amazonaws.com"),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-flow-logs",
            role=role.id,
            policy=group.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Action": [
                                    "logs:CreateLogStream",
                                    "logs:PutLogEvents",
                                    "logs:DescribeLogStreams",
                                ],
                                "Resource": [arn, f"{arn}:*"],
                            }
                        ],
                    }
                )
            ),
            opts=child,
        )
        aws.ec2.FlowLog(
            f"{name}-flow-logs",
            vpc_id=vpc.id,
            traffic_type="ALL",
            log_destination_type="cloud-watch-logs",
            log_destination=group.arn,
            iam_role_arn=role.arn,
            max_aggregation_interval=60,
            opts=child,
        )
