"""Stack config validation: every class of bad value is named, with what is allowed."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from weightshift.config import CONFIG_KEYS, ConfigError, StackConfig, load
from weightshift.stages import Colour, Strategy


def with_value(values: dict[str, Any], key: str, path: list[str], value: Any) -> dict[str, Any]:
    result = copy.deepcopy(values)
    node = result[key]
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return result


def problems(values: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(values)
    return [str(p) for p in caught.value.problems]


def test_the_prod_stack_is_valid(prod_values: dict[str, Any]) -> None:
    config = load(prod_values)
    assert isinstance(config, StackConfig)
    assert config.rollout.strategy is Strategy.CANARY
    assert config.rollout.candidate is Colour.GREEN
    assert config.rollout.stable is Colour.BLUE
    assert config.colour(Colour.BLUE).bundle is not None
    assert config.partition == "aws"


def test_objects_may_arrive_as_json_text_as_the_engine_sends_them(
    prod_values: dict[str, Any],
) -> None:
    import json

    as_engine = {k: v if isinstance(v, str) else json.dumps(v) for k, v in prod_values.items()}
    assert load(as_engine) == load(prod_values)


@pytest.mark.parametrize(
    ("key", "path", "value", "expected"),
    [
        (
            "weightshift:rollout",
            ["stage"],
            99,
            "weightshift:rollout.stage = 99: not a stage of strategy canary; allowed 0 to 5",
        ),
        (
            "weightshift:rollout",
            ["stage"],
            -1,
            "weightshift:rollout.stage = -1: Input should be greater than or equal to 0",
        ),
        (
            "weightshift:rollout",
            ["strategy"],
            "linear",
            'weightshift:rollout.strategy = "linear": '
            "Input should be 'canary', 'blue-green' or 'shadow'",
        ),
        (
            "weightshift:rollout",
            ["candidate"],
            "red",
            "weightshift:rollout.candidate = \"red\": Input should be 'blue' or 'green'",
        ),
        (
            "weightshift:rollout",
            ["stickinessSeconds"],
            604801,
            "weightshift:rollout.stickinessSeconds = 604801",
        ),
        (
            "weightshift:rollout",
            ["thresholds", "maxToxicity"],
            2,
            "weightshift:rollout.thresholds.maxToxicity = 2",
        ),
        (
            "weightshift:rollout",
            ["thresholds", "latencyP99"],
            2,
            "weightshift:rollout.thresholds.latencyP99 = 2: unknown key; did you mean "
            "latencyP99Seconds? allowed: latencyP99Seconds, errorRatePercent,",
        ),
        (
            "weightshift:blue",
            ["version"],
            "support-assistant/v1.4-3f9a1c2b7d4e",
            'weightshift:blue.version = "support-assistant/v1.4-3f9a1c2b7d4e": '
            "'support-assistant/v1.4-3f9a1c2b7d4e' is not a bundle id",
        ),
        ("weightshift:blue", ["replicas"], "many", 'weightshift:blue.replicas = "many"'),
        (
            "weightshift:traffic",
            ["certificateArn"],
            "arn:aws:iam::1:server-certificate/x",
            "weightshift:traffic.certificateArn",
        ),
        ("weightshift:traffic", ["sslPolicy"], "ELBSecurityPolicy-2016-08", "allowed TLS policies"),
        (
            "weightshift:traffic",
            ["ingressCidrs"],
            ["10.0.0.1/8"],
            'weightshift:traffic.ingressCidrs = ["10.0.0.1/8"]: not an IPv4 CIDR block',
        ),
        ("weightshift:traffic", ["testHeader"], "X Colour", "weightshift:traffic.testHeader"),
        (
            "weightshift:traffic",
            ["testRouteCidrs"],
            ["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"],
            "weightshift:traffic.testRouteCidrs",
        ),
        ("weightshift:network", ["cidr"], "10.0.0.0/8", "must be a /16 to /20 block"),
        ("weightshift:network", ["cidr"], "10.40.0.0/8", "did you mean 10.0.0.0/8?"),
        (
            "weightshift:network",
            ["availabilityZones"],
            ["us-east-1a"],
            "availabilityZones (two or more)",
        ),
    ],
)
def test_each_bad_value_is_named_with_what_is_allowed(
    prod_values: dict[str, Any], key: str, path: list[str], value: Any, expected: str
) -> None:
    found = problems(with_value(prod_values, key, path, value))
    assert any(expected in p for p in found), found


def test_unknown_keys_are_refused_with_the_allowed_list(prod_values: dict[str, Any]) -> None:
    prod_values["weightshift:rollot"] = {"stage": 1}
    (found,) = problems(prod_values)
    assert found.startswith("weightshift:rollot")
    for key in CONFIG_KEYS:
        assert key in found


def test_a_top_level_typo_gets_the_closest_key(prod_values: dict[str, Any]) -> None:
    prod_values["weightshift:rollot"] = {"stage": 1}
    (found,) = problems(prod_values)
    assert found.startswith('weightshift:rollot = {"stage": 1}: unknown key; did you mean rollout?')


@pytest.mark.parametrize(
    ("key", "path", "meant"),
    [
        ("weightshift:rollout", ["stickinesSeconds"], "stickinessSeconds"),
        ("weightshift:rollout", ["capacity", "holdHour"], "holdHours"),
        ("weightshift:rollout", ["thresholds", "errorRatePercnt"], "errorRatePercent"),
        ("weightshift:blue", ["verson"], "version"),
        ("weightshift:green", ["replica"], "replicas"),
        ("weightshift:traffic", ["ingresCidrs"], "ingressCidrs"),
        ("weightshift:network", ["vpcCdr"], "vpcCidr"),
        ("weightshift:artifacts", ["retentionDay"], "retentionDays"),
        ("weightshift:cluster", ["endpointPublicAcess"], "endpointPublicAccess"),
        ("weightshift:cluster", ["gpuNodeGroups", 0, "gpusPerNod"], "gpusPerNode"),
        ("weightshift:serving", ["gpusPerReplca"], "gpusPerReplica"),
        ("weightshift:rollback", ["onCal"], "onCall"),
    ],
)
def test_a_nested_typo_gets_its_path_the_keys_allowed_there_and_the_closest(
    prod_values: dict[str, Any], key: str, path: list[str | int], meant: str
) -> None:
    node = prod_values[key]
    for part in path[:-1]:  # a section the stack file leaves out is added
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = 1
    (found,) = problems(prod_values)
    dotted = ".".join(str(part) for part in [key, *path])
    assert found.startswith(f"{dotted} = 1: unknown key; did you mean {meant}? allowed: ")
    allowed = found.split("allowed: ", 1)[1].split(", ")
    assert meant in allowed
    assert path[-1] not in allowed


def test_sections_not_in_the_stack_file_get_their_own_keys(prod_values: dict[str, Any]) -> None:
    rollout = prod_values["weightshift:rollout"]
    rollout["hold"] = {
        "version": "support-assistant/v1.4.2-424ef6470390",
        "until": "2026-11-28T09:00:00+00:00",
        "relased": True,
    }
    (found,) = problems(prod_values)
    assert found == (
        "weightshift:rollout.hold.relased = true: unknown key; did you mean released? "
        "allowed: version, until, released"
    )
    prod_values["weightshift:rollout"] = {k: v for k, v in rollout.items() if k != "hold"}
    prod_values["weightshift:cluster"]["systemNodes"] = {
        "name": "system",
        "instanceTypes": ["m7i.large"],
        "minSiz": 2,
    }
    (found,) = problems(prod_values)
    assert found.startswith(
        "weightshift:cluster.systemNodes.minSiz = 2: unknown key; did you mean minSize? "
        "allowed: name, instanceTypes, amiType,"
    )


def test_a_nested_key_with_nothing_close_gets_every_allowed_key(
    prod_values: dict[str, Any],
) -> None:
    prod_values["weightshift:rollout"]["thresholds"]["xyzzy"] = 1
    (found,) = problems(prod_values)
    assert found == (
        "weightshift:rollout.thresholds.xyzzy = 1: unknown key; allowed: latencyP99Seconds, "
        "errorRatePercent, minQualityScore, maxSafetyViolationPercent, maxToxicity, "
        "minWinRate, maxLatencyRegressionPercent, minAdversarialPassRate, gateActions"
    )


def test_missing_keys_are_reported_all_at_once(prod_values: dict[str, Any]) -> None:
    del prod_values["weightshift:model"]
    del prod_values["aws:region"]
    found = problems(prod_values)
    assert "weightshift:model missing: Field required" in found
    assert "aws:region missing: Field required" in found


def test_a_version_of_another_model_is_refused(prod_values: dict[str, Any]) -> None:
    bad = with_value(
        prod_values, "weightshift:green", ["version"], "other-model/v2.0.0-a1b2c3d4e5f6"
    )
    (found,) = problems(bad)
    assert "bundle of 'other-model'" in found


def test_the_same_version_in_both_colours_is_refused(prod_values: dict[str, Any]) -> None:
    same = prod_values["weightshift:blue"]["version"]
    (found,) = problems(with_value(prod_values, "weightshift:green", ["version"], same))
    assert "blue and green both run" in found


def test_the_stable_colour_must_have_a_version(prod_values: dict[str, Any]) -> None:
    (found,) = problems(with_value(prod_values, "weightshift:blue", ["version"], None))
    assert "blue.version is empty, but blue is the stable colour" in found


def test_bootstrap_with_no_versions_stays_at_stage_0(prod_values: dict[str, Any]) -> None:
    empty = with_value(
        with_value(prod_values, "weightshift:blue", ["version"], None),
        "weightshift:green",
        ["version"],
        None,
    )
    assert load(empty).blue.version is None
    (found,) = problems(with_value(empty, "weightshift:rollout", ["stage"], 1))
    assert "both empty: only stage 0 is possible" in found


def test_a_candidate_without_a_version_may_only_stay_at_stage_0(
    prod_values: dict[str, Any],
) -> None:
    idle = with_value(prod_values, "weightshift:green", ["version"], None)
    assert load(idle).green.version is None
    moving = with_value(idle, "weightshift:rollout", ["stage"], 1)
    (found,) = problems(moving)
    assert "sends traffic to green, which has no version" in found


def test_a_candidate_with_no_replicas_gets_no_traffic(prod_values: dict[str, Any]) -> None:
    bad = with_value(prod_values, "weightshift:green", ["replicas"], 0)
    bad = with_value(bad, "weightshift:rollout", ["stage"], 2)
    (found,) = problems(bad)
    assert "sends traffic to green, which has 0 replicas" in found


def test_existing_vpc_needs_its_block_and_two_subnets_of_each_tier(
    prod_values: dict[str, Any],
) -> None:
    prod_values["weightshift:network"] = {
        "vpcId": "vpc-0123456789abcdef0",
        "publicSubnetIds": ["subnet-0123456789abcdef0"],
        "privateSubnetIds": ["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"],
    }
    found = " ".join(problems(prod_values))
    assert "vpcCidr" in found
    prod_values["weightshift:network"]["vpcCidr"] = "10.0.0.0/16"
    assert "at least two" in " ".join(problems(prod_values))
    prod_values["weightshift:network"]["publicSubnetIds"].append("subnet-0123456789abcdef3")
    assert "publicSubnetCidrs and privateSubnetCidrs" in " ".join(problems(prod_values))
    prod_values["weightshift:network"]["publicSubnetCidrs"] = ["10.0.0.0/24", "10.0.1.0/24"]
    prod_values["weightshift:network"]["privateSubnetCidrs"] = ["10.0.32.0/19", "10.0.64.0/19"]
    # Internet-facing in a VPC this stack does not create: who may use the test route must be
    # said (the callers' egress addresses are not known here).
    (found_route,) = problems(prod_values)
    assert "traffic.testRouteCidrs is empty and the ALB is internet-facing" in found_route
    prod_values["weightshift:traffic"]["testRouteCidrs"] = ["203.0.113.0/24"]
    assert load(prod_values).network.vpc_id == "vpc-0123456789abcdef0"
    prod_values["weightshift:network"]["transitGatewayId"] = "tgw-0a1b2c3d4e5f67890"
    (found_tgw,) = problems(prod_values)
    assert "an existing VPC's routes are its owner's" in found_tgw


def test_error_message_is_one_paragraph_saying_nothing_was_deployed(
    prod_values: dict[str, Any],
) -> None:
    bad = with_value(prod_values, "weightshift:rollout", ["stage"], 99)
    with pytest.raises(ConfigError) as caught:
        load(bad, source="config of stack prod")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("Invalid config of stack prod: weightshift:rollout.stage = 99")
    assert message.endswith("nothing was deployed.")


def test_an_unquoted_kubernetes_version_is_refused_with_the_fix(
    prod_values: dict[str, Any],
) -> None:
    (found,) = problems(with_value(prod_values, "weightshift:cluster", ["version"], 1.3))
    assert found.startswith("weightshift:cluster.version = 1.3: quote the version")
    (found,) = problems(with_value(prod_values, "weightshift:cluster", ["version"], "1.20"))
    assert "allowed Kubernetes versions: 1.31, 1.32, 1.33, 1.34, 1.35" in found


def test_images_must_be_pinned_by_digest(prod_values: dict[str, Any]) -> None:
    (found,) = problems(
        with_value(prod_values, "weightshift:serving", ["image"], "vllm/vllm-openai:latest")
    )
    assert found.startswith('weightshift:serving.image = "vllm/vllm-openai:latest": an image')
    assert "pinned by digest" in found


def test_node_group_sizes_and_ami_are_checked(prod_values: dict[str, Any]) -> None:
    group = prod_values["weightshift:cluster"]["gpuNodeGroups"][0]
    (found,) = problems(
        with_value(
            prod_values, "weightshift:cluster", ["gpuNodeGroups"], [{**group, "minSize": 20}]
        )
    )
    assert "need minSize <= desiredSize <= maxSize (got 20, 4, 16)" in found
    (found,) = problems(
        with_value(
            prod_values,
            "weightshift:cluster",
            ["gpuNodeGroups"],
            [{**group, "amiType": "AL2023_x86_64_STANDARD"}],
        )
    )
    assert "a GPU node group needs one of AL2023_x86_64_NVIDIA, BOTTLEROCKET_x86_64_NVIDIA" in found


def test_a_public_api_endpoint_needs_source_cidrs(prod_values: dict[str, Any]) -> None:
    (found,) = problems(
        with_value(prod_values, "weightshift:cluster", ["endpointPublicAccess"], True)
    )
    assert "endpointPublicAccess needs publicAccessCidrs" in found


def test_the_artifact_bucket_name_is_checked(prod_values: dict[str, Any]) -> None:
    (found,) = problems(
        with_value(prod_values, "weightshift:artifacts", ["bucketName"], "Bad.Bucket")
    )
    assert found.startswith('weightshift:artifacts.bucketName = "Bad.Bucket": an S3 bucket name')


@pytest.mark.parametrize(
    ("key", "path", "value", "expected"),
    [
        # YAML 1.1 reads yes/on as true: a lax model took `stage: yes` for stage 1 (1 % of
        # traffic to the candidate) and `replicas: on` for one replica.
        ("weightshift:rollout", ["stage"], True, "weightshift:rollout.stage = true: a number"),
        ("weightshift:green", ["replicas"], True, "weightshift:green.replicas = true: a number"),
        ("weightshift:blue", ["replicas"], False, "weightshift:blue.replicas = false: a number"),
        ("weightshift:rollout", ["stage"], 1.0, "weightshift:rollout.stage = 1.0"),
        ("weightshift:rollout", ["stage"], "1", 'weightshift:rollout.stage = "1": a number'),
        (
            "weightshift:rollout",
            ["thresholds", "latencyP99Seconds"],
            True,
            "weightshift:rollout.thresholds.latencyP99Seconds = true: a number",
        ),
        (
            "weightshift:traffic",
            ["deregistrationDelaySeconds"],
            "180",
            "without quotes",
        ),
        ("weightshift:traffic", ["internal"], 1, "weightshift:traffic.internal = 1: true or false"),
    ],
)
def test_numbers_and_flags_are_strict(
    prod_values: dict[str, Any], key: str, path: list[str], value: Any, expected: str
) -> None:
    found = problems(with_value(prod_values, key, path, value))
    assert any(expected in problem for problem in found), found


def test_a_yes_in_the_stack_file_is_not_stage_1(tmp_path: Any) -> None:
    """End to end through the YAML loader: `stage: yes` is refused, not deployed as 1 %."""
    from tests.conftest import PROJECT
    from weightshift.preview.synth import stack_config

    text = (PROJECT / "Pulumi.prod.yaml").read_text().replace("stage: 0", "stage: yes")
    (tmp_path / "Pulumi.prod.yaml").write_text(text)
    found = problems(stack_config(tmp_path, "prod"))
    assert found[0].startswith("weightshift:rollout.stage = true: a number, not the boolean")


@pytest.mark.parametrize("days", [0, 100, 366, 4000])
def test_log_retention_takes_only_what_cloudwatch_accepts(
    prod_values: dict[str, Any], days: int
) -> None:
    """CloudWatch Logs PutRetentionPolicy refuses any other value (facts.py)."""
    for key in ("weightshift:cluster", "weightshift:network"):
        field = "logRetentionDays" if key == "weightshift:cluster" else "flowLogRetentionDays"
        (found,) = problems(with_value(prod_values, key, [field], days))
        assert f"{key}.{field} = {days}: CloudWatch Logs keeps logs only for 1, 3, 5" in found
    (found,) = problems({**prod_values, "weightshift:rollback": {"logRetentionDays": days}})
    assert "weightshift:rollback.logRetentionDays" in found
    if days == 100:
        assert "the next allowed value is 120" in found


@pytest.mark.parametrize("days", [1, 365, 400, 3653])
def test_every_cloudwatch_retention_value_is_accepted(
    prod_values: dict[str, Any], days: int
) -> None:
    config = load(with_value(prod_values, "weightshift:cluster", ["logRetentionDays"], days))
    assert config.cluster.log_retention_days == days


def test_an_empty_version_leaves_the_colour_undeployed(prod_values: dict[str, Any]) -> None:
    """The README's first deploy: `version: ""` is the natural way to say none yet."""
    empty = with_value(prod_values, "weightshift:green", ["version"], "")
    assert load(empty).green.version is None
    both = with_value(empty, "weightshift:blue", ["version"], "  ")
    assert load(both).blue.version is None


