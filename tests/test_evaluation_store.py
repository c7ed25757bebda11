"""Reports beside their bundles: in the artifact bucket (moto, Object Lock on, as the
ArtifactStore creates it) and in the offline catalog's folder."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import PROJECT, offline_aws
from tests.emulator import make_artifact_bucket
from tests.test_evaluation_example import BASELINE, CANDIDATE, example_report
from weightshift.bundles.manifest import load_local
from weightshift.bundles.store import BundleStore
from weightshift.bundles.versioning import Version
from weightshift.cli import main
from weightshift.config.rollout import Thresholds
from weightshift.evaluation.report import BundleRef, EvaluationReport
from weightshift.evaluation.store import (
    LocalReports,
    ReportStore,
    ReportStoreError,
    local_folder,
    report_key,
)
from weightshift.gates.check import Expected, candidate_verdict, refusals

BUCKET = "support-assistant-artifacts-210987654321-use1"
"""The prod stack's artifact bucket, so the CLI finds it from Pulumi.prod.yaml."""


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    offline_aws(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        make_artifact_bucket(client, BUCKET, 30, boto3.client("kms", region_name="us-east-1"))
        bundles = BundleStore(BUCKET, client, workers=2)
        for version in ("v1.4.2", "v1.5.0"):
            local = load_local(PROJECT / "bundles" / "support-assistant" / version)
            bundles.publish(local, Version.parse(version[1:]), allow_placeholders=True)
        yield client


@pytest.fixture
def store(s3: Any) -> ReportStore:
    return ReportStore(BundleStore(BUCKET, s3, workers=2))


def versions(s3: Any, prefix: str = "reports/") -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix).get(
        "Versions", []
    )
    return found


def test_a_report_is_stored_locked_encrypted_and_content_addressed(
    s3: Any, store: ReportStore
) -> None:
    report = example_report()
    before = {v["Key"] for v in versions(s3, "manifests/")}
    published = store.publish(report)
    assert published.written
    key = report_key(CANDIDATE, report.sha256)
    assert published.where == f"s3://{BUCKET}/{key}"
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(days=29)
    assert head["ServerSideEncryption"] == "aws:kms"
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == report.sha256
    # Publishing a report never touches the bundle: no manifest written, none replaced.
    assert {v["Key"] for v in versions(s3, "manifests/")} == before
    assert len(versions(s3, "manifests/")) == 2


def test_publishing_the_same_report_twice_writes_nothing(s3: Any, store: ReportStore) -> None:
    report = example_report()
    store.publish(report)
    again = store.publish(report)
    assert not again.written
    assert len(versions(s3)) == 1


def forged(report: EvaluationReport, **changes: Any) -> EvaluationReport:
    return report.model_copy(update=changes)


def test_a_report_for_another_digest_is_refused(s3: Any, store: ReportStore) -> None:
    # A digest that begins with the id's hash (so the report is well formed) but is not the
    # published manifest's.
    other = BundleRef(id=CANDIDATE_ID, digest="d80719af096e" + "0" * 52)
    with pytest.raises(ReportStoreError, match="a report for another digest is refused"):
        store.publish(forged(example_report(), bundle=other))
    assert versions(s3) == []


CANDIDATE_ID = str(CANDIDATE)


def test_an_unpublished_bundle_or_baseline_is_refused(s3: Any, store: ReportStore) -> None:
    unpublished = BundleRef(
        id="support-assistant/v9.9.9-d80719af096e", digest="d80719af096e" + "1" * 52
    )
    with pytest.raises(ReportStoreError, match="bundle is not published"):
        store.publish(forged(example_report(), bundle=unpublished))
    with pytest.raises(ReportStoreError, match="baseline is not published"):
        store.publish(forged(example_report(), baseline=unpublished))
    assert versions(s3) == []


def test_a_bucket_without_object_lock_is_refused(s3: Any) -> None:
    s3.create_bucket(Bucket="plain-reports-test")
    with pytest.raises(ReportStoreError, match="has no Object Lock"):
        ReportStore(BundleStore("plain-reports-test", s3)).publish(example_report())


