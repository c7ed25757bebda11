"""Where the model runs: the EKS cluster (new with its node groups, or an existing one) and
the inference server each colour runs on it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from weightshift.config.fields import (
    Flag,
    Int,
    LogRetentionDays,
    Section,
    aws_ids,
    chart_version,
    cidr_block,
    pinned_image,
)

_LABEL = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_CLUSTER_NAME = re.compile(r"^[0-9A-Za-z][A-Za-z0-9_-]{0,99}$")

GPU_AMI_TYPES = ("AL2023_x86_64_NVIDIA", "BOTTLEROCKET_x86_64_NVIDIA")
"""AMIs with the NVIDIA driver; only AL2023 needs the device plugin installed (Bottlerocket
ships it)."""

EKS_VERSIONS = ("1.31", "1.32", "1.33", "1.34", "1.35")
"""Kubernetes versions weightshift is tested against (the manifests are validated against
each one's JSON schema)."""


class NodeGroupConfig(Section):
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


class ExistingClusterConfig(Section):
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


class ClusterConfig(Section):
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
    device_plugin_chart_version: Annotated[str, chart_version("nvidia-device-plugin")] = "0.17.1"
    load_balancer_controller_chart_version: Annotated[
        str, chart_version("aws-load-balancer-controller")
    ] = "1.14.0"
    autoscaler_chart_version: Annotated[str, chart_version("cluster-autoscaler")] = "9.59.0"

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
        return tuple(cidr_block(cidr) for cidr in value)

    @field_validator("deployer_security_group_ids")
    @classmethod
    def _groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return aws_ids(value, "sg", "security group")

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


class ServingConfig(Section):
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
        return pinned_image(value)