def test_a_private_api_needs_the_deployer_admitted(prod_values: dict[str, Any]) -> None:
    cluster = copy.deepcopy(prod_values["weightshift:cluster"])
    del cluster["deployerCidrs"]
    (found,) = problems({**prod_values, "weightshift:cluster": cluster})
    assert "give deployerCidrs" in found
    assert "deployerSecurityGroupIds" in found
    by_group = {**cluster, "deployerSecurityGroupIds": ["sg-0123456789abcdef0"]}
    assert load({**prod_values, "weightshift:cluster": by_group}).cluster.deployer_cidrs == ()
    public = {**cluster, "endpointPublicAccess": True, "publicAccessCidrs": ["203.0.113.0/24"]}
    assert load({**prod_values, "weightshift:cluster": public})
    (bad,) = problems(
        {**prod_values, "weightshift:cluster": {**cluster, "deployerSecurityGroupIds": ["x"]}}
    )
    assert "'x' is not a security group id" in bad


def test_only_chart_versions_with_recorded_defaults_are_accepted(
    prod_values: dict[str, Any],
) -> None:
    (found,) = problems(
        with_value(prod_values, "weightshift:cluster", ["devicePluginChartVersion"], "0.18.0")
    )
    assert "nvidia-device-plugin 0.18.0 is not a version weightshift has checked" in found
    assert "allowed: 0.17.1" in found


