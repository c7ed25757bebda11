"""The stack configuration: pydantic models of every ``weightshift:*`` key.

The Pulumi program, ``weightshift synth`` and ``weightshift plan`` all go through
:func:`load`, so an invalid config fails the same way everywhere and before any
resource is declared: each problem names the key, the bad value and what is
allowed.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from weightshift.bundles.versioning import BundleId, is_model_name
from weightshift.facts import CHARTS, CLOUDWATCH_LOG_RETENTION_DAYS
from weightshift.rollout.stages import (
    DEFAULT_MIRROR_PERCENT,
    Colour,
    Strategy,
    schedule,
    weights_for,
)

NAMESPACE = "weightshift"

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
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")


def _network(value: str) -> str:
    """A CIDR block in canonical form, or an error that shows the block meant."""
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        try:
            meant = f"; did you mean {ipaddress.IPv4Network(value, strict=False)}?"
        except ValueError:
            meant = ""
        raise ValueError(f"not an IPv4 CIDR block ({exc}){meant}") from None


def _number(value: object) -> object:
    """Numbers are numbers: YAML reads yes/no/on/off as booleans, and a lax model would
    take ``stage: yes`` for stage 1 or ``replicas: on`` for one replica."""
    if isinstance(value, bool):
        raise ValueError(
            f"a number, not the boolean {str(value).lower()} (YAML reads yes, no, on, off, "
            "true and false as booleans): write the number"
        )
    if isinstance(value, str):
        raise ValueError(f"a number, not the string {value!r}: write it without quotes")
    return value


def _flag(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError(f"true or false, not {value!r}")
    return value


Int = Annotated[int, BeforeValidator(_number), Strict()]
"""An integer in config: never a boolean, a string or a fraction."""
Float = Annotated[float, BeforeValidator(_number), Strict()]
"""A number in config: never a boolean or a string."""
Flag = Annotated[bool, BeforeValidator(_flag)]


def _log_retention(days: int) -> int:
    if days not in CLOUDWATCH_LOG_RETENTION_DAYS:
        above = [d for d in CLOUDWATCH_LOG_RETENTION_DAYS if d >= days]
        nearest = f"; the next allowed value is {above[0]}" if above else ""
        raise ValueError(
            f"CloudWatch Logs keeps logs only for "
            f"{', '.join(str(d) for d in CLOUDWATCH_LOG_RETENTION_DAYS)} days{nearest}"
        )
    return days


LogRetentionDays = Annotated[Int, AfterValidator(_log_retention)]
"""A CloudWatch log group's retention: one of the values CloudWatch accepts."""


def _chart_version(chart: str) -> Any:
    """A pinned chart version whose scheduling defaults are recorded in ``facts.py``."""

    def check(value: str) -> str:
        known = sorted(CHARTS[chart])
        if value not in known:
            raise ValueError(
                f"{chart} {value} is not a version weightshift has checked (its default "
                f"values decide where its pods run); allowed: {', '.join(known)}"
            )
        return value

    return AfterValidator(check)


