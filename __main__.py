"""weightshift: one model's rollout on AWS.

Deploys the artifact store (the Object-Locked bucket every bundle is published to),
the network, the GPU cluster, one inference stack per colour that has a version, and an
Application Load Balancer whose HTTPS listener splits
requests between the blue and green inference stacks by weight. The weights
come from the configured strategy and stage (``weightshift:rollout``), so a
rollout stage is one ``pulumi up`` that changes only the listener.
Config is read and validated here, once, and passed down as models.
"""

from collections.abc import Mapping

import pulumi
import pulumi_aws as aws

from components.artifact_store import ArtifactStore, ArtifactStoreArgs
from components.gpu_cluster import GpuCluster, GpuClusterArgs
from components.inference_stack import (
    SHADOW_PREFIX,
    SHADOW_TEXT_PREFIX,
    InferenceStack,
    InferenceStackArgs,
)
from components.log_bucket import LogBucket, LogBucketArgs
from components.network import Network, NetworkArgs
from components.rollback import Rollback, RollbackArgs
from components.serving_edge import ServingEdge, ServingEdgeArgs
from components.traffic import Traffic, TrafficArgs
from weightshift.bundles.catalog import CatalogError, ResolvedBundle, catalog_for
from weightshift.config import CONFIG_KEYS, NAMESPACE, ConfigError, StackConfig, load
from weightshift.evaluation.store import ReportStoreError
from weightshift.gates.check import stack_verdict
from weightshift.gates.verdict import traffic_refusal
from weightshift.rollout import capacity, guard
from weightshift.rollout.record import (
    RecordError,
    composite_alarm_name,
    parameter_name,
    silent_activation,
)
from weightshift.rollout.record import read as read_record
from weightshift.stages import Colour, Strategy, schedule, stage_of, weights_for


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


def resolve_bundles(config: StackConfig) -> dict[Colour, ResolvedBundle]:
    """The manifest and generation parameters of each colour's bundle (a colour with no
    version is not deployed)."""
    catalog = catalog_for(config.artifacts.bucket_name, config.region)
    resolved: dict[Colour, ResolvedBundle] = {}
    for colour in Colour:
        bundle = config.colour(colour).bundle
        if bundle is None:
            continue
        try:
            resolved[colour] = catalog.resolve(bundle)
        except CatalogError as error:
            raise pulumi.RunError(f"weightshift:{colour.value}.version: {error}") from None
    return resolved


config = read_config()
bundles = resolve_bundles(config)
rollout = config.rollout
stage = stage_of(rollout.strategy, rollout.stage, rollout.mirror_percent, rollout.mirror_sample)
candidate_version = config.colour(rollout.candidate).version
record_parameter = parameter_name(config.model, pulumi.get_stack())
try:
    record = read_record(record_parameter, region=config.region)
except RecordError as error:
    raise pulumi.RunError(str(error)) from None
# No drift: while the rollback function's record names this candidate, the stable colour
# keeps all traffic whatever the configured stage, exactly as the function left it.
rolled_back = record is not None and record.candidate == candidate_version
rendered_stage = 0 if rolled_back else rollout.stage
weights = weights_for(
    rollout.strategy,
    rendered_stage,
    rollout.candidate,
    rollout.mirror_percent,
    rollout.mirror_sample,
)
# Stickiness overrides weights: at 0 % a client stuck to the candidate would stay on pods
# that are about to go. So it is off whenever the candidate gets no weight.
# ...and while requests are mirrored: a sticky client would stay on the mirror group (or off
# it) for the whole duration, so the mirrored pairs would be sessions, not a random sample.
stickiness = (
    0
    if rolled_back or weights.of(rollout.candidate) == 0 or weights.mirror > 0
    else rollout.stickiness_seconds
)
if rolled_back and record is not None:
    pulumi.log.warn(
        f"{record.summary()}. Configured stage {rollout.stage} is not applied: traffic stays "
        "on the stable colour."
    )