def test_cluster_and_namespace_names_are_unique_per_stack(prod_values: dict[str, Any]) -> None:
    config = load(prod_values)
    assert config.cluster_name("prod") == "support-assistant-prod"
    assert config.cluster_name("staging.eu") == "support-assistant-staging-eu"
    assert config.namespace("prod", Colour.BLUE) == "support-assistant-prod-blue"
    long = config.namespace("a-very-long-stack-name-for-an-experiment-" * 2, Colour.GREEN)
    assert len(long) <= 63
    assert long.endswith("-green")
    assert long[0].isalnum()


def test_a_deployer_outside_a_new_vpc_needs_a_route(prod_values: dict[str, Any]) -> None:
    """The private API answers only inside the VPC: a runner elsewhere needs the transit
    gateway route, which the stack declares when it is given one."""
    network = {
        k: v for k, v in prod_values["weightshift:network"].items() if k != "transitGatewayId"
    }
    (found,) = problems({**prod_values, "weightshift:network": network})
    assert "cluster.deployerCidrs 10.20.8.0/22 lie outside the new VPC (10.40.0.0/16)" in found
    assert "network.transitGatewayId" in found
    inside = copy.deepcopy(prod_values["weightshift:cluster"])
    inside["deployerCidrs"] = ["10.40.224.0/24"]
    assert load({**prod_values, "weightshift:network": network, "weightshift:cluster": inside})


def test_the_test_route_fits_an_alb_rule(prod_values: dict[str, Any]) -> None:
    network = {
        **prod_values["weightshift:network"],
        "availabilityZones": ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"],
    }
    (found,) = problems({**prod_values, "weightshift:network": network})
    assert "would admit the 4 NAT gateways' addresses" in found
    single = {**network, "natGateways": "single"}
    assert load({**prod_values, "weightshift:network": single})


def test_an_object_lock_of_more_than_ten_years_is_refused(prod_values: dict[str, Any]) -> None:
    """A COMPLIANCE lock can never be shortened: 36500 for 3650 would be a century."""
    assert load(with_value(prod_values, "weightshift:artifacts", ["retentionDays"], 3653))
    (found,) = problems(with_value(prod_values, "weightshift:artifacts", ["retentionDays"], 36500))
    assert found.startswith("weightshift:artifacts.retentionDays = 36500:")
    assert "3653" in found