def _ids(value: tuple[str, ...], prefix: str, what: str) -> tuple[str, ...]:
    """AWS resource ids such as ``subnet-0123abcd``: the prefix and 8 to 17 hex digits."""
    for item in value:
        if not re.fullmatch(rf"{prefix}-[0-9a-f]{{8,17}}", item):
            raise ValueError(f"{item!r} is not a {what} id ({prefix}-0123abcd...)")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ColourConfig(_Model):
    """One inference stack. ``version`` None means the colour is not deployed."""

    version: str | None = None
    """A published bundle id; empty (``""``) or absent: the colour is not deployed."""
    replicas: Int = Field(default=2, ge=0, le=200)

    @field_validator("version", mode="before")
    @classmethod
    def _bundle_id(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            BundleId.parse(value)
        return value

    @property
    def bundle(self) -> BundleId | None:
        return BundleId.parse(self.version) if self.version else None


class Thresholds(_Model):
    """Gate and rollback thresholds. Defaults follow the seed's evaluation gates."""

    latency_p99_seconds: Float = Field(default=10.0, gt=0, le=600)
    """Rollback when the candidate's p99 time to first token (streamed answers, measured by
    its gateways, over one fast period) exceeds this. Whole (non-streamed) answers are not
    judged by it: their time grows with their length, not with the model's health."""
    error_rate_percent: Float = Field(default=1.0, gt=0, le=100)
    min_quality_score: Float = Field(default=0.8, ge=0, le=1)
    max_safety_violation_percent: Float = Field(default=0.5, ge=0, le=100)
    max_toxicity: Float = Field(default=0.05, ge=0, le=1)
    min_win_rate: Float = Field(default=0.5, ge=0, le=1)
    max_latency_regression_percent: Float = Field(default=20.0, ge=0, le=1000)
    min_adversarial_pass_rate: Float = Field(default=1.0, ge=0, le=1)


class CapacityConfig(_Model):
    """How many replicas the candidate runs at each stage (``weightshift/rollout/capacity.py``)."""

    sizing: Literal["proportional", "throughput"] = "proportional"
    """proportional: the candidate's share of the colour's full replica count (the stable
    colour is sized for the service's peak, so its count is the load); throughput: its share
    of ``peakRequestsPerSecond`` over ``replicaRequestsPerSecond``."""
    headroom_percent: Float = Field(default=25.0, ge=0, le=400)
    """Extra capacity over the candidate's share: a new version may serve fewer requests
    per replica than the old one."""
    floor: Int = Field(default=1, ge=1, le=200)
    """Fewest candidate replicas at any stage (so the test route answers at stage 0)."""
    peak_requests_per_second: Float | None = Field(default=None, gt=0)
    """throughput sizing: the service's peak load, all colours together."""
    replica_requests_per_second: Float | None = Field(default=None, gt=0)
    """throughput sizing: what one replica serves at its latency target."""
    hold_hours: Float = Field(default=24.0, ge=0, le=720)
    """After ``rollout finish``: how long the old stable colour stays warm, the window in
    which a late regression is still rolled back at once."""
    hold_replicas: Int | None = Field(default=None, ge=0, le=200)
    """...and at what size; default its full size (anything less cannot take all traffic
    back at once)."""

    @model_validator(mode="after")
    def _sizing_inputs(self) -> CapacityConfig:
        numbers = (self.peak_requests_per_second, self.replica_requests_per_second)
        if self.sizing == "throughput" and None in numbers:
            raise ValueError(
                "sizing throughput needs peakRequestsPerSecond and replicaRequestsPerSecond "
                "(the service's peak load and one replica's throughput), or use sizing "
                "proportional"
            )
        if self.sizing == "proportional" and numbers != (None, None):
            raise ValueError(
                "peakRequestsPerSecond and replicaRequestsPerSecond size only sizing "
                "throughput: remove them, or set sizing: throughput"
            )
        return self

    @property
    def peak_replicas(self) -> float | None:
        """throughput sizing: the replicas that carry the peak (None: proportional)."""
        if self.peak_requests_per_second is None or self.replica_requests_per_second is None:
            return None
        return self.peak_requests_per_second / self.replica_requests_per_second


class Hold(_Model):
    """Written by ``weightshift rollout finish``: the old stable colour's version, kept warm
    until ``until`` (then the next ``pulumi up`` scales it to zero)."""

    version: str
    until: AwareDatetime
    """When ``weightshift rollout release`` may release it."""
    released: Flag = False
    """Set by ``rollout release``: the held colour runs no pods."""

    @field_validator("version")
    @classmethod
    def _bundle_id(cls, value: str) -> str:
        BundleId.parse(value)
        return value


class RolloutConfig(_Model):
    strategy: Strategy
    stage: Int = Field(ge=0)
    candidate: Colour
    stickiness_seconds: Int = Field(default=0, ge=0, le=604_800)
    """0 turns stickiness off; otherwise 1 s to 7 days (the ALB's range)."""
    mirror_percent: Float = Field(default=DEFAULT_MIRROR_PERCENT, gt=0, le=100)
    """Shadow only: share of live requests copied to the candidate."""
    shadow_record_days: Int = Field(default=30, ge=1, le=3653)
    """Shadow only: how long the mirrored pairs are kept (the shadow bucket's lifecycle)."""
    shadow_keep_text: Flag = False
    """Shadow only: store prompts and answers in the pairs, not only their hashes (they may
    hold personal data: decide with whoever owns that data)."""
    thresholds: Thresholds = Thresholds()
    capacity: CapacityConfig = CapacityConfig()
    hold: Hold | None = None
    """Set by ``rollout finish``; applies while the candidate colour still runs
    ``hold.version`` at stage 0."""

    @field_validator("stage")
    @classmethod
    def _stage_exists(cls, value: int, info: ValidationInfo) -> int:
        strategy = info.data.get("strategy")
        if strategy is None:
            return value
        last = len(schedule(strategy)) - 1
        if value > last:
            raise ValueError(f"not a stage of strategy {strategy.value}; allowed 0 to {last}")
        return value

    @property
    def stable(self) -> Colour:
        return self.candidate.other


class NetworkConfig(_Model):
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
        return _ids(value, "subnet", "subnet")

    @field_validator("public_subnet_cidrs", "private_subnet_cidrs")
    @classmethod
    def _subnet_cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_network(cidr) for cidr in value)

    @field_validator("cidr", "vpc_cidr")
    @classmethod
    def _cidr(cls, value: str | None) -> str | None:
        if value is None:
            return None
        net = ipaddress.IPv4Network(_network(value))
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


