"""rollout.shadowTextSample: which pairs keep their text (by a hash of the request id, the
same in every gateway), where they go (their own prefix, SSE-KMS), and what the stack grants,
encrypts and expires for them (the program synthesized with Pulumi mocks)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from pydantic import ValidationError

from tests.conftest import PROJECT, offline_aws, synth
from tests.test_shadow_records import BUCKET, SECRET_PROMPT, body, keys, pair, recorder
from weightshift.cli import main
from weightshift.config import load
from weightshift.config.rollout import RolloutConfig
from weightshift.gateway.shadow import ShadowRecorder, decode_batch, keeps_text
from weightshift.preview.synth import Graph, stack_config


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    offline_aws(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


KEY = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000001"


def test_the_choice_is_a_function_of_the_request_id_alone() -> None:
    ids = [f"req-{n}" for n in range(2000)]
    first = [keeps_text(i, 0.25) for i in ids]
    assert first == [keeps_text(i, 0.25) for i in ids]
    # A larger share keeps every pair a smaller one keeps: raising the share adds pairs.
    assert all(keeps_text(i, 0.5) for i, kept in zip(ids, first, strict=True) if kept)
    assert not any(keeps_text(i, 0.0) for i in ids)
    assert all(keeps_text(i, 1.0) for i in ids)
    with pytest.raises(ValueError, match="not a fraction"):
        keeps_text("req-1", 1.5)


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5, 0.9])
def test_the_share_kept_holds_within_binomial_bounds(share: float) -> None:
    """Over 40,000 ids (gateway-style UUIDs and counters), the count kept is within 4.5
    standard deviations of a Binomial(n, share) (a false failure: about 1 in 150,000)."""
    ids = [f"{n:032x}" for n in range(20_000)] + [f"req-{n}" for n in range(20_000)]
    kept = sum(keeps_text(i, share) for i in ids)
    n = len(ids)
    assert abs(kept - n * share) <= 4.5 * math.sqrt(n * share * (1 - share))


def stored(client: Any) -> dict[str, list[Any]]:
    return {key: list(decode_batch(body(client, key), key)) for key in keys(client)}


def run(shadow: ShadowRecorder, count: int) -> None:
    async def scenario() -> None:
        shadow.start()
        for n in range(count):
            shadow.record(pair(n, keep_text=True))  # built with text: the recorder decides
        await shadow.stop()

    asyncio.run(scenario())


def test_text_never_lands_under_the_hash_only_prefix(bucket: Any) -> None:
    run(recorder(bucket, text_sample=0.3, text_prefix="shadow-text", text_kms_key=KEY), 400)
    objects = stored(bucket)
    hashed = {k: v for k, v in objects.items() if k.startswith("shadow/")}
    texts = {k: v for k, v in objects.items() if k.startswith("shadow-text/")}
    assert set(objects) == set(hashed) | set(texts)
    plain = [p for batch in hashed.values() for p in batch]
    kept = [p for batch in texts.values() for p in batch]
    assert len(plain) + len(kept) == 400
    assert all(
        p.prompt_text is None and p.stable.output_text is None and p.candidate.output_text is None
        for p in plain
    )
    assert all(SECRET_PROMPT.encode() not in body(bucket, key) for key in hashed)
    assert all(p.prompt_text and SECRET_PROMPT in p.prompt_text for p in kept)
    assert {p.request_id for p in kept} == {
        f"req-{n}" for n in range(400) if keeps_text(f"req-{n}", 0.3)
    }
    for key in texts:
        head = bucket.head_object(Bucket=BUCKET, Key=key)
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", KEY)
    for key in hashed:
        assert bucket.head_object(Bucket=BUCKET, Key=key).get("ServerSideEncryption") != ("aws:kms")


def test_two_recorders_keep_the_text_of_the_same_pairs(bucket: Any) -> None:
    """Two gateways (say one per colour, or two pods) record the same requests."""
    for prefix in ("one", "two"):
        run(recorder(bucket, text_sample=0.5, text_prefix=f"{prefix}-text"), 200)
    objects = stored(bucket)

    def kept_under(prefix: str) -> set[str]:
        return {p.request_id for k, v in objects.items() if k.startswith(prefix) for p in v}

    assert kept_under("one-text/") == kept_under("two-text/")
    assert 60 < len(kept_under("one-text/")) < 140


def test_keep_text_is_a_share_of_one_and_never_beside_a_share(bucket: Any) -> None:
    run(recorder(bucket, keep_text=True), 3)
    assert {key.split("/")[0] for key in keys(bucket)} == {"shadow-text"}
    with pytest.raises(ValueError, match="keep_text is text_sample=1"):
        ShadowRecorder(BUCKET, "shadow", keep_text=True, text_sample=0.5, client=bucket)
    with pytest.raises(ValueError, match="must differ"):
        ShadowRecorder(BUCKET, "shadow", text_sample=0.5, text_prefix="shadow/", client=bucket)


def test_a_text_put_refused_by_the_bucket_drops_the_batch_not_the_gateway(bucket: Any) -> None:
    """A key the gateway may not use: the put fails, the pairs are counted as dropped."""
    failing = boto3.client("s3", region_name="us-east-1")
    shadow = recorder(failing, text_sample=1.0, text_kms_key="not-a-key")
    shadow.client = _Refusing(bucket)
    run(shadow, 2)
    assert (shadow.written, shadow.dropped, shadow.failed_batches) == (0, 2, 1)


class _Refusing:
    def __init__(self, client: Any) -> None:
        self.client = client

    def put_object(self, **request: Any) -> Any:
        from botocore.exceptions import ClientError

        assert request["SSEKMSKeyId"] == "not-a-key"
        raise ClientError(
            {"Error": {"Code": "AccessDenied", "Message": "explicit deny"}}, "PutObject"
        )


# --- config and command line --------------------------------------------------------------


def rollout(**changes: Any) -> RolloutConfig:
    values = stack_config(PROJECT, "prod")
    values["weightshift:rollout"] = {**values["weightshift:rollout"], **changes}
    return load(values, source="test").rollout


def test_shadow_keep_text_still_means_every_pair_and_is_refused_beside_the_share() -> None:
    assert rollout().text_sample == 0.0
    assert rollout(shadowKeepText=True).text_sample == 1.0
    assert rollout(shadowTextSample=0.2).text_sample == 0.2
    with pytest.raises(Exception, match="shadowKeepText and shadowTextSample both set"):
        rollout(shadowKeepText=True, shadowTextSample=0.2)
    with pytest.raises(Exception, match=r"shadowTextSample = 1\.5"):
        rollout(shadowTextSample=1.5)
    with pytest.raises(ValidationError):
        RolloutConfig.model_validate(
            {"strategy": "shadow", "stage": 0, "candidate": "green", "shadowTextSample": "0.1"}
        )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shadow-text-sample", "1.5"], "--shadow-text-sample 1.5: give a share from 0 to 1"),
        (["--shadow-text-sample", "nan"], "--shadow-text-sample nan: give a share from 0 to 1"),
        (
            ["--shadow-text-sample", "0.5", "--shadow-keep-text"],
            "--shadow-keep-text is --shadow-text-sample 1",
        ),
    ],
)
def test_the_gateway_refuses_a_share_that_is_not_one(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    code = main(
        [
            "gateway",
            "--bundle",
            str(tmp_path),
            "--upstream",
            "http://127.0.0.1:9",
            "--colour",
            "blue",
            *args,
        ]
    )
    assert code == 2
    assert message in " ".join(capsys.readouterr().err.split())


# --- the stack: grants, encryption, lifecycle ------------------------------------------------


@pytest.fixture(scope="module")
def sampled() -> Graph:
    return synth("rollout.strategy=shadow", "rollout.shadowTextSample=0.25")


@pytest.fixture(scope="module")
def plain() -> Graph:
    return synth("rollout.strategy=shadow")


def statements(graph: Graph, name: str, kind: str, key: str = "policy") -> dict[str, Any]:
    document = json.loads(graph.named(name, kind).inputs[key])
    return {s["Sid"]: s for s in document["Statement"]}


def test_the_gateway_may_write_text_only_under_its_prefix_with_the_stacks_key(
    sampled: Graph, plain: Graph
) -> None:
    name = sampled.named("shadow-records", "Bucket").outputs["bucket"]
    key = sampled.outputs["artifactKeyArn"]
    text = f"arn:aws:s3:::{name}/shadow-text/*"
    for colour in ("blue", "green"):
        grants = statements(sampled, f"{colour}-gateway", "RolePolicy")
        assert (grants["WriteShadowText"]["Action"], grants["WriteShadowText"]["Resource"]) == (
            ["s3:PutObject"],
            [text],
        )
        encrypt = grants["EncryptShadowText"]
        assert (encrypt["Action"], encrypt["Resource"]) == (["kms:GenerateDataKey"], [key])
        assert encrypt["Condition"] == {"StringLike": {"kms:EncryptionContext:aws:s3:arn": text}}
        assert grants["WriteShadowPairs"]["Resource"] == [f"arn:aws:s3:::{name}/shadow/*"]
        # Sampling off: no grant on the text prefix or the key.
        assert set(statements(plain, f"{colour}-gateway", "RolePolicy")) == {
            "PutGatewayMetrics",
            "DeriveFeedbackKey",
            "WriteShadowPairs",
        }


def test_the_gateway_is_told_the_share_prefix_and_key(sampled: Graph, plain: Graph) -> None:
    def gateway_args(graph: Graph, colour: str) -> list[str]:
        pod = graph.named(colour, "Deployment").inputs["spec"]["template"]["spec"]
        _, gateway = pod["containers"]
        return [str(a) for a in gateway["args"]]

    key = sampled.outputs["artifactKeyArn"]
    for colour in ("blue", "green"):
        args = gateway_args(sampled, colour)
        start = args.index("--shadow-text-sample")
        assert args[start : start + 6] == [
            "--shadow-text-sample",
            "0.25",
            "--shadow-text-prefix",
            "shadow-text",
            "--shadow-text-kms-key",
            key,
        ]
        assert "--shadow-text-sample" not in gateway_args(plain, colour)


def test_the_bucket_refuses_text_not_under_the_stacks_key(sampled: Graph, plain: Graph) -> None:
    arn = sampled.named("shadow-records", "Bucket").outputs["arn"]
    key = sampled.outputs["artifactKeyArn"]
    policy = statements(sampled, "shadow-records-policy", "BucketPolicy")
    without, another = policy["DenyTextWithoutKms"], policy["DenyTextUnderAnotherKey"]
    for statement in (without, another):
        assert (statement["Effect"], statement["Action"]) == ("Deny", "s3:PutObject")
        assert statement["Resource"] == f"{arn}/shadow-text/*"
    assert without["Condition"] == {
        "StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}
    }
    assert another["Condition"] == {
        "StringNotEquals": {"s3:x-amz-server-side-encryption-aws-kms-key-id": key}
    }
    assert set(statements(plain, "shadow-records-policy", "BucketPolicy")) == {
        "DenyInsecureTransport"
    }


def test_text_expires_with_the_records_and_its_old_versions_a_day_later(
    sampled: Graph, plain: Graph
) -> None:
    rules = {r["id"]: r for r in sampled.named("shadow-records-lifecycle").inputs["rules"]}
    days = sampled.config.rollout.shadow_record_days
    text = rules["expire-text"]
    assert text["filter"] == {"prefix": "shadow-text/"}
    assert text["expiration"] == {"days": days}
    assert text["noncurrentVersionExpiration"] == {"noncurrentDays": 1}
    assert rules["expire-logs"]["expiration"] == {"days": days}
    assert [r["id"] for r in plain.named("shadow-records-lifecycle").inputs["rules"]] == [
        "expire-logs"
    ]
