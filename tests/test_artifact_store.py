"""The ArtifactStore in the synthesized program (Pulumi mocks, every registration recorded)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import synth
from weightshift.preview.synth import Graph


@pytest.fixture(scope="module")
def graph() -> Graph:
    return synth()


def test_bucket_is_object_locked_in_compliance_mode_and_versioned(graph: Graph) -> None:
    bucket = graph.named("artifacts", "Bucket").inputs
    assert bucket["objectLockEnabled"] is True
    assert bucket["forceDestroy"] is False
    versioning = graph.named("artifacts-versioning").inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    lock = graph.named("artifacts-object-lock").inputs
    assert lock["objectLockEnabled"] == "Enabled"
    assert lock["rule"]["defaultRetention"] == {"mode": "COMPLIANCE", "days": 730}


def test_bucket_is_encrypted_with_its_own_rotated_key(graph: Graph) -> None:
    key = graph.named("artifacts-key", "Key")
    assert key.inputs["enableKeyRotation"] is True
    (rule,) = graph.named("artifacts-encryption").inputs["rules"]
    default = rule["applyServerSideEncryptionByDefault"]
    assert default["sseAlgorithm"] == "aws:kms"
    assert default["kmsMasterKeyId"].startswith("arn:aws:kms:us-east-1:")
    assert rule["bucketKeyEnabled"] is True


def test_bucket_blocks_public_access_and_enforces_ownership(graph: Graph) -> None:
    block = graph.named("artifacts-public-access").inputs
    assert [
        block[k]
        for k in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    ] == [True] * 4
    ownership = graph.named("artifacts-ownership").inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"


def test_policy_is_tls_only_kms_only_and_forbids_overwrites_and_deletes(graph: Graph) -> None:
    policy = json.loads(graph.named("artifacts-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert {s["Effect"] for s in policy["Statement"]} == {"Deny"}
    assert by_sid["DenyInsecureTransport"]["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}
    }
    sse = "s3:x-amz-server-side-encryption"
    assert by_sid["DenyPutsWithoutKms"]["Condition"] == {
        "Null": {sse: "false"},
        "StringNotEquals": {sse: "aws:kms"},
    }
    key_arn = graph.named("artifacts-encryption").inputs["rules"][0][
        "applyServerSideEncryptionByDefault"
    ]["kmsMasterKeyId"]
    assert by_sid["DenyPutsWithAnotherKey"]["Condition"] == {
        "Null": {f"{sse}-aws-kms-key-id": "false"},
        "StringNotEquals": {f"{sse}-aws-kms-key-id": key_arn},
    }
    assert by_sid["DenyPutsWithTheAwsManagedKey"]["Condition"] == {
        "StringEquals": {sse: "aws:kms"},
        "Null": {f"{sse}-aws-kms-key-id": "true"},
    }
    # No ...IfExists: it is true when the key is absent, so it would deny every UploadPart.
    assert "IfExists" not in json.dumps(policy)
    overwrite = by_sid["DenyOverwrites"]
    assert [r.rsplit("/", 1)[-1] for r in overwrite["Resource"]] == ["*", "*"]
    assert [r.split(":::")[1].split("/")[1] for r in overwrite["Resource"]] == [
        "blobs",
        "manifests",
    ]
    assert overwrite["Condition"] == {
        "Null": {"s3:if-none-match": "true"},
        "Bool": {"s3:ObjectCreationOperation": "true"},
    }
    assert set(by_sid["DenyDeletesAndLockBypass"]["Action"]) >= {
        "s3:DeleteObject",
        "s3:DeleteObjectVersion",
        "s3:BypassGovernanceRetention",
    }


def test_access_logs_go_to_a_separate_unlocked_bucket_only_this_bucket_writes(graph: Graph) -> None:
    logging = graph.named("artifacts-logging").inputs
    log_bucket = graph.named("artifacts-access-logs", "Bucket")
    assert "objectLockEnabled" not in log_bucket.inputs
    assert logging["targetPrefix"] == "s3/"
    assert logging["targetBucket"].startswith("artifacts-access-logs-")
    policy = json.loads(graph.named("artifacts-access-logs-policy").inputs["policy"])
    delivery = next(s for s in policy["Statement"] if s["Sid"] == "S3ServerAccessLogDelivery")
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    (source,) = delivery["Condition"]["ArnLike"]["aws:SourceArn"]
    assert source == "arn:aws:s3:::support-assistant-artifacts-210987654321-use1"
    assert source != f"arn:aws:s3:::{logging['targetBucket']}"


def test_incomplete_uploads_are_aborted_and_nothing_published_expires(graph: Graph) -> None:
    (rule,) = graph.named("artifacts-lifecycle").inputs["rules"]
    assert rule["abortIncompleteMultipartUpload"] == {"daysAfterInitiation": 7}
    assert "expiration" not in rule
    assert "noncurrentVersionExpiration" not in rule


def test_the_bucket_name_is_a_stack_output(graph: Graph) -> None:
    assert graph.outputs["artifactBucket"] == "support-assistant-artifacts-210987654321-use1"
    assert graph.outputs["artifactKeyArn"].startswith("arn:aws:kms:")


def test_governance_mode_is_a_config_choice(graph: Graph) -> None:
    governance = synth("artifacts.retentionMode=GOVERNANCE", "artifacts.retentionDays=30")
    lock = governance.named("artifacts-object-lock").inputs
    assert lock["rule"]["defaultRetention"] == {"mode": "GOVERNANCE", "days": 30}