candidate_active = weights.reaching(rollout.candidate) > 0
if candidate_active:
    try:
        silent = silent_activation(
            composite_alarm_name(config.model, pulumi.get_stack(), rollout.candidate.value),
            region=config.region,
        )
    except RecordError as error:
        raise pulumi.RunError(str(error)) from None
    if silent is not None:
        raise pulumi.RunError(silent)

# The candidate's evaluation verdict (its newest passing report for its exact digest),
# recorded on its target group: the stack policy candidate-evaluated reads it.
try:
    verdict = stack_verdict(config, bundles)
except ReportStoreError as error:
    if weights.of(rollout.candidate) > 0:
        raise pulumi.RunError(f"the candidate's evaluation reports: {error}") from None
    pulumi.log.warn(f"the candidate's evaluation reports cannot be read: {error}")
    verdict = None
# Enforced here, before any resource registers: a stack policy runs only after every
# resource of the update is registered, by when the listener would have moved.
if verdict is not None and weights.of(rollout.candidate) > 0 and verdict.decision != "pass":
    raise pulumi.RunError(traffic_refusal(verdict, weights.percent(rollout.candidate.value)))
# Copies of users' prompts reach a candidate only when its evaluation has not failed (none
# yet is the shadow strategy's normal start; a blocked one is not).
if verdict is not None and weights.mirror > 0 and verdict.decision == "blocked":
    raise pulumi.RunError(traffic_refusal(verdict, weights.percent("mirror")))

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
account = aws.get_caller_identity_output(
    opts=pulumi.InvokeOutputOptions(provider=provider)
).account_id

artifacts = ArtifactStore(
    "artifacts",
    ArtifactStoreArgs(settings=config.artifacts, region=config.region, partition=config.partition),
    opts=with_provider,
)
network = Network(
    "network",
    NetworkArgs(settings=config.network, routed_cidrs=config.cluster.deployer_cidrs),
    opts=with_provider,
)
traffic = Traffic(
    "traffic",
    TrafficArgs(
        settings=config.traffic,
        weights=weights,
        stickiness_seconds=stickiness,
        # Shadow mirrors at stage 1; a canary with rollout.shadowSample at its stages between
        # 0 and 100 % (shadow-period monitoring).
        mirror=rollout.strategy is Strategy.SHADOW or rollout.mirror_sample > 0,
        vpc_id=network.vpc_id,
        vpc_cidr=network.vpc_cidr,
        nat_public_ips=network.nat_public_ips,
        subnet_ids=network.private_subnet_ids
        if config.traffic.internal
        else network.public_subnet_ids,
        region=config.region,
        partition=config.partition,
        target_group_tags={rollout.candidate.value: verdict.tags()} if verdict else {},
    ),
    opts=with_provider,
)