class TrafficConfig(_Model):
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
        return tuple(_network(cidr) for cidr in value)

    @field_validator("test_route_cidrs")
    @classmethod
    def _test_sources(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_network(cidr) for cidr in value)

    @field_validator("test_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError("a header name of lowercase letters, digits and hyphens (at most 40)")
        return value


class ArtifactsConfig(_Model):
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
    retention_days: Int = Field(default=365, ge=1, le=36_500)
    access_log_retention_days: Int = Field(default=365, ge=1, le=3653)


_IMAGE_BY_DIGEST = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
_LABEL = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_CLUSTER_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")

GPU_AMI_TYPES = ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA")
"""AMIs with the NVIDIA driver; only AL2023 needs the device plugin installed (Bottlerocket
ships it)."""

EKS_VERSIONS = ("1.31", "1.32", "1.33", "1.34", "1.35")
"""Kubernetes versions weightshift is tested against (the manifests are validated against
each one's JSON schema)."""


def _image(value: str) -> str:
    if not _IMAGE_BY_DIGEST.match(value):
        raise ValueError(
            "an image pinned by digest, REPOSITORY@sha256:<64 hex> (a tag can move; "
            "`docker buildx imagetools inspect IMAGE:TAG` prints the digest)"
        )
    return value


class NodeGroupConfig(_Model):
    """One managed node group."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    instance_types: tuple[str, ...] = Field(min_length=1, max_length=10)
    ami_type: str = GPU_AMI_TYPES[0]
    disk_gib: Int = Field(default=200, ge=20, le=16_384)
    """Encrypted root volume; it also holds the pulled bundle (size it for the weights)."""
    min_size: Int = Field(default=0, ge=0, le=450)
    desired_size: Int = Field(default=2, ge=0, le=450)
    max_size: Int = Field(default=4, ge=1, le=450)
    gpus_per_node: Int = Field(default=1, ge=0, le=16)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("instance_types")
    @classmethod
    def _types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for kind in value:
            if not re.fullmatch(r"[a-z][a-z0-9-]*\.[0-9a-z]+", kind):
                raise ValueError(f"{kind!r} is not an EC2 instance type such as g6e.12xlarge")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not _LABEL.match(key) or not _LABEL_VALUE.match(label):
                raise ValueError(f"label {key}={label!r} is not a valid Kubernetes label")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> NodeGroupConfig:
        if not self.min_size <= self.desired_size <= self.max_size:
            raise ValueError(
                f"node group {self.name}: need minSize <= desiredSize <= maxSize "
                f"(got {self.min_size}, {self.desired_size}, {self.max_size})"
            )
        return self


class ExistingClusterConfig(_Model):
    """A cluster made elsewhere. It must already run the EKS Pod Identity agent, GPU nodes
    labelled ``gpuNodeLabels`` and tainted ``nvidia.com/gpu:NoSchedule`` with the NVIDIA
    device plugin, and the AWS Load Balancer Controller."""

    name: str
    endpoint: str = Field(pattern=r"^https://[A-Za-z0-9.-]+$")
    certificate_authority: str = Field(min_length=20)
    """Base64 PEM, as ``aws eks describe-cluster`` prints it (certificateAuthority.data)."""
    security_group_id: str = Field(pattern=r"^sg-[0-9a-f]{8,17}$")
    """The cluster security group the nodes (and so the pods) use."""
    gpu_node_labels: dict[str, str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _CLUSTER_NAME.match(value):
            raise ValueError("an EKS cluster name: letters, digits, - and _, at most 100")
        return value


class ClusterConfig(_Model):
    """A new EKS cluster with GPU node groups, or ``existing``."""

    existing: ExistingClusterConfig | None = None
    version: str = "1.33"
    endpoint_public_access: Flag = False
    """False: the API server is reachable only from inside the VPC (private endpoint)."""
    public_access_cidrs: tuple[str, ...] = ()
    deployer_cidrs: tuple[str, ...] = ()
    """Where ``pulumi up`` runs from inside the network (a CI runner subnet, a VPN's block):
    the control plane's security group admits them on 443. The private API endpoint accepts
    only its security groups, so without this the Kubernetes half of the deploy is refused.
    Outside a new VPC, ``network.transitGatewayId`` routes them."""
    deployer_security_group_ids: tuple[str, ...] = ()
    """Security groups of the deployer (e.g. a runner's), admitted on 443 like
    ``deployerCidrs``."""
    log_retention_days: LogRetentionDays = 365
    system_nodes: NodeGroupConfig = NodeGroupConfig(
        name="system",
        instance_types=("m7i.xlarge",),
        ami_type="AL2023_x86_64_STANDARD",
        disk_gib=50,
        min_size=2,
        desired_size=2,
        max_size=4,
        gpus_per_node=0,
    )
    gpu_node_groups: tuple[NodeGroupConfig, ...] = ()
    device_plugin_chart_version: Annotated[str, _chart_version("nvidia-device-plugin")] = "0.17.1"
    load_balancer_controller_chart_version: Annotated[
        str, _chart_version("aws-load-balancer-controller")
    ] = "1.14.0"
    autoscaler_chart_version: Annotated[str, _chart_version("cluster-autoscaler")] = "9.59.0"

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(
                'quote the version, e.g. "1.33": YAML reads an unquoted 1.30 as the number 1.3'
            )
        if value not in EKS_VERSIONS:
            raise ValueError(f"allowed Kubernetes versions: {', '.join(EKS_VERSIONS)}")
        return value

    @field_validator("public_access_cidrs", "deployer_cidrs")
    @classmethod
    def _public(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_network(cidr) for cidr in value)

    @field_validator("deployer_security_group_ids")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _ids(value, "sg", "security group")

    @field_validator("gpu_node_groups")
    @classmethod
    def _gpu_groups(cls, value: tuple[NodeGroupConfig, ...]) -> tuple[NodeGroupConfig, ...]:
        for group in value:
            if group.ami_type not in GPU_AMI_TYPES:
                raise ValueError(
                    f"node group {group.name}: amiType {group.ami_type!r}; a GPU node group "
                    f"needs one of {', '.join(GPU_AMI_TYPES)}"
                )
            if group.gpus_per_node < 1:
                raise ValueError(f"node group {group.name}: gpusPerNode must be at least 1")
        if len({group.name for group in value}) != len(value):
            raise ValueError("node group names must not repeat")
        return value

    @model_validator(mode="after")
    def _kind(self) -> ClusterConfig:
        if self.existing is None and not self.gpu_node_groups:
            raise ValueError(
                "a new cluster needs gpuNodeGroups (at least one), or give existing "
                "to use a cluster made elsewhere"
            )
        if self.endpoint_public_access and not self.public_access_cidrs:
            raise ValueError(
                "endpointPublicAccess needs publicAccessCidrs (your egress addresses): "
                "an API server open to the internet is refused"
            )
        private_only = self.existing is None and not self.endpoint_public_access
        if private_only and not (self.deployer_cidrs or self.deployer_security_group_ids):
            raise ValueError(
                "the Kubernetes API is private (endpointPublicAccess false) and only the "
                "control plane's security groups may reach it: give deployerCidrs (the block "
                "pulumi up runs from, e.g. a CI runner subnet or VPN) or "
                "deployerSecurityGroupIds, or set endpointPublicAccess with publicAccessCidrs"
            )
        return self

    @property
    def gpu_node_labels(self) -> dict[str, str]:
        """Labels every GPU node carries (the pods' node affinity)."""
        if self.existing is not None:
            return dict(self.existing.gpu_node_labels)
        return {"weightshift.io/pool": "gpu"}


class ServingConfig(_Model):
    """The inference server each colour runs (an OpenAI-compatible server; vLLM by default)."""

    image: str
    """The server image, pinned by digest."""
    puller_image: str
    """The weightshift image (the repository's ``Dockerfile``), pinned by digest: the init
    container runs ``weightshift bundle pull`` in it, the gateway sidecar ``weightshift
    gateway``."""
    gpus_per_replica: Int = Field(default=1, ge=1, le=16)
    cpu: str = Field(default="8", pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    memory: str = Field(default="64Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    shared_memory: str = Field(default="16Gi", pattern=r"^[0-9]+(Mi|Gi)$")
    """/dev/shm for tensor-parallel workers."""
    max_model_len: Int | None = Field(default=None, ge=256, le=10_000_000)
    startup_timeout_seconds: Int = Field(default=1800, ge=60, le=7200)
    """How long loading the weights may take before the pod is restarted."""
    drain_seconds: Int | None = Field(default=None, ge=0, le=3600)
    """How long a stopping pod keeps answering in-flight requests; default: the target
    group's deregistration delay."""
    extra_args: tuple[str, ...] = ()
    model_port: Int = Field(default=8080, ge=1024, le=65535)
    """The model server's port inside the pod (only the gateway and the kubelet reach it)."""
    moderator: Literal["bedrock", "local"] = "bedrock"
    """bedrock: each bundle's safety.json becomes an Amazon Bedrock Guardrail the gateway
    calls; local: blocked terms and personal-data patterns only, no cloud call."""
    gateway_cpu: str = Field(default="2", pattern=r"^[0-9]+(\.[0-9]+|m)?$")
    gateway_memory: str = Field(default="2Gi", pattern=r"^[0-9]+(Mi|Gi)$")

    @field_validator("image", "puller_image")
    @classmethod
    def _pinned(cls, value: str) -> str:
        return _image(value)


class RollbackConfig(_Model):
    """Automated rollback of the candidate: alarm timing and who is paged."""

    period_seconds: Literal[60] = 60
    """ALB metrics have one-minute resolution: the ALB's alarms evaluate one-minute periods."""
    fast_period_seconds: Literal[10, 20, 30] = 10
    """The gateway's metrics are high resolution: its alarms evaluate periods this short
    (and the gateway sends its metrics this often)."""
    min_requests: Int = Field(default=10, ge=1, le=1_000_000)
    """A rate (errors, slow first tokens, blocked answers) is judged only over at least this
    many requests in its period: a fast period (high traffic) or a minute (low traffic)."""
    min_errors: Int = Field(default=3, ge=1, le=1_000_000)
    """...and only with at least this many of them: one stray error never rolls back."""
    min_feedback: Int = Field(default=10, ge=1, le=1_000_000)
    """The quality score (user feedback) is judged only over minutes with at least this many
    scores: two unhappy users are not a bad model."""
    heartbeat_periods: Int = Field(default=3, ge=2, le=30)
    """Fast periods without a single gateway heartbeat before rollback (every candidate
    pod's gateway reports every period, zeros included, from stage 0 on). At least 2: one
    late or lost datapoint must not roll back."""
    dead_man_minutes: Int = Field(default=5, ge=1, le=60)
    """The dead man's switch's window: it counts the requests the load balancer sent the
    candidate and the answers the candidate gave over this many minutes."""
    dead_man_requests: Int = Field(default=5, ge=1, le=10_000)
    """Roll back when at least this many requests reached the candidate within the window
    and not one was answered (see ``weightshift/rollout/dead_man.py``)."""
    quality_minutes: Int = Field(default=3, ge=1, le=60)
    """Minutes of low quality score (2 of them breaching) before rollback."""
    on_call: tuple[str, ...] = ()
    """Email addresses or HTTPS endpoints subscribed to the on-call topic."""
    log_retention_days: LogRetentionDays = 365
    reserved_concurrency: Int = Field(default=5, ge=1, le=100)

    @field_validator("on_call")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in value:
            if not (
                re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", endpoint)
                or endpoint.startswith("https://")
            ):
                raise ValueError(f"{endpoint!r}: an email address or an https:// endpoint")
        return value


class StackConfig(_Model):
    """Everything under the ``weightshift`` namespace, plus ``aws:region``."""

    region: str
    model: str
    blue: ColourConfig
    green: ColourConfig
    rollout: RolloutConfig
    network: NetworkConfig
    traffic: TrafficConfig
    artifacts: ArtifactsConfig
    cluster: ClusterConfig
    serving: ServingConfig
    rollback: RollbackConfig = RollbackConfig()
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION.match(value):
            raise ValueError("an AWS region name such as us-east-1")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError("lowercase letters, digits and inner hyphens, at most 40 characters")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag in value.items():
            if key.lower().startswith("aws:") or not 1 <= len(key) <= 128 or len(tag) > 256:
                raise ValueError(
                    f"tag {key!r}: keys are 1-128 characters and may not start with aws:, "
                    "values at most 256 characters"
                )
        return value

    def colour(self, colour: Colour) -> ColourConfig:
        return self.blue if colour is Colour.BLUE else self.green

    def _test_route_sources(self) -> list[str]:
        traffic, network = self.traffic, self.network
        if traffic.test_route_cidrs or traffic.internal:
            return []
        if network.vpc_id is not None:
            return [
                "traffic.testRouteCidrs is empty and the ALB is internet-facing in an existing "
                "VPC: callers reach it from their egress addresses, which this stack does not "
                "know; list them (at most three)"
            ]
        nats = len(network.availability_zones) if network.nat_gateways == "per-az" else 1
        if nats > 3:
            return [
                f"traffic.testRouteCidrs is empty, so the test route would admit the {nats} NAT "
                "gateways' addresses, but an ALB rule takes at most three sources beside the "
                "header: list testRouteCidrs, or use natGateways: single"
            ]
        return []

    def _deployer_reachable(self) -> list[str]:
        """A private API in a VPC this stack creates answers only inside it: a deployer
        elsewhere needs a route, which only a transit gateway attachment gives here."""
        cluster, network = self.cluster, self.network
        if cluster.existing is not None or cluster.endpoint_public_access:
            return []
        if network.vpc_id is not None or network.transit_gateway_id is not None:
            return []
        assert network.cidr is not None  # a new VPC has its block (NetworkConfig)
        vpc = ipaddress.IPv4Network(network.cidr)
        outside = [
            cidr
            for cidr in cluster.deployer_cidrs
            if not ipaddress.IPv4Network(cidr).subnet_of(vpc)
        ]
        if not outside:
            return []
        return [
            f"cluster.deployerCidrs {', '.join(outside)} lie outside the new VPC "
            f"({network.cidr}), and nothing routes the private Kubernetes API's answers there: "
            "give network.transitGatewayId (the VPC is attached and routes to those blocks "
            "are declared), or deploy first with endpointPublicAccess and publicAccessCidrs"
        ]

    def cluster_name(self, stack: str) -> str:
        """The EKS cluster's name: an existing cluster's, or one unique to this model and stack
        (two stacks in one account and region must not collide). EKS allows letters, digits,
        hyphens and underscores, at most 100, starting with a letter or digit."""
        if self.cluster.existing is not None:
            return self.cluster.existing.name
        return re.sub(r"[^A-Za-z0-9_-]", "-", f"{self.model}-{stack}")[:100]

    def namespace(self, stack: str, colour: Colour) -> str:
        """The Kubernetes namespace of one colour: unique per stack too, since stacks may
        share an existing cluster. A DNS label: lowercase letters, digits and hyphens, at
        most 63, starting and ending with a letter or digit."""
        label = re.sub(r"[^a-z0-9-]", "-", f"{self.model}-{stack}-{colour.value}".lower())
        if len(label) > 63:
            # Keep the colour: truncate the middle, never the part that tells blue from green.
            label = f"{label[: 62 - len(colour.value)].rstrip('-')}-{colour.value}"
        return label.strip("-")

    @property
    def partition(self) -> str:
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    @model_validator(mode="after")
    def _coherent(self) -> StackConfig:
        problems: list[str] = []
        for colour in Colour:
            bundle = self.colour(colour).bundle
            if bundle is not None and bundle.name != self.model:
                problems.append(
                    f"{colour.value}.version {bundle} is a bundle of {bundle.name!r}, but "
                    f"weightshift:model is {self.model!r}"
                )
        stable, candidate = self.colour(self.rollout.stable), self.colour(self.rollout.candidate)
        bootstrap = stable.version is None and candidate.version is None
        if bootstrap:
            if self.rollout.stage != 0:
                problems.append(
                    "blue.version and green.version are both empty: only stage 0 is possible "
                    "until a bundle is published and named as the stable colour's version"
                )
        elif stable.version is None:
            problems.append(
                f"{self.rollout.stable.value}.version is empty, but {self.rollout.stable.value} is "
                "the stable colour: give it the bundle id now serving production"
            )
        problems += self._deployer_reachable()
        problems += self._test_route_sources()
        if candidate.version is not None and candidate.version == stable.version:
            problems.append(
                f"blue and green both run {candidate.version}: the candidate "
                f"({self.rollout.candidate.value}) needs the new bundle id"
            )
        weights = weights_for(
            self.rollout.strategy,
            self.rollout.stage,
            self.rollout.candidate,
            self.rollout.mirror_percent,
        )
        for colour in Colour:
            served = (
                weights.reaching(colour) if colour is self.rollout.candidate else weights.of(colour)
            ) > 0
            spec = self.colour(colour)
            if served and not bootstrap and (spec.version is None or spec.replicas == 0):
                problems.append(
                    f"rollout stage {self.rollout.stage} sends traffic to {colour.value}, "
                    "which has "
                    f"{'no version' if spec.version is None else '0 replicas'}: give "
                    f"{colour.value} a version and replicas, or stay at stage 0"
                )
        problems += self._capacity_carries_peak()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _capacity_carries_peak(self) -> list[str]:
        capacity = self.rollout.capacity
        if capacity.peak_replicas is None:
            return []
        needed = math.ceil(round(capacity.peak_replicas, 9))
        return [
            f"{colour.value}.replicas is {spec.replicas}, but rollout.capacity says the peak "
            f"({capacity.peak_requests_per_second:g} requests/s at "
            f"{capacity.replica_requests_per_second:g} per replica) needs {needed}: raise "
            f"{colour.value}.replicas, or correct the capacity figures"
            for colour in Colour
            if (spec := self.colour(colour)).version is not None and 0 < spec.replicas < needed
        ]


CONFIG_KEYS = tuple(
    field.alias or name for name, field in StackConfig.model_fields.items() if name != "region"
)
"""The keys under ``weightshift:`` that the program reads."""
_OBJECT_KEYS = frozenset(
    {
        "blue",
        "green",
        "rollout",
        "network",
        "traffic",
        "artifacts",
        "cluster",
        "serving",
        "rollback",
        "tags",
    }
)


@dataclass(frozen=True)
class Problem:
    key: str
    value: Any
    message: str

    def __str__(self) -> str:
        if self.value is _WHOLE:
            return f"{self.key}: {self.message}"
        shown = "missing" if self.value is _MISSING else f"= {json.dumps(self.value, default=str)}"
        return f"{self.key} {shown}: {self.message}"


_MISSING: Any = object()
_WHOLE: Any = object()


class ConfigError(ValueError):
    """An invalid stack config; ``problems`` lists every one found."""

    def __init__(self, problems: list[Problem], source: str = "stack config") -> None:
        self.problems = problems
        self.source = source
        listed = "; ".join(str(p) for p in problems)
        super().__init__(
            f"Invalid {source}: {listed}. Fix the named value(s) and run again; "
            "nothing was deployed."
        )


def _key_path(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return NAMESPACE
    head, *rest = (str(part) for part in loc)
    if head == "region":
        return "aws:region"
    return f"{NAMESPACE}:{head}" + "".join(f".{part}" for part in rest)


def _lookup(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> Any:
    value: Any = data
    for part in loc:
        in_mapping = isinstance(value, Mapping) and part in value
        in_sequence = (
            isinstance(value, list | tuple) and isinstance(part, int) and part < len(value)
        )
        if not (in_mapping or in_sequence):
            return _MISSING
        value = value[part]
    return value


def _message(error: Mapping[str, Any]) -> str:
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def load(values: Mapping[str, Any], source: str = "stack config") -> StackConfig:
    """Validate fully qualified config (``weightshift:model``, ``aws:region``, ...).

    Object-valued keys may be given decoded (from YAML) or as JSON text (as the
    Pulumi engine hands them to the program).
    """
    problems: list[Problem] = []
    data: dict[str, Any] = {}
    for full_key, raw in values.items():
        if raw is None:
            continue
        namespace, _, key = full_key.partition(":")
        if full_key == "aws:region":
            data["region"] = raw
        elif namespace != NAMESPACE:
            continue
        elif key not in CONFIG_KEYS:
            problems.append(
                Problem(full_key, raw, f"unknown key; allowed: {', '.join(CONFIG_KEYS)}")
            )
        elif key in _OBJECT_KEYS and isinstance(raw, str):
            try:
                data[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(Problem(full_key, raw, f"not a JSON object ({exc.msg})"))
        else:
            data[key] = raw
    if problems:
        raise ConfigError(problems, source)
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            loc = tuple(error["loc"])
            value = _lookup(data, loc) if loc else _WHOLE
            problems.append(Problem(_key_path(loc), value, _message(error)))
        raise ConfigError(problems, source) from None