def test_listing_reads_the_first_version_and_skips_what_is_not_a_report(
    s3: Any, store: ReportStore
) -> None:
    report = example_report()
    store.publish(report)
    key = report_key(CANDIDATE, report.sha256)
    # A later object written over the key (S3 keeps both versions): never read.
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"schema": 1}')
    # A file whose bytes do not hash to its name, and one with a name that is no report's.
    s3.put_object(Bucket=BUCKET, Key=report_key(CANDIDATE, "ab" * 32), Body=report.to_json())
    s3.put_object(Bucket=BUCKET, Key="reports/support-assistant/v1.5.0/notes.txt", Body=b"x")
    listing = store.listing(CANDIDATE)
    assert listing.reports == (report,)
    assert len(listing.problems) == 2
    assert any("do not hash to its name" in p for p in listing.problems)


def test_the_newest_report_decides_so_a_pass_is_withdrawn_by_a_newer_report(
    store: ReportStore,
) -> None:
    good = example_report()
    toxic = forged(
        good,
        created=good.created + timedelta(days=1),
        toxicity=good.toxicity.model_copy(update={"flagged": 160}) if good.toxicity else None,
    )
    store.publish(good)
    expected = Expected(
        CANDIDATE, good.bundle.digest, BASELINE, good.baseline.digest if good.baseline else None
    )
    verdict, _ = candidate_verdict(store, Thresholds(), expected)
    assert (verdict.decision, verdict.report) == ("pass", good.sha256)
    store.publish(toxic)
    verdict, chosen = candidate_verdict(store, Thresholds(), expected)
    assert verdict.decision == "blocked"
    assert verdict.report == toxic.sha256
    assert chosen is not None
    assert chosen.report == toxic


def test_a_newer_report_against_another_baseline_does_not_decide(store: ReportStore) -> None:
    good = example_report()
    assert good.baseline is not None
    store.publish(good)
    expected = Expected(CANDIDATE, good.bundle.digest, BASELINE, good.baseline.digest)
    other = Expected(CANDIDATE, good.bundle.digest, None)
    stale = forged(good, created=good.created + timedelta(days=1), baseline=None)
    assert refusals(stale, expected)
    assert not refusals(stale, other)
    store.publish(stale)
    verdict, _ = candidate_verdict(store, Thresholds(), expected)
    assert (verdict.decision, verdict.report) == ("pass", good.sha256)


def test_eval_publish_and_show_through_the_cli(
    s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "report.json"
    file.write_bytes(example_report().to_json())
    assert main(["eval", "publish", str(file), "--project", str(PROJECT)]) == 0
    assert capsys.readouterr().out.startswith(f"published s3://{BUCKET}/reports/")
    assert main(["eval", "publish", str(file), "--project", str(PROJECT)]) == 0
    assert "already published" in capsys.readouterr().out
    assert main(["eval", "show", CANDIDATE_ID, "--project", str(PROJECT), "--json"]) == 0
    shown = capsys.readouterr().out
    assert example_report().sha256 in shown
    assert '"decision": "pass"' in shown


def test_gates_check_reads_the_candidates_report_from_the_bucket(
    s3: Any, store: ReportStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gates", "check", "--project", str(PROJECT)]) == 1
    assert "no evaluation report" in capsys.readouterr().out
    store.publish(example_report())
    assert main(["gates", "check", "--project", str(PROJECT)]) == 0
    assert "PASS" in capsys.readouterr().out


# --- the offline catalog's folder ------------------------------------------------------


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    root = tmp_path / "bundles"
    for version in ("v1.4.2", "v1.5.0"):
        shutil.copytree(
            PROJECT / "bundles" / "support-assistant" / version,
            root / "support-assistant" / version,
        )
    return root


def test_local_reports_follow_the_same_rules(catalog: Path) -> None:
    local = LocalReports(catalog)
    report = example_report()
    published = local.publish(report)
    path = local_folder(catalog, CANDIDATE) / f"{report.sha256}.json"
    assert published.where == str(path)
    assert published.written
    assert path.read_bytes() == report.to_json()
    assert not local.publish(report).written
    other = BundleRef(id=CANDIDATE_ID, digest="d80719af096e" + "0" * 52)
    with pytest.raises(ReportStoreError, match="a report for another digest is refused"):
        local.publish(forged(report, bundle=other))
    assert local.reports(CANDIDATE) == (report,)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing half-written


def test_a_changed_local_report_is_ignored_and_said(catalog: Path) -> None:
    local = LocalReports(catalog)
    report = example_report()
    path = Path(local.publish(report).where)
    path.write_bytes(report.to_json().replace(b'"flagged": 8', b'"flagged": 0'))
    listing = local.listing(CANDIDATE)
    assert listing.reports == ()
    assert "do not hash to its name" in listing.problems[0]