cluster = GpuCluster(
    "cluster",
    GpuClusterArgs(
        settings=config.cluster,
        vpc_id=network.vpc_id,
        subnet_ids=network.private_subnet_ids,
        target_group_arns=pulumi.Output.all(*traffic.target_group_arns.values()),
        region=config.region,
        partition=config.partition,
        account=account,
        cluster_name=config.cluster_name(pulumi.get_stack()),
        deployer_paths=network.paths,
    ),
    opts=with_provider,
)
# Mirrored pairs of shadow rollouts: every colour's gateway may write them, so the bucket
# exists whatever the strategy (switching to shadow then restarts no pod).
shadow_records = LogBucket(
    "shadow-records",
    LogBucketArgs(
        region=config.region,
        partition=config.partition,
        retention_days=rollout.shadow_record_days,
        # rollout.shadowTextSample: the pairs that keep their text, under their own prefix,
        # encrypted with the stack's key.
        text_prefix=SHADOW_TEXT_PREFIX if rollout.text_sample > 0 else None,
        text_key_arn=artifacts.key_arn if rollout.text_sample > 0 else None,
    ),
    opts=with_provider,
)
# The ALB's way into both colours' pods, and the key their feedback tokens are signed under:
# once per stack.
edge = ServingEdge(
    "serving",
    ServingEdgeArgs(
        cluster_security_group_id=cluster.security_group_id,
        alb_security_group_id=traffic.security_group_id,
        port=config.traffic.serving_port,
        mirror_port=config.traffic.mirror_port,
        description=f"{config.model} {pulumi.get_stack()}",
    ),
    opts=with_provider,
)
# Capacity before traffic: going up a stage, the listener waits for the candidate's
# Deployment (scaled and ready); going down, or rolled back, the candidate's Deployment waits
# for the listener (weight leaves before capacity does). See weightshift/rollout/capacity.py.
capacity_first = capacity.capacity_first(config, rolled_back)
listener = None if capacity_first else traffic.listen()
alb_subnet_cidrs = (
    network.private_subnet_cidrs if config.traffic.internal else network.public_subnet_cidrs
)
# The same code and serving config for both colours: they differ only in colour, names,
# bundle and replicas.
stacks = {
    colour: InferenceStack(
        colour.value,
        InferenceStackArgs(
            colour=colour,
            model=config.model,
            namespace=config.namespace(pulumi.get_stack(), colour),
            stack=pulumi.get_stack(),
            other_namespace=config.namespace(pulumi.get_stack(), colour.other),
            mirror_port=config.traffic.mirror_port,
            idle_timeout_seconds=config.traffic.idle_timeout_seconds,
            metrics_period_seconds=config.rollback.fast_period_seconds,
            # Shadow: the stable colour's mirror listener serves the mirror target group.
            mirror_target_group_arn=traffic.target_group_arns.get("mirror")
            if colour is rollout.stable
            else None,
            shadow_bucket=shadow_records.bucket,
            shadow_bucket_arn=shadow_records.arn,
            shadow_text_sample=rollout.text_sample,
            shadow_text_key_arn=artifacts.key_arn if rollout.text_sample > 0 else None,
            feedback_key_arn=edge.feedback_key_arn,
            bundle=bundle,
            replicas=capacity.replicas(config, colour),
            full_replicas=config.colour(colour).replicas,
            deployment_after=[listener]
            if listener is not None and colour is rollout.candidate
            else [],
            # Every stage change updates the candidate's Deployment (its metadata only: no
            # pod restarts), so pulumi-kubernetes checks its pods are ready at every stage,
            # even one that does not change its replicas. The configured stage: a rollback
            # record changes nothing on the candidate's pods.
            stage_marker=f"{rollout.strategy.value} {rollout.stage}"
            if colour is rollout.candidate
            else None,
            # Going down (or rolled back) nothing waits for the candidate's pods: they serve
            # nobody, and may be the broken ones; the next stage up waits for them.
            skip_await=colour is rollout.candidate and not capacity_first,
            serving=config.serving,
            port=config.traffic.serving_port,
            health_path=config.traffic.health_check_path,
            deregistration_delay_seconds=config.traffic.deregistration_delay_seconds,
            target_group_arn=traffic.target_group_arns[colour.value],
            bucket_name=artifacts.bucket_name,
            bucket_arn=artifacts.bucket_arn,
            key_arn=artifacts.key_arn,
            cluster_name=cluster.cluster_name,
            alb_subnet_cidrs=alb_subnet_cidrs,
            gpu_node_labels=cluster.gpu_node_labels,
            region=config.region,
            depends_on=[*cluster.ready, *edge.rules],
        ),
        provider=cluster.kubernetes,
        opts=with_provider,
    )
    for colour, bundle in sorted(bundles.items(), key=lambda item: item[0].value)
}


def before_weight_moves(target_groups: Mapping[str, str]) -> None:
    """Once the candidate's pods are ready, just before weight moves to them: the wait can
    take hours (weightshift/rollout/guard.py says what is checked again, and why)."""
    try:
        guard.before_weight_moves(
            parameter=record_parameter,
            candidate_version=str(candidate_version),
            colour=rollout.candidate.value,
            alarm_name=composite_alarm_name(
                config.model, pulumi.get_stack(), rollout.candidate.value
            ),
            target_group_arn=target_groups[rollout.candidate.value],
            region=config.region,
            dry_run=pulumi.runtime.is_dry_run(),
        )
    except guard.GuardError as error:
        raise pulumi.RunError(str(error)) from None


