"""weightshift: one model's rollout on AWS.

Deploys the artifact store (the Object-Locked bucket every bundle is published to),
the network, and an Application Load Balancer whose HTTPS listener splits
requests between the blue and green inference stacks by weight. The weights
come from the configured strategy and stage (``weightshift:rollout``), so a
rollout stage is one ``pulumi up`` that changes only the listener.
Config is read and validated here, once, and passed down as models.
"""

import pulumi
import pulumi_aws as aws

from components.artifact_store import ArtifactStore, ArtifactStoreArgs
from components.network import Network, NetworkArgs
from components.traffic import Traffic, TrafficArgs
from weightshift.config import CONFIG_KEYS, NAMESPACE, ConfigError, StackConfig, load
from weightshift.stages import Strategy, stage_of, weights_for


def read_config() -> StackConfig:
    namespace = pulumi.Config(NAMESPACE)
    values: dict[str, str | None] = {
        f"{NAMESPACE}:{key}": namespace.get(key) for key in CONFIG_KEYS
    }
    values["aws:region"] = pulumi.Config("aws").get("region")
    try:
        return load(values, source=f"config of stack {pulumi.get_stack()}")
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None


config = read_config()
rollout = config.rollout
stage = stage_of(rollout.strategy, rollout.stage, rollout.mirror_percent)
weights = weights_for(rollout.strategy, rollout.stage, rollout.candidate, rollout.mirror_percent)

# Required tags live here and nowhere else: the provider stamps them on every resource.
provider = aws.Provider(
    "aws",
    region=config.region,
    default_tags=aws.ProviderDefaultTagsArgs(
        tags={
            **config.tags,
            "weightshift:model": config.model,
            "weightshift:stack": pulumi.get_stack(),
            "managed-by": "pulumi",
        }
    ),
)
with_provider = pulumi.ResourceOptions(providers=[provider])

artifacts = ArtifactStore(
    "artifacts",
    ArtifactStoreArgs(settings=config.artifacts, region=config.region, partition=config.partition),
    opts=with_provider,
)
network = Network("network", NetworkArgs(settings=config.network), opts=with_provider)
traffic = Traffic(
    "traffic",
    TrafficArgs(
        settings=config.traffic,
        weights=weights,
        stickiness_seconds=rollout.stickiness_seconds,
        mirror=rollout.strategy is Strategy.SHADOW,
        vpc_id=network.vpc_id,
        vpc_cidr=network.vpc_cidr,
        subnet_ids=network.private_subnet_ids
        if config.traffic.internal
        else network.public_subnet_ids,
        region=config.region,
        partition=config.partition,
    ),
    opts=with_provider,
)

pulumi.export("endpoint", traffic.dns_name)
pulumi.export("artifactBucket", artifacts.bucket_name)
pulumi.export("artifactKeyArn", artifacts.key_arn)
pulumi.export("listenerArn", traffic.listener_arn)
pulumi.export("targetGroupArns", traffic.target_group_arns)
pulumi.export("natPublicIps", network.nat_public_ips)
pulumi.export(
    "rollout",
    {
        "strategy": rollout.strategy.value,
        "stage": rollout.stage,
        "gate": stage.gate,
        "candidate": rollout.candidate.value,
        "stable": rollout.stable.value,
        "candidateVersion": config.colour(rollout.candidate).version,
        "stableVersion": config.colour(rollout.stable).version,
        "weights": {"blue": weights.blue, "green": weights.green, "mirror": weights.mirror},
    },
)
