"""Where evaluation reports are kept: beside their bundle, content addressed, never replaced.

In the artifact bucket (the bundle store's bucket, Object Lock on)::

    reports/<name>/v<X.Y.Z>/<report sha256>.json

Each report is written once, with a conditional create (``If-None-Match: *``), the bucket's
default Object Lock retention and its encryption, exactly as the bundle store writes a
manifest. Its key is the sha256 of its canonical bytes, so publishing the same report twice
is a no-op (never an overwrite), and publishing a report never touches the bundle, its
manifest or its version. A report is refused unless the bundle it names is published with
exactly the digest it names, and so is its baseline, when it names one.

Offline (``weightshift synth``, ``plan``, ``policy check``, ``gates check --local``) the same
layout sits in the offline catalog's root, beside the bundle folders::

    <root>/<name>/reports/v<X.Y.Z>/<report sha256>.json

with the same rules, against the local bundle folder's manifest digest.

Reading, a report counts only if its bytes hash to its key (S3: the first version written,
whatever was put on top later); anything else is listed as a problem and skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from weightshift.bundles.catalog import OFFLINE_CATALOG, CatalogError, LocalCatalog
from weightshift.bundles.store import BundleStore, StoreError
from weightshift.bundles.store.bucket import code
from weightshift.bundles.versioning import BundleId
from weightshift.evaluation.report import (
    MAX_REPORT_BYTES,
    BundleRef,
    EvaluationReport,
    ReportError,
    parse,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_NAME = re.compile(r"^([0-9a-f]{64})\.json$")


class ReportStoreError(Exception):
    """A report cannot be published or read; the message says why and what to do."""


def report_key(bundle: BundleId, sha256: str) -> str:
    return f"{report_prefix(bundle)}{sha256}.json"


def report_prefix(bundle: BundleId) -> str:
    return f"reports/{bundle.name}/v{bundle.version}/"


def local_folder(root: Path, bundle: BundleId) -> Path:
    return root / bundle.name / "reports" / f"v{bundle.version}"


@dataclass(frozen=True)
class Published:
    """A report as published: where, and whether this call wrote it."""

    report: EvaluationReport
    where: str
    """The S3 key (``s3://bucket/key``) or the local path."""
    written: bool
    """False: the identical report was already there (nothing was written)."""


@dataclass(frozen=True)
class Listing:
    """A bundle's reports, and anything found beside them that is not one."""

    reports: tuple[EvaluationReport, ...]
    problems: tuple[str, ...] = ()


def _check_bundle(ref: BundleRef, digest: str, what: str, where: str) -> None:
    if ref.digest != digest:
        raise ReportStoreError(
            f"the report's {what} {ref.id} names digest {ref.digest[:16]}..., but {where} holds "
            f"{ref.id} with digest {digest[:16]}...: a report for another digest is refused. "
            "Evaluate the published bundle itself."
        )


class ReportStore:
    """Reports in the artifact bucket, beside the bundles of :class:`BundleStore`."""

    def __init__(self, bundles: BundleStore) -> None:
        self.bundles = bundles

    @property
    def bucket(self) -> str:
        return self.bundles.bucket

    @property
    def s3(self) -> S3Client:
        return self.bundles.s3

    def _digest(self, ref: BundleRef, what: str) -> None:
        try:
            published = self.bundles.resolve(ref.bundle)
        except StoreError as error:
            raise ReportStoreError(
                f"the report's {what} is not published: {error} Publish it first "
                "(`weightshift bundle publish`)."
            ) from None
        _check_bundle(ref, published.manifest.digest, what, f"bucket {self.bucket}")

    def publish(self, report: EvaluationReport) -> Published:
        """Write ``report`` once under the bucket's lock; a no-op if it is already there."""
        try:
            lock = self.bundles.lock_policy()
            self._digest(report.bundle, "bundle")
            if report.baseline is not None:
                self._digest(report.baseline, "baseline")
            encryption = self.bundles.view.encryption()
        except StoreError as error:
            raise ReportStoreError(str(error)) from None
        body = report.to_json()
        key = report_key(report.bundle.bundle, report.sha256)
        where = f"s3://{self.bucket}/{key}"
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                IfNoneMatch="*",
                ObjectLockMode=lock.mode,  # type: ignore[arg-type]
                ObjectLockRetainUntilDate=lock.until(),
                ChecksumAlgorithm="SHA256",
                **encryption,
            )
        except ClientError as error:
            if code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise ReportStoreError(str(self.bundles.view.access(error))) from None
            if self._first(key) != body:
                raise ReportStoreError(
                    f"{where} already holds other bytes than this report: a content-addressed "
                    "key was written by something else. Do not trust it; investigate the "
                    "bucket's access log."
                ) from None
            return Published(report, where, written=False)
        return Published(report, where, written=True)

    def _first(self, key: str, version_id: str | None = None) -> bytes | None:
        """The first version written at ``key`` (None: nothing there), at most
        ``MAX_REPORT_BYTES`` read."""
        view = self.bundles.view
        version_id = version_id or view.first_version(key)
        if version_id is None:
            return None
        response = self.s3.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)
        body: bytes = response["Body"].read(MAX_REPORT_BYTES + 1)
        return body

    def listing(self, bundle: BundleId) -> Listing:
        """Every report of ``bundle`` that is what its key says (oldest version of each key)."""
        prefix = report_prefix(bundle)
        first: dict[str, tuple[str, int]] = {}
        try:
            paginator = self.s3.get_paginator("list_object_versions")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                # Newest first within a key: the last one seen is the one first written.
                for item in page.get("Versions", []):
                    first[item["Key"]] = (item["VersionId"], int(item.get("Size", 0)))
        except ClientError as error:
            raise ReportStoreError(str(self.bundles.view.access(error))) from None
        except BotoCoreError as error:
            raise ReportStoreError(
                f"cannot reach bucket {self.bucket} to read the reports of {bundle} ({error}): "
                "check the AWS credentials and region."
            ) from None
        reports: list[EvaluationReport] = []
        problems: list[str] = []
        for key, (version_id, size) in sorted(first.items()):
            where = f"s3://{self.bucket}/{key}"
            name = _NAME.match(key[len(prefix) :])
            if name is None:
                problems.append(f"{where}: not a report's name (<sha256>.json); ignored")
                continue
            if size > MAX_REPORT_BYTES:
                problems.append(f"{where}: {size:,} bytes, over the report limit; ignored")
                continue
            try:
                body = self._first(key, version_id) or b""
            except ClientError as error:
                raise ReportStoreError(str(self.bundles.view.access(error))) from None
            found = _verified(body, name.group(1), bundle, where, problems)
            if found is not None:
                reports.append(found)
        return Listing(tuple(reports), tuple(problems))

    def reports(self, bundle: BundleId) -> Sequence[EvaluationReport]:
        return self.listing(bundle).reports


