"""The rollback alarms, the function's wiring and IAM, and no drift, in the synthesized program."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PROJECT, listener_weights, synth
from tests.metric_math import evaluate
from weightshift.preview.synth import Graph, apply_overrides, stack_config, synthesize
from weightshift.rollout import rates
from weightshift.rollout.dead_man import ANSWER_QUERY_IDS, Verdict, decide, expression
from weightshift.rollout.record import RollbackRecord
from weightshift.stages import Strategy, schedule

PREFIX = "support-assistant-prod-green"
CANDIDATE = "support-assistant/v1.5.0-d80719af096e"


@pytest.fixture(scope="module")
def live() -> Graph:
    """Stage 2: the candidate has traffic, so the alarms act."""
    return synth("rollout.stage=2")


def alarm(graph: Graph, suffix: str) -> dict[str, Any]:
    return graph.named(f"rollback-{suffix}", "MetricAlarm").inputs


GATEWAY = {"Model": "support-assistant", "Colour": "green"}
"""The candidate's gateways by colour: whichever bundle its pods run (a rolling update of the
candidate keeps its heartbeat and its rates)."""


@pytest.mark.parametrize(("suffix", "period"), [("latency-p99", 10), ("latency-p99-1m", 60)])
def test_latency_is_the_share_of_first_tokens_slower_than_the_p99_threshold(
    live: Graph, suffix: str, period: int
) -> None:
    """p99 above 8 s is more than 1 % of first tokens above 8 s: a percentile rank, judged
    on enough samples. CloudWatch's own p99 is judged only over 1,000 samples a period."""
    latency = alarm(live, suffix)
    assert latency["name"] == f"{PREFIX}-{suffix}"
    assert "extendedStatistic" not in latency
    queries = {q["id"]: q for q in latency["metricQueries"]}
    assert set(queries) == {"slow", "above", "samples"}
    assert queries["slow"]["returnData"] is True
    assert queries["slow"]["expression"] == rates.percent_expression("above", "samples", 10, 3)
    above, samples = queries["above"]["metric"], queries["samples"]["metric"]
    for metric in (above, samples):
        assert (metric["namespace"], metric["metricName"]) == ("weightshift", "TimeToFirstToken")
        assert metric["dimensions"] == GATEWAY
        assert metric["period"] == period
    assert above["stat"] == "PR(8:)"  # Pulumi.prod.yaml: latencyP99Seconds 8
    assert samples["stat"] == "SampleCount"
    assert (latency["comparisonOperator"], latency["threshold"]) == ("GreaterThanThreshold", 1)
    assert (latency["evaluationPeriods"], latency["datapointsToAlarm"]) == (1, 1)
    assert latency["treatMissingData"] == "notBreaching"


@pytest.mark.parametrize("samples", [None, 0, 5, 9, 10, 100, 250, 1000])
@pytest.mark.parametrize("slow", [0, 1, 2, 3, 4, 10, 100])
def test_the_latency_expression_decides_as_the_rate_function(
    live: Graph, samples: int | None, slow: int
) -> None:
    """``slow`` of ``samples`` first tokens above the threshold, as CloudWatch's percentile
    rank reports it (a percentage), against ``rates.rate``."""
    text = next(
        q["expression"] for q in alarm(live, "latency-p99")["metricQueries"] if q["id"] == "slow"
    )
    count = samples or 0
    slow = min(slow, count)
    percent = None if samples is None else (100 * slow / count if count else 0.0)
    found = evaluate(text, {"above": percent, "samples": samples})
    assert found == pytest.approx(rates.rate(slow, count, 10, 3))


