"""The artifact bucket as the store sees it: keys, errors, settings, the Object Lock policy
and encryption every write must carry, and the S3 calls on one object or listing."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from weightshift.bundles.hashing import CHUNK, Meter
from weightshift.bundles.versioning import Version
from weightshift.console import Progress

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectLockRetentionTypeDef

MIN_PART = 5 * 1024 * 1024
"""S3: every part but the last is at least 5 MiB."""
MAX_PARTS = 10_000
MULTIPART_THRESHOLD = 64 * 1024 * 1024


class StoreError(Exception):
    """A store operation that cannot go ahead; the message says why and what to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a publish or a pull; the message (one line) says what was kept and how
    to resume."""


PULLED_ID = ".weightshift/bundle.json"
"""Written by ``pull`` beside the bundle's files: its id, digest and publication time."""


def blob_key(sha256: str) -> str:
    return f"blobs/sha256/{sha256}"


def manifest_key(name: str, version: Version) -> str:
    return f"manifests/{name}/v{version}.json"


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class LockPolicy:
    mode: str
    days: int

    def until(self, now: datetime | None = None) -> datetime:
        return (now or datetime.now(UTC)) + timedelta(days=self.days)

    def retention(self, until: datetime | None = None) -> ObjectLockRetentionTypeDef:
        return cast(
            "ObjectLockRetentionTypeDef",
            {"Mode": self.mode, "RetainUntilDate": until or self.until()},
        )


def default_client(workers: int = 16) -> S3Client:
    """An S3 client from the standard AWS environment (AWS_ENDPOINT_URL works)."""
    config = Config(
        max_pool_connections=max(10, workers * 2), retries={"mode": "standard", "max_attempts": 8}
    )
    client: S3Client = boto3.client("s3", config=config)
    return client


class Bucket:
    """One bucket and the settings every collaborator of the store shares."""

    def __init__(
        self,
        name: str,
        client: S3Client,
        *,
        workers: int,
        part_size: int,
        multipart_threshold: int,
        progress_stream: TextIO | None,
    ) -> None:
        self.name = name
        self.s3 = client
        self.workers = workers
        self.part_size = part_size
        self.multipart_threshold = multipart_threshold
        self.progress_stream = progress_stream

    def progress(self, label: str, total: int) -> Meter:
        """Progress of one operation, on ``progress_stream`` (stderr)."""
        return Progress(label, total, self.progress_stream)

    # --- bucket checks -----------------------------------------------------------------

    def lock_policy(self) -> LockPolicy:
        """The bucket's default Object Lock retention; refuse a bucket without one."""
        try:
            config = self.s3.get_object_lock_configuration(Bucket=self.name)[
                "ObjectLockConfiguration"
            ]
        except ClientError as error:
            if code(error) in (
                "ObjectLockConfigurationNotFoundError",
                "ObjectLockConfigurationNotFound",
            ):
                raise StoreError(
                    f"Bucket {self.name} has no Object Lock: a published bundle there could be "
                    "overwritten or deleted. Use the bucket the ArtifactStore component creates "
                    "(versioning, Object Lock, default retention)."
                ) from None
            raise self.access(error) from None
        rule = (config.get("Rule") or {}).get("DefaultRetention") or {}
        if config.get("ObjectLockEnabled") != "Enabled" or not rule:
            raise StoreError(
                f"Bucket {self.name} has Object Lock without a default retention rule: set "
                "one (COMPLIANCE in production) so every published object is locked."
            )
        days = int(rule.get("Days") or 0) + 365 * int(rule.get("Years") or 0)
        return LockPolicy(str(rule.get("Mode", "COMPLIANCE")), days)

    def encryption(self) -> dict[str, Any]:
        """Put arguments matching the bucket's default encryption (its policy demands them)."""
        try:
            rules = self.s3.get_bucket_encryption(Bucket=self.name)[
                "ServerSideEncryptionConfiguration"
            ]["Rules"]
        except ClientError:
            return {}
        default = rules[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
        if default.get("SSEAlgorithm") == "aws:kms":
            args: dict[str, Any] = {"ServerSideEncryption": "aws:kms"}
            if default.get("KMSMasterKeyID"):
                args["SSEKMSKeyId"] = default["KMSMasterKeyID"]
            if rules[0].get("BucketKeyEnabled"):
                args["BucketKeyEnabled"] = True
            return args
        return {"ServerSideEncryption": "AES256"}

    def access(self, error: ClientError) -> StoreError:
        return StoreError(
            f"S3 refused the request on bucket {self.name} ({code(error)}: "
            f"{error.response.get('Error', {}).get('Message', '')}). Check the bucket name, "
            "the region and your credentials (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL)."
        )

    def first_version(self, key: str) -> str | None:
        """The oldest version id of ``key``: the one the conditional create wrote."""
        oldest: str | None = None
        paginator = self.s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.name, Prefix=key):
            for item in page.get("Versions", []):
                if item["Key"] == key:
                    oldest = item["VersionId"]
        return oldest

    def blob_inventory(self) -> dict[str, tuple[str, int]]:
        """Every stored blob: sha256 -> (its oldest version id, size), in one paginated listing."""
        found: dict[str, tuple[str, int]] = {}
        prefix = "blobs/sha256/"
        paginator = self.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.name, Prefix=prefix):
                for item in page.get("Versions", []):
                    # Newest first within a key: the last one seen is the original.
                    found[item["Key"][len(prefix) :]] = (item["VersionId"], int(item["Size"]))
        except ClientError as error:
            raise self.access(error) from None
        return found

    def head_blob(self, sha256: str) -> tuple[str, int] | None:
        try:
            head = self.s3.head_object(Bucket=self.name, Key=blob_key(sha256))
        except ClientError as error:
            if code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.access(error) from None
        version_id = self.first_version(blob_key(sha256)) or str(head.get("VersionId", ""))
        return version_id, int(head["ContentLength"])

    def stored_checksum(self, key: str, version_id: str) -> dict[str, Any]:
        """The head of one object version with the checksum S3 stored for it."""
        try:
            head = self.s3.head_object(
                Bucket=self.name, Key=key, VersionId=version_id, ChecksumMode="ENABLED"
            )
        except ClientError as error:
            raise self.access(error) from None
        return cast("dict[str, Any]", head)

    def part_layout(self, key: str, version_id: str) -> tuple[int, int] | None:
        """(part size, parts count) of a multipart object version; None if it is single-part."""
        try:
            head = self.s3.head_object(
                Bucket=self.name, Key=key, VersionId=version_id, PartNumber=1
            )
        except ClientError as error:
            raise self.access(error) from None
        count = head.get("PartsCount")
        return (int(head["ContentLength"]), int(count)) if count else None

    def checksum_of(self, key: str, version_id: str) -> str:
        """S3's checksum of a version just written, where the write's response omitted it."""
        return str(self.stored_checksum(key, version_id).get("ChecksumSHA256") or "")

    def stream_hash(
        self, sha: str, version_id: str, sink: Callable[[bytes], None] | None = None
    ) -> tuple[str, int]:
        args: dict[str, Any] = {"Bucket": self.name, "Key": blob_key(sha)}
        if version_id:
            args["VersionId"] = version_id
        body = self.s3.get_object(**args)["Body"]
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in iter(lambda: body.read(CHUNK), b""):
                digest.update(chunk)
                size += len(chunk)
                if sink is not None:
                    sink(chunk)
        except FlexibleChecksumError:
            # S3's own checksum of the stored object failed: the bytes are not what was written.
            return "checksum-mismatch", size
        return digest.hexdigest(), size