class LocalReports:
    """Reports in the offline catalog's folder, beside the local bundle folders."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.catalog = LocalCatalog(root)

    def _digest(self, ref: BundleRef, what: str) -> None:
        try:
            resolved = self.catalog.resolve(ref.bundle)
        except CatalogError as error:
            raise ReportStoreError(f"the report's {what} is not in {self.root}: {error}") from None
        _check_bundle(ref, resolved.manifest.digest, what, f"the bundle folder under {self.root}")

    def publish(self, report: EvaluationReport) -> Published:
        """Write ``report`` under the root, whole or not at all; a no-op if it is there."""
        self._digest(report.bundle, "bundle")
        if report.baseline is not None:
            self._digest(report.baseline, "baseline")
        try:
            return self._write(report)
        except OSError as error:
            raise ReportStoreError(
                f"cannot write the report under {self.root} ({error}): nothing was published."
            ) from None

    def _write(self, report: EvaluationReport) -> Published:
        body = report.to_json()
        folder = local_folder(self.root, report.bundle.bundle)
        path = folder / f"{report.sha256}.json"
        folder.mkdir(parents=True, exist_ok=True)
        # Written beside, then linked into place: the name appears with every byte, or not at
        # all, and an existing file is never replaced.
        handle, staging = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix=".json")
        try:
            os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide the report from reviewers
            with os.fdopen(handle, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(staging, path)
            except FileExistsError:
                if path.read_bytes() != body:
                    raise ReportStoreError(
                        f"{path} already holds other bytes than this report: a "
                        "content-addressed file was changed. Restore it from version control."
                    ) from None
                return Published(report, str(path), written=False)
        finally:
            Path(staging).unlink(missing_ok=True)
        return Published(report, str(path), written=True)

    def listing(self, bundle: BundleId) -> Listing:
        folder = local_folder(self.root, bundle)
        if not folder.is_dir():
            return Listing(())
        reports: list[EvaluationReport] = []
        problems: list[str] = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            name = _NAME.match(path.name)
            if name is None or not path.is_file():
                problems.append(f"{path}: not a report's name (<sha256>.json); ignored")
                continue
            if path.stat().st_size > MAX_REPORT_BYTES:
                problems.append(f"{path}: over the report size limit; ignored")
                continue
            found = _verified(path.read_bytes(), name.group(1), bundle, str(path), problems)
            if found is not None:
                reports.append(found)
        return Listing(tuple(reports), tuple(problems))

    def reports(self, bundle: BundleId) -> Sequence[EvaluationReport]:
        return self.listing(bundle).reports


def _verified(
    body: bytes, sha256: str, bundle: BundleId, where: str, problems: list[str]
) -> EvaluationReport | None:
    """The report in ``body`` if its bytes hash to its name and it names ``bundle``."""
    if hashlib.sha256(body).hexdigest() != sha256:
        problems.append(f"{where}: its bytes do not hash to its name: altered; ignored")
        return None
    try:
        report = parse(body, where)
    except ReportError as error:
        problems.append(f"{error} Ignored.")
        return None
    if report.bundle.id != str(bundle):
        problems.append(f"{where}: a report for {report.bundle.id}, filed under {bundle}; ignored")
        return None
    return report


class NoReports:
    """A catalog with no report folder: every bundle has none."""

    def reports(self, bundle: BundleId) -> Sequence[EvaluationReport]:
        return ()


def source_for(
    bucket: str, region: str, client: Any = None
) -> ReportStore | LocalReports | NoReports:
    """Where the program reads reports: beside the offline catalog during ``weightshift
    synth`` (no credentials), else the artifact bucket (in the stack's region)."""
    offline = OFFLINE_CATALOG.get()
    if offline is not None:
        return LocalReports(offline.root) if isinstance(offline, LocalCatalog) else NoReports()
    return ReportStore(BundleStore(bucket, client or boto3.client("s3", region_name=region)))