def after_weight_moved(_: object) -> None:
    try:
        guard.after_weight_moved(record_parameter, str(candidate_version), config.region)
    except guard.GuardError as error:
        raise pulumi.RunError(str(error)) from None


if listener is None:
    candidate_stack = stacks.get(rollout.candidate)
    # The Deployment and its TargetGroupBindings: pods ready and registered.
    listener = traffic.listen(
        after=candidate_stack.serving if candidate_stack else [],
        check=before_weight_moves,
    )
    if not pulumi.runtime.is_dry_run():
        listener.arn.apply(after_weight_moved)
if capacity.held(config) and rollout.hold is not None and not rollout.hold.released:
    pulumi.log.info(
        f"{rollout.candidate.value} ({rollout.hold.version}) is held warm after rollout finish; "
        f"`weightshift rollout release` scales it to 0 from {rollout.hold.until.isoformat()} on"
    )

rollback = None
if candidate_version is not None:
    rollback = Rollback(
        "rollback",
        RollbackArgs(
            settings=config.rollback,
            thresholds=rollout.thresholds,
            model=config.model,
            stack=pulumi.get_stack(),
            candidate=rollout.candidate,
            candidate_version=candidate_version,
            active=candidate_active,
            stage_weights=[
                weights_for(
                    rollout.strategy,
                    s.index,
                    rollout.candidate,
                    rollout.mirror_percent,
                    rollout.mirror_sample,
                ).reaching(rollout.candidate)
                for s in schedule(rollout.strategy, rollout.mirror_percent, rollout.mirror_sample)
            ],
            listener_arn=traffic.listener_arn,
            target_group_arns=traffic.target_group_arns,
            candidate_target_group_suffix=traffic.target_group_arn_suffixes[
                rollout.candidate.value
            ],
            load_balancer_suffix=traffic.load_balancer_arn_suffix,
            incident_bucket=artifacts.bucket_name,
            incident_bucket_arn=artifacts.bucket_arn,
            incident_key_arn=artifacts.key_arn,
            record_parameter=record_parameter,
            region=config.region,
            partition=config.partition,
            account=account,
        ),
        opts=with_provider,
    )

pulumi.export("endpoint", traffic.dns_name)
pulumi.export("cluster", cluster.cluster_name)
pulumi.export(
    "inference",
    {
        colour.value: {
            "namespace": stack.namespace,
            "bundle": str(bundles[colour].id),
            "replicas": stack.replicas,
            "gpus": stack.replicas * config.serving.gpus_per_replica,
            "rolloutBudgetSeconds": stack.budget.seconds,
            "rolloutBudget": stack.budget.describe(),
        }
        for colour, stack in stacks.items()
    },
)
pulumi.export("artifactBucket", artifacts.bucket_name)
pulumi.export("artifactKeyArn", artifacts.key_arn)
pulumi.export("listenerArn", traffic.listener_arn)
pulumi.export("targetGroupArns", traffic.target_group_arns)
pulumi.export("natPublicIps", network.nat_public_ips)
# Where the stable colour's gateways write mirrored pairs: `rollout promote` reads them for
# the shadow gate (shadow stage 1 to canary stage 1).
pulumi.export(
    "shadowRecords",
    {"bucket": shadow_records.bucket, "prefixes": [SHADOW_PREFIX, SHADOW_TEXT_PREFIX]},
)
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
        "renderedStage": rendered_stage,
        "rolledBack": rolled_back,
        "rollbackRecord": record.model_dump() if record is not None else None,
        "recordParameter": record_parameter,
    },
)
if rollback is not None:
    pulumi.export(
        "rollback",
        {
            "compositeAlarm": rollback.composite_alarm_name,
            "alarms": rollback.alarm_names,
            "function": rollback.function_name,
            "onCallTopic": rollback.topic_arn,
            "actionsEnabled": candidate_active,
            "settings": rollback.settings,
        },
    )
