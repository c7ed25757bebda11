"""The whole stack config, :class:`StackConfig`: every section, and the checks that span
sections (versions against the model and the stage, the deployer's route, the test route's
sources, capacity against the peak).
"""

from __future__ import annotations

import ipaddress
import math
import re

from pydantic import Field, field_validator, model_validator

from weightshift.bundles.versioning import is_model_name
from weightshift.config.cluster import ClusterConfig, ServingConfig
from weightshift.config.fields import Section
from weightshift.config.network import ArtifactsConfig, NetworkConfig, TrafficConfig
from weightshift.config.rollout import ColourConfig, RollbackConfig, RolloutConfig
from weightshift.stages import Colour, weights_for

NAMESPACE = "weightshift"

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]$")


class StackConfig(Section):
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
        problems = [
            *self._bundles_of_the_model(),
            *self._stable_version(),
            *self._deployer_reachable(),
            *self._test_route_sources(),
            *self._candidate_is_new(),
            *self._served_colours_run(),
            *self._capacity_carries_peak(),
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def _bootstrap(self) -> bool:
        """Neither colour has a version yet: the first deploy, before any bundle serves."""
        return self.blue.version is None and self.green.version is None

    def _bundles_of_the_model(self) -> list[str]:
        problems: list[str] = []
        for colour in Colour:
            bundle = self.colour(colour).bundle
            if bundle is not None and bundle.name != self.model:
                problems.append(
                    f"{colour.value}.version {bundle} is a bundle of {bundle.name!r}, but "
                    f"weightshift:model is {self.model!r}"
                )
        return problems

    def _stable_version(self) -> list[str]:
        if self._bootstrap:
            if self.rollout.stage != 0:
                return [
                    "blue.version and green.version are both empty: only stage 0 is possible "
                    "until a bundle is published and named as the stable colour's version"
                ]
        elif self.colour(self.rollout.stable).version is None:
            return [
                f"{self.rollout.stable.value}.version is empty, but {self.rollout.stable.value} is "
                "the stable colour: give it the bundle id now serving production"
            ]
        return []

    def _candidate_is_new(self) -> list[str]:
        stable, candidate = self.colour(self.rollout.stable), self.colour(self.rollout.candidate)
        if candidate.version is not None and candidate.version == stable.version:
            return [
                f"blue and green both run {candidate.version}: the candidate "
                f"({self.rollout.candidate.value}) needs the new bundle id"
            ]
        return []

    def _served_colours_run(self) -> list[str]:
        """Every colour the stage sends traffic to (or mirrors to) has a version and replicas."""
        if self._bootstrap:
            return []
        weights = weights_for(
            self.rollout.strategy,
            self.rollout.stage,
            self.rollout.candidate,
            self.rollout.mirror_percent,
        )
        problems: list[str] = []
        for colour in Colour:
            served = (
                weights.reaching(colour) if colour is self.rollout.candidate else weights.of(colour)
            ) > 0
            spec = self.colour(colour)
            if served and (spec.version is None or spec.replicas == 0):
                problems.append(
                    f"rollout stage {self.rollout.stage} sends traffic to {colour.value}, "
                    "which has "
                    f"{'no version' if spec.version is None else '0 replicas'}: give "
                    f"{colour.value} a version and replicas, or stay at stage 0"
                )
        return problems

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