def _rate_queries(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert "period" not in found
    assert "metricName" not in found
    queries = {q["id"]: q for q in found["metricQueries"]}
    assert set(queries) == {"rate", "events", "requests"}
    assert queries["rate"]["returnData"] is True
    assert queries["events"]["returnData"] is queries["requests"]["returnData"] is False
    # Rollback settings: minRequests 10, minErrors 3 (config defaults).
    assert queries["rate"]["expression"] == rates.expression("events", "requests", 10, 3)
    return queries


@pytest.mark.parametrize(("suffix", "period"), [("errors", 10), ("errors-1m", 60)])
def test_error_rate_is_metric_math_over_the_gateways_errors_and_requests(
    live: Graph, suffix: str, period: int
) -> None:
    """Every 10 s for a quick verdict at high traffic; every minute, where a canary's share
    of a quiet service gathers the requests to judge."""
    errors = alarm(live, suffix)
    queries = _rate_queries(errors)
    for query_id, metric in (("events", "Errors"), ("requests", "Requests")):
        stat = queries[query_id]["metric"]
        assert (stat["namespace"], stat["metricName"]) == ("weightshift", metric)
        assert (stat["stat"], stat["period"]) == ("Sum", period)
        assert stat["dimensions"] == GATEWAY
    assert (errors["comparisonOperator"], errors["threshold"]) == ("GreaterThanThreshold", 0.5)
    assert errors["treatMissingData"] == "notBreaching"


def test_connections_the_candidate_refused_are_judged_from_the_load_balancer(
    live: Graph,
) -> None:
    """A crashed pod answers nothing and its gateway counts nothing: the ALB's own 502s
    (TargetConnectionErrorCount; target codes exclude load-balancer-generated ones)."""
    refused = alarm(live, "refused")
    queries = _rate_queries(refused)
    for query_id, metric in (
        ("events", "TargetConnectionErrorCount"),
        ("requests", "RequestCount"),
    ):
        stat = queries[query_id]["metric"]
        assert (stat["namespace"], stat["metricName"]) == ("AWS/ApplicationELB", metric)
        assert (stat["stat"], stat["period"]) == ("Sum", 60)
        assert stat["dimensions"]["TargetGroup"].startswith("targetgroup/traffic-green-")
        assert stat["dimensions"]["LoadBalancer"].startswith("app/traffic-alb-")
    green_arn = live.outputs["targetGroupArns"]["green"]
    assert green_arn.endswith(queries["events"]["metric"]["dimensions"]["TargetGroup"])


def test_quality_is_judged_only_over_minutes_with_enough_feedback(live: Graph) -> None:
    quality = alarm(live, "quality")
    queries = {q["id"]: q for q in quality["metricQueries"]}
    assert queries["quality"]["expression"] == rates.mean_expression("score", "scores", 10, 1.0)
    for query_id, stat in (("score", "Average"), ("scores", "SampleCount")):
        metric = queries[query_id]["metric"]
        assert (metric["namespace"], metric["metricName"]) == ("weightshift", "QualityScore")
        # Feedback may reach the other colour's pod: it names the colour that answered only.
        assert metric["dimensions"] == GATEWAY
        assert (metric["stat"], metric["period"]) == (stat, 60)
    assert quality["treatMissingData"] == "notBreaching"
    assert (quality["comparisonOperator"], quality["threshold"]) == ("LessThanThreshold", 0.82)
    assert (quality["evaluationPeriods"], quality["datapointsToAlarm"]) == (3, 2)
    text = queries["quality"]["expression"]
    # Two unhappy users in a minute are not a bad model; twenty are.
    assert evaluate(text, {"score": 0.0, "scores": 2}) == 1
    assert evaluate(text, {"score": 0.3, "scores": 20}) == 0.3
    assert evaluate(text, {"score": None, "scores": None}) == 1


def test_safety_is_the_rate_of_blocked_answers(live: Graph) -> None:
    safety = alarm(live, "safety")
    queries = _rate_queries(safety)
    assert queries["events"]["metric"]["metricName"] == "OutputBlocks"
    assert queries["requests"]["metric"]["metricName"] == "Requests"
    assert queries["events"]["metric"]["dimensions"] == GATEWAY
    assert (safety["comparisonOperator"], safety["threshold"]) == ("GreaterThanThreshold", 0.2)


def test_a_candidate_whose_gateways_stop_reporting_is_rolled_back(live: Graph) -> None:
    """Every gateway sends a Heartbeat of 1 every 10 s from stage 0 on: three silent periods
    are a breach, whatever the traffic (one late or lost datapoint is not)."""
    silent = alarm(live, "no-heartbeat")
    assert (silent["namespace"], silent["metricName"]) == ("weightshift", "Heartbeat")
    assert silent["dimensions"] == GATEWAY
    assert (silent["statistic"], silent["period"]) == ("Sum", 10)
    assert (silent["comparisonOperator"], silent["threshold"]) == ("LessThanThreshold", 1)
    assert (silent["evaluationPeriods"], silent["datapointsToAlarm"]) == (3, 3)
    assert silent["treatMissingData"] == "breaching"


def test_no_healthy_host_treats_missing_data_as_a_breach(live: Graph) -> None:
    """ALB docs: HealthyHostCount is "reported if there are registered targets", so a
    candidate whose targets are all gone reports nothing: that must be a breach."""
    hosts = alarm(live, "no-healthy-hosts")
    assert (hosts["metricName"], hosts["statistic"]) == ("HealthyHostCount", "Minimum")
    assert (hosts["comparisonOperator"], hosts["threshold"]) == ("LessThanThreshold", 1)
    assert hosts["treatMissingData"] == "breaching"


def test_the_dead_mans_switch_counts_what_the_candidate_was_sent_and_answered(
    live: Graph,
) -> None:
    silent = alarm(live, "no-answers")
    queries = {q["id"]: q for q in silent["metricQueries"]}
    assert set(queries) == {"silent", "asked", *ANSWER_QUERY_IDS}
    assert queries["silent"]["returnData"] is True
    assert queries["silent"]["expression"] == expression(5, "asked", ANSWER_QUERY_IDS)
    metrics = {qid: q["metric"] for qid, q in queries.items() if qid != "silent"}
    assert metrics["asked"]["metricName"] == "RequestCount"
    assert {metrics[qid]["metricName"] for qid in ANSWER_QUERY_IDS} == {
        f"HTTPCode_Target_{cls}_Count" for cls in ("2XX", "3XX", "4XX", "5XX")
    }
    green = live.outputs["targetGroupArns"]["green"]
    for metric in metrics.values():
        assert (metric["stat"], metric["period"]) == ("Sum", 300)  # deadManMinutes 5
        assert green.endswith(metric["dimensions"]["TargetGroup"])
    assert (silent["comparisonOperator"], silent["threshold"]) == (
        "GreaterThanOrEqualToThreshold",
        1,
    )
    assert (silent["evaluationPeriods"], silent["datapointsToAlarm"]) == (1, 1)
    assert silent["treatMissingData"] == "notBreaching"


def test_the_dead_mans_switch_is_the_same_at_every_stage() -> None:
    """Nothing about it depends on the weight, so promoting cannot change (or trip) it."""
    alarms = {
        stage.index: alarm(synth(f"rollout.stage={stage.index}"), "no-answers")
        for stage in schedule(Strategy.CANARY)
    }
    assert all(found == alarms[0] for found in alarms.values())


def _fires(expression_text: str, asked: int | None, answers: dict[str, int | None]) -> bool:
    values: dict[str, float | None] = {"asked": asked, **dict.fromkeys(ANSWER_QUERY_IDS)}
    values.update(answers)
    return bool(evaluate(expression_text, values) == 1)


@pytest.mark.parametrize("asked", [None, 0, 1, 4, 5, 6, 50, 10_000])
@pytest.mark.parametrize("answered", [None, 0, 1, 3, 5000])
def test_the_alarm_expression_decides_exactly_as_the_decision_function(
    live: Graph, asked: int | None, answered: int | None
) -> None:
    """The synthesized metric math, evaluated, against ``dead_man.decide`` (None: no
    datapoint, as CloudWatch has for a metric nothing was counted in)."""
    text = next(
        q["expression"] for q in alarm(live, "no-answers")["metricQueries"] if q["id"] == "silent"
    )
    # Answers split across classes: a 5xx is an answer too.
    split = {"answers2xx": answered, "answers5xx": 1 if answered else None}
    decision = decide(asked or 0, (answered or 0) + (1 if answered else 0), 5)
    assert _fires(text, asked, split) == (decision.verdict is Verdict.ROLLBACK)


def test_the_dead_mans_switch_decisions_the_issue_names() -> None:
    # (a) Promotion: the window before the weight moved holds stable's traffic only; the
    # candidate was sent nothing, so there is nothing to judge.
    assert decide(asked=0, answered=0, min_requests=5).verdict is Verdict.INCONCLUSIVE
    # (b) 1 % of a quiet service: two requests in the window, one answered, or neither yet.
    assert decide(asked=2, answered=1, min_requests=5).verdict is Verdict.CONTINUE
    assert decide(asked=2, answered=0, min_requests=5).verdict is Verdict.INCONCLUSIVE
    # (c) A candidate that answers nothing: five requests sent, none answered.
    rollback = decide(asked=5, answered=0, min_requests=5)
    assert rollback.verdict is Verdict.ROLLBACK
    assert "5 request(s) reached the candidate and none was answered" in rollback.reason
    # Errors are answers: the error-rate alarm judges them, not the dead man's switch.
    assert decide(asked=500, answered=500, min_requests=5).verdict is Verdict.CONTINUE
    with pytest.raises(ValueError, match="silence would be evidence"):
        decide(asked=0, answered=0, min_requests=0)


def test_the_composite_alarm_invokes_the_function_and_pages_only_while_live(live: Graph) -> None:
    composite = live.named("rollback", "CompositeAlarm").inputs
    names = [
        alarm(live, s)["name"]
        for s in (
            "errors",
            "errors-1m",
            "latency-p99",
            "latency-p99-1m",
            "quality",
            "safety",
            "no-heartbeat",
            "refused",
            "no-healthy-hosts",
            "no-answers",
        )
    ]
    assert composite["alarmRule"] == " OR ".join(f'ALARM("{n}")' for n in names)
    function = live.named("rollback-function", "Function").inputs
    topic = live.outputs["rollback"]["onCallTopic"]
    assert composite["alarmActions"] == [
        f"arn:aws:lambda:us-east-1:123456789012:function:{function['name']}",
        topic,
    ]
    assert composite["actionsEnabled"] is True
    assert f"listener={live.outputs['listenerArn']}" in composite["alarmDescription"]
    assert function["environment"]["variables"]["ALARM_NAME"] == composite["alarmName"]
    permission = live.named("rollback-function", "Permission").inputs
    assert permission["principal"] == "lambda.alarms.cloudwatch.amazonaws.com"
    assert permission["sourceArn"].endswith(f":alarm:{composite['alarmName']}")
    assert permission["sourceAccount"] == "123456789012"
    idle = synth("rollout.stage=0").named("rollback", "CompositeAlarm").inputs
    assert idle["actionsEnabled"] is False
    for name in names:  # only the composite acts
        assert not any(
            r.inputs.get("actionsEnabled") for r in live.resources if r.inputs.get("name") == name
        )


def test_the_function_is_packaged_with_reserved_concurrency_and_json_logs(live: Graph) -> None:
    function = live.named("rollback-function", "Function").inputs
    assert function["handler"] == "rollback.handler"
    assert function["runtime"].startswith("python3.")
    source = PROJECT / "weightshift/lambdas/rollback.py"
    (packaged,) = function["code"]["archive"].items()
    assert packaged[0] == "rollback.py"
    assert packaged[1]["file"] == source.name
    assert function["reservedConcurrentExecutions"] == 5
    assert function["loggingConfig"]["logFormat"] == "JSON"
    variables = function["environment"]["variables"]
    arns = live.outputs["targetGroupArns"]
    assert variables["STABLE_TARGET_GROUP_ARN"] == arns["blue"]
    assert variables["CANDIDATE_TARGET_GROUP_ARN"] == arns["green"]
    assert variables["STAGE_WEIGHTS"] == "0,10,50,250,500,999"
    assert variables["RECORD_PARAMETER"] == "/weightshift/support-assistant/prod/rollback"


def test_the_functions_iam_grants_nothing_beyond_its_own_resources(live: Graph) -> None:
    policy = json.loads(live.named("rollback-function", "RolePolicy").inputs["policy"])
    grants = {s["Sid"]: (s["Action"], s["Resource"]) for s in policy["Statement"]}
    bucket = "arn:aws:s3:::support-assistant-artifacts-210987654321-use1"
    assert grants["SendTrafficToStable"] == (
        ["elasticloadbalancing:ModifyListener"],
        [live.outputs["listenerArn"]],
    )
    assert grants["RollbackRecord"] == (
        ["ssm:PutParameter", "ssm:GetParameter"],
        [
            "arn:aws:ssm:us-east-1:123456789012:parameter/weightshift/support-assistant/prod/rollback"
        ],
    )
    assert grants["IncidentRecord"] == (
        ["s3:PutObject"],
        [f"{bucket}/incidents/support-assistant/prod/*"],
    )
    assert grants["PageOnCall"] == (["sns:Publish"], [live.outputs["rollback"]["onCallTopic"]])
    assert grants["PageClaim"] == (
        ["ssm:PutParameter", "ssm:DeleteParameter"],
        [
            "arn:aws:ssm:us-east-1:123456789012:parameter/weightshift/support-assistant/prod/"
            "rollback-paged/*"
        ],
    )
    assert grants["ReadWeights"] == (["elasticloadbalancing:DescribeListeners"], ["*"])
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    for sid, (actions, resources) in grants.items():
        assert not [a for a in actions if a.endswith("*") or a.endswith(":*")], sid
        if sid != "ReadWeights":  # Describe calls cannot be scoped
            assert "*" not in resources, sid
            assert all(r.count("*") <= 1 for r in resources), sid
    assert set(grants) == {
        "ReadWeights",
        "SendTrafficToStable",
        "RollbackRecord",
        "IncidentRecord",
        "EncryptIncidentRecord",
        "PageOnCall",
        "PageClaim",
        "EncryptPage",
        "Logs",
    }
    trust = json.loads(live.named("rollback-function", "Role").inputs["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_the_on_call_topic_is_encrypted_and_tls_only(live: Graph) -> None:
    topic = live.named("rollback-on-call", "Topic").inputs
    assert topic["kmsMasterKeyId"].startswith("arn:aws:kms:")
    policy = json.loads(live.named("rollback-on-call", "TopicPolicy").inputs["policy"])
    deny = next(s for s in policy["Statement"] if s["Effect"] == "Deny")
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    allow = next(s for s in policy["Statement"] if s["Effect"] == "Allow")
    assert allow["Condition"] == {"StringEquals": {"aws:SourceAccount": "123456789012"}}


def record(candidate: str = CANDIDATE) -> RollbackRecord:
    return RollbackRecord(
        incident="4f1c0a9e3b2d7c65",
        candidate=candidate,
        alarm=f"{PREFIX}-rollback",
        reason="errors went to ALARM",
        stage=3,
        at="2026-11-25T09:12:04+00:00",
    )


def synth_with_record(found: RollbackRecord | None, *overrides: str) -> Graph:
    values = apply_overrides(stack_config(PROJECT, "prod"), overrides)
    return synthesize(PROJECT, "prod", values, record=found)


@pytest.mark.parametrize("strategy", [Strategy.CANARY, Strategy.BLUE_GREEN])
def test_with_a_rollback_record_every_stage_renders_stable_at_100(strategy: Strategy) -> None:
    sets = {
        Strategy.CANARY: (),
        Strategy.BLUE_GREEN: ("rollout.strategy=blue-green",),
    }[strategy]
    for stage in schedule(strategy):
        graph = synth_with_record(record(), *sets, f"rollout.stage={stage.index}")
        assert listener_weights(graph) == {"blue": 999, "green": 0}
        (action,) = graph.named("traffic-https").inputs["defaultActions"]
        assert action["forward"]["stickiness"]["enabled"] is False
        rollout = graph.outputs["rollout"]
        assert (rollout["rolledBack"], rollout["renderedStage"], rollout["stage"]) == (
            True,
            0,
            stage.index,
        )
        assert rollout["rollbackRecord"]["incident"] == "4f1c0a9e3b2d7c65"
        assert graph.named("rollback", "CompositeAlarm").inputs["actionsEnabled"] is False


def test_the_rendered_listener_is_what_the_function_left() -> None:
    from weightshift.lambdas.rollback import ALB_WEIGHT_ALL

    graph = synth_with_record(record(), "rollout.stage=4")
    assert listener_weights(graph)["blue"] == ALB_WEIGHT_ALL
    at_stage_0 = synth("rollout.stage=0", "rollout.stickinessSeconds=0")
    assert graph.named("traffic-https").inputs == at_stage_0.named("traffic-https").inputs


def test_a_record_of_another_candidate_does_not_hold_this_one_back() -> None:
    graph = synth_with_record(record("support-assistant/v1.4.9-0123456789ab"), "rollout.stage=3")
    assert listener_weights(graph) == {"blue": 750, "green": 250}
    assert graph.outputs["rollout"]["rolledBack"] is False


def test_synth_reads_a_record_file(tmp_path: Path) -> None:
    from weightshift.cli import main

    path = tmp_path / "record.json"
    path.write_text(record().model_dump_json())
    out = tmp_path / "graph.json"
    assert (
        main(
            ["synth", "--set", "rollout.stage=5", "--rollback-record", str(path), "--out", str(out)]
        )
        == 0
    )
    graph = json.loads(out.read_text())
    assert graph["outputs"]["rollout"]["rolledBack"] is True
    assert graph["outputs"]["rollout"]["weights"] == {"blue": 999, "green": 0, "mirror": 0}
    path.write_text("{not json")
    assert main(["synth", "--rollback-record", str(path)]) == 2


def test_outside_synth_the_program_reads_the_record_from_ssm(s3: Any) -> None:
    import contextvars

    import boto3

    from weightshift.rollout.record import parameter_name, read

    name = parameter_name("support-assistant", "prod")
    fresh = contextvars.Context()  # what `pulumi up` runs in: no offline record set
    assert fresh.run(read, name, region="us-east-1") is None
    boto3.client("ssm", region_name="us-east-1").put_parameter(
        Name=name, Value=record().model_dump_json(), Type="String"
    )
    found = fresh.run(read, name, region="us-east-1")
    assert found is not None
    assert found.candidate == CANDIDATE
    assert contextvars.Context().run(read, name, region="us-east-1") == found


def test_without_credentials_the_program_stops_with_one_paragraph(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import contextvars

    from weightshift.rollout.record import RecordError, read

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    with pytest.raises(RecordError, match="check the AWS credentials and region"):
        contextvars.Context().run(read, "/weightshift/m/s/rollback", region="us-east-1")


@pytest.mark.parametrize("requests", [None, 0, 1, 9, 10, 11, 200, 10_000])
@pytest.mark.parametrize("events", [None, 0, 1, 2, 3, 4, 9, 150])
def test_the_rate_expression_decides_exactly_as_the_rate_function(
    live: Graph, requests: int | None, events: int | None
) -> None:
    """The synthesized metric math, evaluated, against ``rates.rate`` (None: no datapoint)."""
    text = next(
        q["expression"] for q in alarm(live, "errors")["metricQueries"] if q["id"] == "rate"
    )
    found = evaluate(text, {"events": events, "requests": requests})
    assert found == pytest.approx(rates.rate(events or 0, requests or 0, 10, 3))
    threshold = alarm(live, "errors")["threshold"]
    assert (found > threshold) == (rates.rate(events or 0, requests or 0, 10, 3) > threshold)


def test_a_rate_needs_enough_evidence() -> None:
    # 1 error in 2 requests at 1 % of a quiet service is not a 50 % error rate.
    assert rates.rate(1, 2, min_requests=10, min_events=3) == 0
    assert rates.rate(2, 400, min_requests=10, min_events=3) == 0
    assert rates.rate(3, 200, min_requests=10, min_events=3) == 1.5
    assert rates.rate(5, 5, min_requests=10, min_events=3) == 0
    assert rates.rate(10, 10, min_requests=10, min_events=3) == 100


def test_a_stage_that_would_enable_an_alarm_already_in_alarm_is_refused() -> None:
    """CloudWatch acts on transitions only: actions turned on while the composite is in ALARM
    would never fire, and the candidate would have traffic with no automatic rollback.
    (moto has no composite alarms: the DescribeAlarms answers are stubbed.)"""
    import contextvars

    import boto3
    from botocore.stub import Stubber

    from weightshift.rollout.record import composite_alarm_name, silent_activation

    name = composite_alarm_name("support-assistant", "prod", "green")
    assert name == synth().named("rollback", "CompositeAlarm").inputs["alarmName"]
    cloudwatch = boto3.client(
        "cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(cloudwatch)
    request = {"AlarmNames": [name], "AlarmTypes": ["CompositeAlarm"]}

    def answer(state: str | None, actions: bool) -> None:
        alarms = (
            [
                {
                    "AlarmName": name,
                    "StateValue": state,
                    "ActionsEnabled": actions,
                    "StateReason": "no healthy host",
                }
            ]
            if state
            else []
        )
        stubber.add_response("describe_alarms", {"CompositeAlarms": alarms}, request)

    for state, actions in ((None, False), ("OK", False), ("ALARM", False), ("ALARM", True)):
        answer(state, actions)
    stubber.activate()
    fresh = contextvars.Context()  # what `pulumi up` runs in
    assert fresh.run(silent_activation, name, cloudwatch) is None  # no alarm yet
    assert fresh.run(silent_activation, name, cloudwatch) is None  # OK: it will act
    why = fresh.run(silent_activation, name, cloudwatch)
    assert why is not None
    assert f"rollback alarm {name} is already in ALARM (no healthy host)" in why
    assert "nothing was deployed" in why
    # Actions already on: not an activation, the alarm acted (or will) on its own.
    assert fresh.run(silent_activation, name, cloudwatch) is None
    stubber.assert_no_pending_responses()
    # Offline (weightshift synth) nothing is read: synthesis never calls CloudWatch.
    assert synth("rollout.stage=1").outputs["rollback"]["actionsEnabled"] is True


def race(scenario: str) -> dict[str, Any]:
    """Run a rollback race (tests/rollback_race.py) in a process of its own: a synthesis that
    fails inside an ``apply`` leaves Pulumi's runtime state behind, which would hang the next
    mocked program in this process."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tests.rollback_race", scenario],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_rollback_during_the_wait_for_the_candidates_pods_stops_the_listener_update() -> None:
    found = race("during-the-wait")
    events, message = found["events"], found["error"]
    assert "was written while this update waited for green's pods" in message
    assert CANDIDATE in message
    assert "incident 4f1c0a9e3b2d7c65" in message
    assert "\n" not in message.strip()  # one paragraph
    # The record was read at start (nothing), written during the wait, read again after it,
    # and the listener, which would have moved weight to the candidate, never reached the
    # engine.
    assert events[0] == "record read"
    assert events.index("register green Deployment") < events.index("record written")
    assert events.count("record read") == 2
    assert events.index("record read", 1) > events.index("record written")
    assert "register traffic-https" not in events


def test_without_a_rollback_the_listener_is_updated_after_the_record_is_read_again() -> None:
    found = race("no-rollback")
    events = found["events"]
    assert found["error"] is None
    assert found["weights"]["green"] > 0
    second_read = events.index("record read", 1)
    assert events.index("register green Deployment") < second_read
    assert second_read < events.index("register traffic-https")


def test_an_abort_during_the_wait_stops_the_listener_update_too() -> None:
    """`rollout abort` writes the same record, by the rollback function's own code."""
    found = race("abort-during-the-wait")
    assert "manual-abort:oncall" in found["error"]
    assert "register traffic-https" not in found["events"]


def test_a_rollback_while_the_listener_is_updated_fails_the_update_saying_how_to_restore() -> None:
    """The rollback lands after the check and before the engine applies the listener: the
    update's weights overwrote it; the program reads the record once more and says so."""
    found = race("while-the-listener-updates")
    assert "weightshift rollout abort --reason" in found["error"]
    assert "landed while this update changed the listener" in found["error"]
