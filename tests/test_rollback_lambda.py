"""The rollback function against moto: a real ALB listener, SSM, S3 under Object Lock, SNS."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from botocore.stub import Stubber

from tests.alb_world import (
    ALARM,
    BUCKET,
    CANDIDATE,
    PARAMETER,
    REGION,
    World,
    alarm_event,
    forward,
    incidents,
    pages,
    published,
)
from tests.conftest import serialize
from weightshift.lambdas import rollback
from weightshift.lambdas.rollback import Clients, RollbackIncomplete, Settings, handler


def stable_only(world: World) -> dict[str, Any]:
    """``forward(world)`` once the function has rolled back."""
    return {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}


def no_sleep(_: float) -> None:
    pass


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The function's JSON log lines so far."""
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class Failing:
    """``client``, but its ``operation`` raises ``code`` (HTTP ``status``) when ``when``
    holds for the call's parameters, ``times`` times (None: always). ``applied``: the real
    call is made first, and only its response is lost."""

    def __init__(
        self,
        client: Any,
        operation: str,
        code: str,
        status: int,
        *,
        applied: bool = False,
        times: int | None = None,
        when: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> None:
        self.client, self.operation, self.code, self.status = client, operation, code, status
        self.applied, self.times, self.when = applied, times, when

    def __getattr__(self, name: str) -> Any:
        real = getattr(self.client, name)
        if name != self.operation:
            return real

        def operation(**kwargs: Any) -> Any:
            if self.times == 0 or not self.when(kwargs):
                return real(**kwargs)
            if self.times is not None:
                self.times -= 1
            if self.applied:
                real(**kwargs)
            response: Any = {
                "Error": {"Code": self.code, "Message": "injected"},
                "ResponseMetadata": {"HTTPStatusCode": self.status},
            }
            raise ClientError(response, name)

        operation.__name__ = name
        return operation


def with_failing(**replaced: Callable[[Any], Failing]) -> Clients:
    """``Clients.default()`` with some clients wrapped in ``Failing``."""
    clients = Clients.default()
    return replace(
        clients, **{name: wrap(getattr(clients, name)) for name, wrap in replaced.items()}
    )


def test_an_alarm_sends_everything_to_stable_records_and_pages(world: World) -> None:
    assert forward(world) == {
        "weights": {world.stable: 950, world.candidate: 50},
        "sticky": True,
    }
    result = handler(alarm_event(), None)
    assert result["action"] == "rolled-back"
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}
    record = json.loads(world.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"])
    assert record["incident"] == result["incident"]
    assert record["candidate"] == CANDIDATE
    assert record["alarm"] == ALARM
    assert record["stage"] == 2
    assert "green-errors transitioned to ALARM" in record["reason"]
    assert record["at"]
    (key,) = incidents(world)
    assert key == f"incidents/support-assistant/prod/{result['incident']}.json"
    head = world.s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    stored = json.loads(world.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    assert stored["event"]["alarmData"]["alarmName"] == ALARM
    (page,) = pages(world)
    assert page["incident"] == result["incident"]
    assert "rollout ack" in page["summary"]


def test_twenty_concurrent_invocations_make_one_incident_and_one_state(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.s3.responses import S3Response
    from moto.ssm.responses import SimpleSystemManagerResponse

    serialize(monkeypatch, S3Response, "put_object")
    serialize(monkeypatch, SimpleSystemManagerResponse, "put_parameter")
    event = alarm_event()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: handler(event, None), range(20)))
    actions = sorted(r["action"] for r in results)
    assert actions == ["already"] * 19 + ["rolled-back"]
    assert len({r["incident"] for r in results}) == 1
    assert len(incidents(world)) == 1
    assert len(pages(world)) == 1
    assert len(published(world)) == 1
    assert [r["paged"] for r in results].count(True) == 1
    assert forward(world) == {"weights": {world.stable: 999, world.candidate: 0}, "sticky": False}


def test_a_repeated_alarm_for_the_same_candidate_pages_once(world: World) -> None:
    first = handler(alarm_event(), None)
    later = alarm_event()
    later["alarmData"]["state"]["timestamp"] = "2026-11-25T09:30:00.000+0000"
    second = handler(later, None)
    assert (first["action"], second["action"]) == ("rolled-back", "already")
    assert second["incident"] == first["incident"]
    assert len(pages(world)) == 1


@pytest.mark.parametrize(
    "event",
    [
        alarm_event(state="OK"),
        alarm_event(state="INSUFFICIENT_DATA"),
        alarm_event(name="someone-elses-alarm"),
        alarm_event(
            description="weightshift rollback listener=arn:aws:elasticloadbalancing:us-east-1:"
            "123456789012:listener/app/other/0123456789abcdef/fedcba9876543210"
        ),
    ],
    ids=["ok", "insufficient-data", "other-alarm", "other-listener"],
)
def test_other_events_change_nothing(world: World, event: dict[str, Any]) -> None:
    before = forward(world)
    assert handler(event, None)["action"] == "ignored"
    assert forward(world) == before
    assert world.ssm.describe_parameters()["Parameters"] == []
    assert incidents(world) == []
    assert pages(world) == []


def test_throttling_is_retried_with_backoff() -> None:
    elbv2 = boto3.client("elbv2", region_name=REGION)
    stubber = Stubber(elbv2)
    for _ in range(3):
        stubber.add_client_error("modify_listener", "Throttling", "Rate exceeded", 400)
    stubber.add_response("modify_listener", {"Listeners": []})
    slept: list[float] = []
    with stubber:
        rollback.call(
            elbv2.modify_listener,
            sleep=slept.append,
            ListenerArn="arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2",
            DefaultActions=[],
        )
    stubber.assert_no_pending_responses()
    assert len(slept) == 3
    assert all(0 <= s <= 8 for s in slept)


def test_other_errors_are_not_retried() -> None:
    elbv2 = boto3.client("elbv2", region_name=REGION)
    stubber = Stubber(elbv2)
    stubber.add_client_error("modify_listener", "ListenerNotFound", "gone", 400)
    slept: list[float] = []
    with stubber, pytest.raises(ClientError):
        rollback.call(elbv2.modify_listener, sleep=slept.append, ListenerArn="x", DefaultActions=[])
    assert slept == []


def test_throttling_inside_the_handler_still_rolls_back(world: World) -> None:
    clients = Clients.default()
    stubbed = Stubber(clients.elbv2)
    stubbed.add_client_error("describe_listeners", "Throttling", "Rate exceeded", 400)
    stubbed.add_response("describe_listeners", {"Listeners": []})
    stubbed.add_client_error("modify_listener", "Throttling", "Rate exceeded", 400)
    stubbed.add_response("modify_listener", {"Listeners": []})
    slept: list[float] = []
    with stubbed:
        outcome = rollback.roll_back(
            alarm_event(), Settings.from_environment(), clients, sleep=slept.append
        )
    assert outcome.action == "rolled-back"
    assert len(slept) == 2


def test_a_stale_record_of_another_candidate_is_replaced_and_pages(world: World) -> None:
    stale = {"incident": "0000000000000000", "candidate": "support-assistant/v1.4.0-aaaaaaaaaaaa"}
    world.ssm.put_parameter(Name=PARAMETER, Value=json.dumps(stale), Type="String")
    result = handler(alarm_event(), None)
    assert result["action"] == "rolled-back"
    record = json.loads(world.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"])
    assert (record["candidate"], record["incident"]) == (CANDIDATE, result["incident"])
    assert len(pages(world)) == 1


def test_a_failing_incident_write_still_pages_once_and_the_retry_writes_it(world: World) -> None:
    clients = with_failing(s3=lambda s3: Failing(s3, "put_object", "InternalError", 500))
    with pytest.raises(RollbackIncomplete, match="incident record: InternalError"):
        rollback.roll_back(alarm_event(), Settings.from_environment(), clients, sleep=no_sleep)
    assert forward(world) == stable_only(world)
    (page,) = published(world)
    assert "Incident record: s3://" in page["summary"]
    assert incidents(world) == []
    # Lambda's retry of the event: the incident is written, on-call is not paged again.
    retry = handler(alarm_event(), None)
    assert (retry["action"], retry["paged"]) == ("already", False)
    assert len(published(world)) == 1
    assert incidents(world) == [f"incidents/support-assistant/prod/{retry['incident']}.json"]


def test_an_incident_written_though_its_response_was_lost_still_pages_once(
    world: World,
) -> None:
    # S3 stores the object and answers 500; the retry then gets PreconditionFailed.
    clients = with_failing(
        s3=lambda s3: Failing(s3, "put_object", "InternalError", 500, applied=True, times=1)
    )
    outcome = rollback.roll_back(
        alarm_event(), Settings.from_environment(), clients, sleep=no_sleep
    )
    assert (outcome.action, outcome.paged) == ("rolled-back", True)
    assert len(published(world)) == 1
    assert len(incidents(world)) == 1


def test_when_the_page_cannot_be_claimed_on_call_is_paged_anyway(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    clients = with_failing(
        ssm=lambda ssm: Failing(
            ssm,
            "put_parameter",
            "AccessDeniedException",
            400,
            when=lambda call: "-paged/" in call["Name"],
        )
    )
    outcome = rollback.roll_back(
        alarm_event(), Settings.from_environment(), clients, sleep=no_sleep
    )
    assert (outcome.action, outcome.paged) == ("rolled-back", True)
    assert len(published(world)) == 1
    assert len(incidents(world)) == 1
    (why,) = [line for line in logged(capsys) if "paging anyway" in line["message"]]
    assert why["error"].startswith("AccessDeniedException")


def test_with_ssm_down_on_call_is_paged_then_the_invocation_fails_for_a_retry(
    world: World,
) -> None:
    clients = with_failing(
        ssm=lambda ssm: Failing(ssm, "put_parameter", "InternalServerError", 500)
    )
    with pytest.raises(RollbackIncomplete, match="rollback record: InternalServerError"):
        rollback.roll_back(alarm_event(), Settings.from_environment(), clients, sleep=no_sleep)
    assert forward(world) == stable_only(world)
    (page,) = published(world)
    assert f"rollback record {PARAMETER} could not be written" in page["summary"]
    assert "pulumi up" in page["summary"]
    assert len(incidents(world)) == 1


def test_a_failed_page_releases_its_claim_so_the_retry_pages(world: World) -> None:
    clients = with_failing(sns=lambda sns: Failing(sns, "publish", "KMSAccessDenied", 400))
    with pytest.raises(RollbackIncomplete, match="page: KMSAccessDenied"):
        rollback.roll_back(alarm_event(), Settings.from_environment(), clients, sleep=no_sleep)
    assert published(world) == []
    names = [p["Name"] for p in world.ssm.describe_parameters()["Parameters"]]
    assert names == [PARAMETER]  # the record stays; the page claim is gone
    assert len(incidents(world)) == 1
    retry = handler(alarm_event(), None)
    assert (retry["action"], retry["paged"]) == ("rolled-back", True)
    assert handler(alarm_event(), None)["paged"] is False
    (page,) = published(world)
    assert page["incident"] == retry["incident"]
    marker = rollback.page_marker(PARAMETER, retry["incident"])
    assert marker == f"{PARAMETER}-paged/{retry['incident']}"
    assert (
        json.loads(world.ssm.get_parameter(Name=marker)["Parameter"]["Value"])["incident"]
        == (retry["incident"])
    )


def test_the_incident_object_carries_a_sha256_checksum(world: World) -> None:
    handler(alarm_event(), None)
    (key,) = incidents(world)
    head = world.s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")


class _Body:
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield b""


def test_the_default_clients_make_exactly_one_attempt_per_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(var, value)
    clients = Clients.default()
    calls: dict[str, Callable[[], object]] = {
        "elbv2": lambda: clients.elbv2.describe_listeners(
            ListenerArns=["arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/x/1/2"]
        ),
        "ssm": lambda: clients.ssm.get_parameter(Name=PARAMETER),
        "s3": lambda: clients.s3.head_object(Bucket=BUCKET, Key="k"),
        "sns": lambda: clients.sns.publish(
            TopicArn=f"arn:aws:sns:{REGION}:123456789012:on-call", Message="m"
        ),
    }
    for name, make_call in calls.items():
        client = getattr(clients, name)
        sent: list[str] = []

        def answer_500(request: Any, _sent: list[str] = sent, **_: Any) -> AWSResponse:
            _sent.append(request.url)
            return AWSResponse(request.url, 500, HTTPHeaders(), _Body())

        client.meta.events.register("before-send", answer_500)
        with pytest.raises(ClientError):
            make_call()
        assert len(sent) == 1, f"{name} made {len(sent)} attempts"


def test_server_errors_and_lost_connections_are_retried_and_logged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    server_error: Any = {
        "Error": {"Code": "InternalFailure"},
        "ResponseMetadata": {"HTTPStatusCode": 500},
    }
    failures: list[Exception] = [
        ClientError(server_error, "ModifyListener"),
        EndpointConnectionError(endpoint_url="https://elasticloadbalancing.invalid"),
    ]

    def modify_listener() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    slept: list[float] = []
    assert rollback.call(modify_listener, sleep=slept.append) == "done"
    retried = [line for line in logged(capsys) if "retrying" in line["message"]]
    assert [line["error"].split(":")[0] for line in retried] == [
        "InternalFailure",
        "EndpointConnectionError",
    ]
    assert len(slept) == 2

    # A conditional write whose response was lost is not retried: its retry would find
    # its own write and take it for someone else's.
    def claim() -> None:
        raise ReadTimeoutError(endpoint_url="https://ssm.invalid")

    with pytest.raises(ReadTimeoutError):
        rollback.call(claim, sleep=slept.append, maybe_applied=False)
    assert len(slept) == 2


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ("ALARM", "the event is a str, not an object"),
        ([alarm_event()], "the event is a list, not an object"),
        (None, "the event is null, not an object"),
        ({"alarmData": "ALARM"}, "alarmData is a str, not an object"),
        ({"alarmData": [alarm_event()["alarmData"]]}, "alarmData is a list, not an object"),
        ({"alarmData": None}, "alarmData is null, not an object"),
        (
            {**alarm_event(), "alarmData": {**alarm_event()["alarmData"], "state": "ALARM"}},
            "alarmData.state is a str, not an object",
        ),
        (
            {**alarm_event(), "alarmData": {**alarm_event()["alarmData"], "configuration": [1]}},
            "alarmData.configuration is a list, not an object",
        ),
    ],
    ids=[
        "event-str",
        "event-list",
        "event-null",
        "alarmData-str",
        "alarmData-list",
        "alarmData-null",
        "state-str",
        "configuration-list",
    ],
)
def test_a_malformed_event_is_ignored_with_the_reason(
    world: World, capsys: pytest.CaptureFixture[str], event: Any, reason: str
) -> None:
    before = forward(world)
    result = handler(event, None)
    assert (result["action"], result["reason"]) == ("ignored", reason)
    assert {"message": "ignored", "reason": reason}.items() <= logged(capsys)[-1].items()
    assert forward(world) == before
    assert world.ssm.describe_parameters()["Parameters"] == []
    assert published(world) == []
