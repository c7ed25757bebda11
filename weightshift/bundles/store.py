"""The bundle store: publish, list, show, verify and pull bundles in S3 (boto3).

Layout in the bucket::

    blobs/sha256/<hex>                  every distinct file content, once (content addressed)
    manifests/<name>/v<X.Y.Z>.json      one per published version, written last

Every object is written with a conditional create (``If-None-Match: *``) and an
explicit Object Lock retention equal to the bucket's default, so nothing published
can be overwritten, shortened or deleted. The manifest pins the S3 version id of
each blob, so a later object written over a blob key is never read by ``pull``
and is reported by ``verify``.

Long operations show progress (``weightshift.console.Progress``, on stderr). Ctrl-C stops
``publish`` and ``pull`` within a part or a chunk and raises :class:`Interrupted`, whose
message says what was kept: blobs and parts already uploaded stay (content addressed, the
next publish skips them); a pull keeps what it downloaded and checked in its staging folder
beside the destination, and the next pull of the same bundle resumes from there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, FlexibleChecksumError

from weightshift.bundles.bundle import (
    CHUNK,
    SERVING_DIR,
    BundleError,
    Cancelled,
    LocalBundle,
    Manifest,
    Meter,
    Silent,
    canonical,
    diff,
    link_serving_layout,
    parallel,
    sha256_file,
)
from weightshift.bundles.versioning import Bump, BundleId, BundleRef, Version
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


def part_size_for(size: int, preferred: int) -> int:
    """A part size at least ``preferred`` that keeps the upload within S3's 10,000 parts."""
    size_needed = -(-size // MAX_PARTS)
    return max(preferred, MIN_PART, size_needed)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _split_checksum(stored: str) -> tuple[str, int | None]:
    """S3's checksum value and, for a composite one, the parts count of its ``-N`` suffix.

    Real S3 writes a multipart object's composite checksum as ``<base64>-<parts>``; moto
    omits the suffix. Base64 never contains ``-``, so the split is unambiguous.
    """
    value, dash, parts = stored.partition("-")
    return value, int(parts) if dash and parts.isdigit() else None


def composite_sha256(
    path: Path,
    part_size: int,
    count: int,
    workers: int,
    on_bytes: Callable[[int], None] | None = None,
) -> str:
    """S3's composite SHA-256 of ``path`` uploaded in ``count`` parts of ``part_size`` bytes:
    base64(sha256(the raw sha256 of each part, concatenated)). Parts are hashed in parallel,
    each streamed, so memory stays at one chunk per worker whatever the part size."""
    stop = threading.Event()

    def part(number: int) -> bytes:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            handle.seek(number * part_size)
            left = part_size
            while left > 0:
                if stop.is_set():
                    raise Cancelled(str(path))
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
        return digest.digest()

    parts = parallel(part, range(count), workers, stop)
    return _b64(hashlib.sha256(b"".join(parts)).digest())


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


@dataclass(frozen=True)
class _Upload:
    """What every blob upload of one publish shares."""

    lock: LockPolicy
    encryption: dict[str, Any]
    progress: Meter
    stop: threading.Event = field(default_factory=threading.Event)
    """Set by Ctrl-C (or a failure): uploads end at the next part."""
    parts: set[str] = field(default_factory=set)
    """Keys of blobs with parts in an unfinished multipart upload (resumed next time)."""


@dataclass(frozen=True)
class PublishPlan:
    """What a publish will do, decided before anything is uploaded."""

    manifest: Manifest
    base: Manifest | None
    """The published version the bump is measured from: the latest, or for a hotfix the
    newest of its MAJOR.MINOR line; None for a first release."""
    required: Bump | None
    reasons: tuple[str, ...]
    missing: dict[str, int]
    """Blobs (sha256 -> size) the bucket lacks."""
    present: dict[str, str]
    """Blobs the bucket already has: sha256 -> pinned version id."""
    checksums: dict[str, str] = field(default_factory=dict)
    """S3's checksum of each present blob's pinned version, confirmed to be its content."""
    hotfix: bool = False
    """A PATCH on an older line than the latest (1.1.2 while 1.2.0 exists)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.manifest.id),
            "base": str(self.base.id) if self.base else None,
            "hotfix": self.hotfix,
            "requiredBump": self.required.name if self.required else None,
            "reasons": list(self.reasons),
            "blobsToUpload": len(self.missing),
            "bytesToUpload": sum(self.missing.values()),
            "blobsPresent": len(self.present),
            "bytesPresent": sum(self.manifest.blobs()[sha] for sha in self.present),
        }


@dataclass(frozen=True)
class PublishResult:
    id: BundleId
    bytes_total: int
    bytes_uploaded: int
    bytes_skipped: int
    blobs_uploaded: int
    blobs_skipped: int
    manifest_key: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "bytesTotal": self.bytes_total,
            "bytesUploaded": self.bytes_uploaded,
            "bytesSkipped": self.bytes_skipped,
            "blobsUploaded": self.blobs_uploaded,
            "blobsSkipped": self.blobs_skipped,
            "manifest": self.manifest_key,
        }


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    dest: Path
    bytes_downloaded: int
    bytes_resumed: int
    """Already downloaded and checked by an interrupted pull, hashed again and kept."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.manifest.id),
            "digest": self.manifest.digest,
            "files": len(self.manifest.files),
            "bytes": self.manifest.size,
            "bytesDownloaded": self.bytes_downloaded,
            "bytesResumed": self.bytes_resumed,
            "dest": str(self.dest),
        }


@dataclass(frozen=True)
class Published:
    """A manifest as stored: the manifest itself and the pinned blob versions."""

    manifest: Manifest
    blob_versions: dict[str, str]
    published_at: str
    key: str
    version_id: str = ""
    """The S3 version of the manifest object that was read."""
    blob_checksums: dict[str, str] = field(default_factory=dict)
    """sha256 -> S3's checksum of the pinned version, confirmed by the publisher (empty in
    manifests written before weightshift recorded them)."""


def default_client(workers: int = 16) -> S3Client:
    """An S3 client from the standard AWS environment (AWS_ENDPOINT_URL works)."""
    config = Config(
        max_pool_connections=max(10, workers * 2), retries={"mode": "standard", "max_attempts": 8}
    )
    client: S3Client = boto3.client("s3", config=config)
    return client


class BundleStore:
    """Bundles in one bucket."""

    def __init__(
        self,
        bucket: str,
        client: S3Client | None = None,
        *,
        workers: int = 8,
        part_size: int = 64 * 1024 * 1024,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        progress_stream: TextIO | None = None,
    ) -> None:
        self.bucket = bucket
        self.s3 = client or default_client(workers)
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
            config = self.s3.get_object_lock_configuration(Bucket=self.bucket)[
                "ObjectLockConfiguration"
            ]
        except ClientError as error:
            if _code(error) in (
                "ObjectLockConfigurationNotFoundError",
                "ObjectLockConfigurationNotFound",
            ):
                raise StoreError(
                    f"Bucket {self.bucket} has no Object Lock: a published bundle there could be "
                    "overwritten or deleted. Use the bucket the ArtifactStore component creates "
                    "(versioning, Object Lock, default retention)."
                ) from None
            raise self._access(error) from None
        rule = (config.get("Rule") or {}).get("DefaultRetention") or {}
        if config.get("ObjectLockEnabled") != "Enabled" or not rule:
            raise StoreError(
                f"Bucket {self.bucket} has Object Lock without a default retention rule: set "
                "one (COMPLIANCE in production) so every published object is locked."
            )
        days = int(rule.get("Days") or 0) + 365 * int(rule.get("Years") or 0)
        return LockPolicy(str(rule.get("Mode", "COMPLIANCE")), days)

    def _encryption(self) -> dict[str, Any]:
        """Put arguments matching the bucket's default encryption (its policy demands them)."""
        try:
            rules = self.s3.get_bucket_encryption(Bucket=self.bucket)[
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

    def _access(self, error: ClientError) -> StoreError:
        return StoreError(
            f"S3 refused the request on bucket {self.bucket} ({_code(error)}: "
            f"{error.response.get('Error', {}).get('Message', '')}). Check the bucket name, "
            "the region and your credentials (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL)."
        )

    # --- reading ------------------------------------------------------------------------

    def manifest_listing(self, name: str) -> dict[Version, str]:
        """Published versions of ``name`` -> the oldest S3 version id of each manifest.

        One listing of versions, not objects: a delete marker must not hide a published
        version, and the oldest version is the one the conditional create wrote (S3 lists a
        key's versions newest first; timestamps can tie, list order cannot).
        """
        prefix = f"manifests/{name}/v"
        found: dict[Version, str] = {}
        paginator = self.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Versions", []):
                    try:
                        version = Version.parse(item["Key"][len(prefix) :].removesuffix(".json"))
                    except ValueError:
                        continue
                    if item["Key"] == manifest_key(name, version):
                        found[version] = item["VersionId"]
        except ClientError as error:
            raise self._access(error) from None
        return found

    def versions(self, name: str) -> list[Version]:
        """Published versions of ``name``, oldest first."""
        return sorted(self.manifest_listing(name))

    def _first_version(self, key: str) -> str | None:
        """The oldest version id of ``key``: the one the conditional create wrote."""
        oldest: str | None = None
        paginator = self.s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
            for item in page.get("Versions", []):
                if item["Key"] == key:
                    oldest = item["VersionId"]
        return oldest

    def published(
        self, name: str, version: Version, version_id: str | None = None
    ) -> Published | None:
        """The manifest of ``name`` ``version`` as first written, or None if unpublished."""
        key = manifest_key(name, version)
        try:
            if version_id is None:
                version_id = self._first_version(key)
            if version_id is None:
                return None
            body = self.s3.get_object(Bucket=self.bucket, Key=key, VersionId=version_id)[
                "Body"
            ].read()
        except ClientError as error:
            raise self._access(error) from None
        try:
            data = json.loads(body)
            manifest = Manifest.from_core(data["manifest"])
        except (KeyError, json.JSONDecodeError, BundleError) as exc:
            raise StoreError(f"{key} is not a weightshift manifest ({exc}).") from None
        if manifest.digest != data.get("digest"):
            raise StoreError(
                f"{key}: the manifest's content does not match its recorded digest: it was altered "
                "after publishing. Do not deploy it; investigate the bucket's access log."
            )
        return Published(
            manifest,
            dict(data.get("blobVersions", {})),
            str(data.get("publishedAt", "")),
            key,
            version_id,
            dict(data.get("blobChecksums", {})),
        )

    def resolve(self, bundle: BundleId) -> Published:
        """The published bundle ``bundle``; the hash in the id must match the manifest."""
        found = self.published(bundle.name, bundle.version)
        if found is None:
            raise StoreError(
                f"{bundle} is not published in bucket {self.bucket}: "
                f"`weightshift bundle list {bundle.name} --bucket {self.bucket}` shows what is."
            )
        if found.manifest.id != bundle:
            raise StoreError(
                f"{bundle.name} v{bundle.version} is published as {found.manifest.id}, "
                f"not {bundle}: "
                "the hash in the id does not match. Use the id that `bundle list` prints."
            )
        return found

    def resolve_ref(self, ref: BundleRef) -> Published:
        """The published bundle ``name/vX.Y.Z`` (its manifest supplies the hash), or, for a
        full id, ``resolve``."""
        if ref.digest is not None:
            return self.resolve(BundleId(ref.name, ref.version, ref.digest))
        found = self.published(ref.name, ref.version)
        if found is None:
            raise StoreError(
                f"{ref} is not published in bucket {self.bucket}: "
                f"`weightshift bundle list {ref.name} --bucket {self.bucket}` shows what is."
            )
        return found

    def latest(self, name: str) -> Published | None:
        listing = self.manifest_listing(name)
        if not listing:
            return None
        newest = max(listing)
        return self.published(name, newest, listing[newest])

    # --- publishing -----------------------------------------------------------------------

    def _blob_inventory(self) -> dict[str, tuple[str, int]]:
        """Every stored blob: sha256 -> (its oldest version id, size), in one paginated listing."""
        found: dict[str, tuple[str, int]] = {}
        prefix = "blobs/sha256/"
        paginator = self.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Versions", []):
                    # Newest first within a key: the last one seen is the original.
                    found[item["Key"][len(prefix) :]] = (item["VersionId"], int(item["Size"]))
        except ClientError as error:
            raise self._access(error) from None
        return found

    def _head_blob(self, sha256: str) -> tuple[str, int] | None:
        try:
            head = self.s3.head_object(Bucket=self.bucket, Key=blob_key(sha256))
        except ClientError as error:
            if _code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._access(error) from None
        version_id = self._first_version(blob_key(sha256)) or str(head.get("VersionId", ""))
        return version_id, int(head["ContentLength"])

    def _stored_checksum(self, key: str, version_id: str) -> dict[str, Any]:
        """The head of one object version with the checksum S3 stored for it."""
        try:
            head = self.s3.head_object(
                Bucket=self.bucket, Key=key, VersionId=version_id, ChecksumMode="ENABLED"
            )
        except ClientError as error:
            raise self._access(error) from None
        return cast("dict[str, Any]", head)

    def _part_layout(self, key: str, version_id: str) -> tuple[int, int] | None:
        """(part size, parts count) of a multipart object version; None if it is single-part."""
        try:
            head = self.s3.head_object(
                Bucket=self.bucket, Key=key, VersionId=version_id, PartNumber=1
            )
        except ClientError as error:
            raise self._access(error) from None
        count = head.get("PartsCount")
        return (int(head["ContentLength"]), int(count)) if count else None

    def _confirm_blob(
        self,
        sha: str,
        version_id: str,
        size: int,
        path: Path,
        *,
        unchanged: Callable[[], bool],
        vouched: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> str:
        """S3's checksum of blob version ``version_id``, once confirmed to be ``sha``'s content.

        Nothing is downloaded. A single-part blob's stored SHA-256 is the content hash
        itself. A multipart blob's composite is recomputed from the local file at the stored
        part boundaries, unless ``vouched`` (the checksum the base manifest recorded for
        this same version) equals it: versions are immutable and that publisher confirmed it.
        """
        key = blob_key(sha)
        where = f"{key} (version {version_id})"
        head = self._stored_checksum(key, version_id)
        stored = str(head.get("ChecksumSHA256") or "")
        refuse = (
            "weightshift reuses only a blob it has confirmed: a manifest naming a wrong one "
            "would fail every pull. "
            f"Nothing was published. Ask the owners of bucket {self.bucket} to find who wrote "
            "that version (CloudTrail data events or the bucket's access log); while it holds "
            "the key this content cannot be published there, so publish to another bucket or "
            "wait for its retention to end and the object to be removed."
        )
        if not stored:
            others = sorted(
                name.removeprefix("Checksum")
                for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1")
                if head.get(name)
            )
            raise StoreError(
                f"{where} has no SHA-256 checksum stored with it "
                f"(found {', '.join(others) or 'none'}), so its content cannot be confirmed "
                "without downloading it: it was not written by weightshift, which stores one "
                f"with every blob. {refuse}"
            )
        if int(head.get("ContentLength", -1)) != size:
            raise StoreError(
                f"{where} holds {head.get('ContentLength')} bytes, but the content with that "
                f"hash has {size}. {refuse}"
            )
        if vouched is not None and stored == vouched:
            return stored
        value, suffix = _split_checksum(stored)
        composite = suffix is not None or head.get("ChecksumType") == "COMPOSITE"
        whole = _b64(bytes.fromhex(sha))
        if not composite and value == whole:
            return stored
        expected = f"SHA-256 {whole} (the content of {path})"
        layout = self._part_layout(key, version_id)
        if layout is None:
            found = f"SHA-256 {stored}"
        else:
            part_size, count = layout
            found = f"composite SHA-256 {stored} of {count} parts"
            # weightshift writes equal parts but the last; other layouts cannot be recomputed.
            if suffix in (None, count) and -(-size // part_size) == count:
                local = composite_sha256(path, part_size, count, self.workers, on_bytes)
                if value == local:
                    return stored
                expected = (
                    f"composite SHA-256 {local}-{count} ({path} in {count} parts of "
                    f"{part_size} bytes)"
                )
            else:
                found += f", the first of {part_size} bytes (not weightshift's even parts)"
        if not unchanged():
            raise StoreError(
                f"{path} changed after it was hashed; nothing was published. Run publish again."
            )
        raise StoreError(
            f"{where} does not hold the content its key names: expected {expected}, "
            f"found {found}. {refuse}"
        )

    def _confirm_reused(
        self, local: LocalBundle, present: dict[str, str], base: Published | None
    ) -> dict[str, str]:
        """Confirm every reused blob (in parallel): sha256 -> S3's checksum of its version."""
        entries = {entry.sha256: entry for entry in local.entries}
        vouched: dict[str, str] = {}
        if base is not None:
            vouched = {
                sha: base.blob_checksums[sha]
                for sha, version_id in present.items()
                if base.blob_versions.get(sha) == version_id and sha in base.blob_checksums
            }

        # A multipart blob the base does not vouch for is confirmed by re-reading the local
        # file: shown as progress, as hashing is.
        metered = {
            sha
            for sha in present
            if sha not in vouched and entries[sha].size >= self.multipart_threshold
        }
        total = sum(entries[sha].size for sha in metered)
        meter = self.progress("confirming", total) if total else Silent("", 0)

        def confirm(sha: str) -> tuple[str, str]:
            entry = entries[sha]
            hashed = [0]

            def add(amount: int) -> None:
                hashed[0] += amount
                meter.add(amount)

            checksum = self._confirm_blob(
                sha,
                present[sha],
                entry.size,
                local.root / entry.path,
                unchanged=lambda: local.unchanged(entry.path),
                vouched=vouched.get(sha),
                on_bytes=add,
            )
            if sha in metered:
                meter.add(entry.size - hashed[0])
            return sha, checksum

        try:
            confirmed = dict(parallel(confirm, sorted(present), self.workers))
        except BaseException:
            meter.close(completed=False)
            raise
        meter.close()
        return confirmed

    def plan_publish(
        self,
        local: LocalBundle,
        version: Version | None,
        auto_bump: bool = False,
        *,
        bump: Bump | None = None,
        allow_placeholders: bool = False,
    ) -> PublishPlan:
        """Everything a publish must check, before a single byte is uploaded.

        The version is ``version``, or the latest published one bumped by ``bump`` (or by the
        bump the change needs, ``auto_bump``). It must be above the latest by at least the
        bump the change needs; or, as a hotfix on an older line, a PATCH above the newest
        version of that MAJOR.MINOR line whose change needs no more than a PATCH.
        """
        if version is None and bump is None and not auto_bump:
            raise StoreError("Give --version X.Y.Z or --bump major|minor|patch|auto.")
        if local.unpublishable and not allow_placeholders:
            raise StoreError(
                f"{local.root} is not publishable: {'; '.join(local.unpublishable)}. "
                "`weightshift bundle validate` lists what to replace; nothing was uploaded."
            )
        self.lock_policy()
        name = local.metadata.name
        listing = self.manifest_listing(name)
        if version is not None and version in listing:
            raise StoreError(
                f"{name} v{version} is already published; versions are never replaced."
            )
        base_version, hotfix = release_base(name, sorted(listing), version)
        base: Published | None = None
        reasons: tuple[str, ...]
        if base_version is None:
            if version is None:
                version = Version(0, 0, 0).bumped(bump) if bump else Version(1, 0, 0)
            required, reasons = None, ("first release of " + name,)
        else:
            base = self.published(name, base_version, listing[base_version])
            assert base is not None
            version, required, reasons = release_version(
                base.manifest,
                local.manifest(base_version),
                version,
                None if auto_bump else bump,
                max(listing),
            )
        manifest = local.manifest(version)
        missing: dict[str, int] = {}
        present: dict[str, str] = {}
        blobs = manifest.blobs()
        inventory = self._blob_inventory()
        for sha in blobs:
            head = inventory.get(sha)
            if head is None:
                missing[sha] = blobs[sha]
            elif head[1] != blobs[sha]:
                raise StoreError(
                    f"{blob_key(sha)} exists with {head[1]} bytes but the content with that hash "
                    f"has "
                    f"{blobs[sha]}: the bucket is corrupt. Run `weightshift bundle verify`."
                )
            else:
                present[sha] = head[0]
        # Key and size prove nothing about content: confirm each reused blob before the plan
        # is accepted, so a wrong one stops the publish before a byte is uploaded.
        checksums = self._confirm_reused(local, present, base)
        return PublishPlan(
            manifest,
            base.manifest if base else None,
            required,
            tuple(reasons),
            missing,
            present,
            checksums,
            hotfix,
        )

    def publish(
        self,
        local: LocalBundle,
        version: Version | None,
        auto_bump: bool = False,
        *,
        bump: Bump | None = None,
        allow_placeholders: bool = False,
    ) -> PublishResult:
        """Upload what the bucket lacks, then write the manifest last, exactly once.

        Ctrl-C raises :class:`Interrupted`: what was uploaded stays, and publishing again
        uploads only the rest."""
        plan = self.plan_publish(
            local, version, auto_bump, bump=bump, allow_placeholders=allow_placeholders
        )
        lock = self.lock_policy()
        encryption = self._encryption()
        paths = {entry.sha256: entry.path for entry in plan.manifest.files}
        versions = dict(plan.present)
        checksums = dict(plan.checksums)
        shared = _Upload(lock, encryption, self.progress("uploading", sum(plan.missing.values())))
        uploaded: list[str] = []

        def upload(sha: str) -> tuple[str, tuple[str, str]]:
            path = paths[sha]
            written = self._upload_blob(
                shared,
                local.root / path,
                sha,
                plan.missing[sha],
                unchanged=lambda: local.unchanged(path),
            )
            uploaded.append(sha)
            return sha, written

        try:
            for sha, (version_id, checksum) in parallel(
                upload, list(plan.missing), self.workers // 4, shared.stop
            ):
                versions[sha] = version_id
                checksums[sha] = checksum
            self._extend_retention(plan.present, lock)
        except KeyboardInterrupt:
            shared.progress.close(completed=False)
            partial = len(shared.parts - {blob_key(sha) for sha in uploaded})
            raise Interrupted(
                f"interrupted: {len(uploaded)} of {len(plan.missing)} blobs uploaded and kept "
                "(content-addressed)"
                + (f", and the parts sent of {partial} more" if partial else "")
                + f"; {plan.manifest.id} was not published. Run the same command again to "
                "resume: only what is missing is uploaded."
            ) from None
        except BaseException:
            shared.progress.close(completed=False)
            raise
        shared.progress.close()
        key = manifest_key(plan.manifest.name, plan.manifest.version)
        document = {
            "manifest": plan.manifest.core(),
            "id": str(plan.manifest.id),
            "digest": plan.manifest.digest,
            "blobVersions": versions,
            # Lets the next publish confirm a reused blob without re-reading the local file.
            "blobChecksums": checksums,
            "publishedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        try:
            self._put_manifest(key, document, lock, encryption)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted while writing the manifest of {plan.manifest.id}: every blob is "
                f"in the bucket; `weightshift bundle list {plan.manifest.name}` shows whether it "
                "was published, and if not, run the same command again."
            ) from None
        skipped = sum(plan.manifest.blobs()[sha] for sha in plan.present)
        return PublishResult(
            plan.manifest.id,
            plan.manifest.size,
            sum(plan.missing.values()),
            skipped,
            len(plan.missing),
            len(plan.present),
            key,
        )

    def _put_manifest(
        self, key: str, document: dict[str, Any], lock: LockPolicy, encryption: dict[str, Any]
    ) -> None:
        """Write a manifest, once: a conditional create under the bucket's lock."""
        manifest = document["manifest"]
        try:
            self.s3.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=canonical(document),
                ContentType="application/json",
                IfNoneMatch="*",
                ObjectLockMode=lock.mode,  # type: ignore[arg-type]
                ObjectLockRetainUntilDate=lock.until(),
                ChecksumAlgorithm="SHA256",
                **encryption,
            )
        except ClientError as error:
            if _code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StoreError(
                    f"{manifest['name']} v{manifest['version']} was published by someone else "
                    "while this publish ran; versions are never replaced. Publish the next version."
                ) from None
            raise self._access(error) from None

    def _extend_retention(self, present: dict[str, str], lock: LockPolicy) -> None:
        """A reused blob must stay locked as long as the newest bundle using it."""
        until = lock.until()

        def extend(item: tuple[str, str]) -> None:
            sha, version_id = item
            key = blob_key(sha)
            head = self.s3.head_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            current = head.get("ObjectLockRetainUntilDate")
            if current is None or current < until:
                self.s3.put_object_retention(
                    Bucket=self.bucket,
                    Key=key,
                    VersionId=version_id,
                    Retention=lock.retention(until),
                )

        parallel(extend, present.items(), self.workers)

    def _upload_blob(
        self, shared: _Upload, path: Path, sha: str, size: int, unchanged: Callable[[], bool]
    ) -> tuple[str, str]:
        """Write one blob: (its version id, S3's checksum of that version)."""
        key = blob_key(sha)
        lock, encryption, progress = shared.lock, shared.encryption, shared.progress
        changed = StoreError(
            f"{path} changed after it was hashed; nothing of it was published. Run publish again."
        )
        if shared.stop.is_set():
            raise Cancelled(key)
        try:
            if size < self.multipart_threshold:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise changed
                response = self.s3.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ObjectLockMode=lock.mode,  # type: ignore[arg-type]
                    ObjectLockRetainUntilDate=lock.until(),
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=_b64(hashlib.sha256(data).digest()),
                    **encryption,
                )
                progress.add(size)
                version_id = str(response.get("VersionId", ""))
                checksum = str(response.get("ChecksumSHA256") or "")
                return version_id, checksum or self._checksum_of(key, version_id)
            if not unchanged():
                raise changed
            written = self._multipart(shared, path, key, size, unchanged)
            if written is None:
                raise changed
            return written
        except ClientError as error:
            if _code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise self._access(error) from None
        # Another publish wrote this key first. Content addressing makes it ours too, but
        # only once its content is confirmed: the key alone proves nothing.
        head = self._head_blob(sha)
        if head is None:
            raise StoreError(
                f"{key} was written concurrently but cannot be read now; nothing was "
                "published. Run publish again."
            )
        checksum = self._confirm_blob(sha, head[0], size, path, unchanged=unchanged)
        progress.add(size)
        return head[0], checksum

    def _checksum_of(self, key: str, version_id: str) -> str:
        """S3's checksum of a version just written, where the write's response omitted it."""
        return str(self._stored_checksum(key, version_id).get("ChecksumSHA256") or "")

    def _multipart(
        self, shared: _Upload, path: Path, key: str, size: int, unchanged: Callable[[], bool]
    ) -> tuple[str, str] | None:
        """Upload in parts (resuming an interrupted upload): (version id, S3's checksum); None
        if the file changed meanwhile."""
        lock, encryption, progress = shared.lock, shared.encryption, shared.progress
        part_size = part_size_for(size, self.part_size)
        count = -(-size // part_size)
        upload_id, done = self._resumable_upload(key, path, part_size, lock, encryption)
        for number in done:
            progress.add(min(part_size, size - (number - 1) * part_size))
            shared.parts.add(key)

        def send(number: int) -> dict[str, Any]:
            if number in done:
                return done[number]
            if shared.stop.is_set():
                raise Cancelled(key)
            with path.open("rb") as handle:
                handle.seek((number - 1) * part_size)
                data = handle.read(part_size)
            checksum = _b64(hashlib.sha256(data).digest())
            response = self.s3.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumSHA256=checksum,
            )
            progress.add(len(data))
            shared.parts.add(key)
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

        parts = parallel(send, range(1, count + 1), self.workers, shared.stop)
        if not unchanged():
            # The parts read may mix two contents: never complete them under this hash.
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            return None
        response = self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            IfNoneMatch="*",
        )
        version_id = str(response.get("VersionId", ""))
        # The lock was requested when the upload began; set it on the version too, so the
        # blob is locked even where a store (or an emulator) skips that for multipart.
        self.s3.put_object_retention(
            Bucket=self.bucket,
            Key=key,
            VersionId=version_id,
            Retention=lock.retention(),
        )
        checksum = str(response.get("ChecksumSHA256") or "")
        return version_id, checksum or self._checksum_of(key, version_id)

    def _resumable_upload(
        self, key: str, path: Path, part_size: int, lock: LockPolicy, encryption: dict[str, Any]
    ) -> tuple[str, dict[int, dict[str, Any]]]:
        """An interrupted upload of this blob with the parts matching the local file, or a new one.

        A listed part is kept only if its checksum (or, where the service reports none, its
        MD5 ETag) matches the same range of the local file.
        """
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
        for upload in sorted(uploads, key=lambda u: u["Initiated"], reverse=True):
            if upload["Key"] != key:
                continue
            upload_id = upload["UploadId"]
            kept: dict[int, dict[str, Any]] = {}
            paginator = self.s3.get_paginator("list_parts")
            with path.open("rb") as handle:
                for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                    for part in page.get("Parts", []):
                        number = part["PartNumber"]
                        handle.seek((number - 1) * part_size)
                        data = handle.read(part_size)
                        if len(data) != part["Size"]:
                            continue
                        checksum = _b64(hashlib.sha256(data).digest())
                        etag = part["ETag"].strip('"')
                        if part.get("ChecksumSHA256") == checksum or (
                            not part.get("ChecksumSHA256") and etag == hashlib.md5(data).hexdigest()
                        ):
                            kept[number] = {
                                "PartNumber": number,
                                "ETag": part["ETag"],
                                "ChecksumSHA256": checksum,
                            }
            return upload_id, kept
        created = self.s3.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ChecksumAlgorithm="SHA256",
            ObjectLockMode=lock.mode,  # type: ignore[arg-type]
            ObjectLockRetainUntilDate=lock.until(),
            **encryption,
        )
        return created["UploadId"], {}

    # --- verify and pull ------------------------------------------------------------------

    def _stream_hash(
        self, sha: str, version_id: str, sink: Callable[[bytes], None] | None = None
    ) -> tuple[str, int]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": blob_key(sha)}
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

    def read_file(self, published: Published, path: str) -> bytes:
        """One small file of a published bundle, from its pinned blob version, hash checked."""
        entry = published.manifest.by_path().get(path)
        if entry is None:
            raise StoreError(f"{published.manifest.id} has no {path}.")
        chunks: list[bytes] = []
        try:
            digest, _ = self._stream_hash(
                entry.sha256, published.blob_versions.get(entry.sha256, ""), chunks.append
            )
        except ClientError as error:
            raise self._access(error) from None
        if digest != entry.sha256:
            raise StoreError(
                f"{blob_key(entry.sha256)} ({path} of {published.manifest.id}) does not match "
                f"its hash: run `weightshift bundle verify {published.manifest.id}`."
            )
        return b"".join(chunks)

    def verify(self, bundle: BundleId) -> list[str]:
        """Every problem with a published bundle: hashes, sizes, locks, overwrites (empty: good).

        Every blob is read and hashed again, metered as "verifying"."""
        published = self.resolve(bundle)
        now = datetime.now(UTC)
        blobs = published.manifest.blobs()
        overwritten = self._manifest_overwrite(published)
        meter = self.progress("verifying", sum(blobs.values()))
        stop = threading.Event()

        def counted(chunk: bytes) -> None:
            if stop.is_set():
                raise Cancelled(bundle.name)
            meter.add(len(chunk))

        def check(sha: str) -> list[str]:
            problems: list[str] = []
            key = blob_key(sha)
            version_id = published.blob_versions.get(sha, "")
            try:
                pinned: dict[str, Any] = {"VersionId": version_id} if version_id else {}
                head = self.s3.head_object(Bucket=self.bucket, Key=key, **pinned)
            except ClientError as error:
                return [f"{key}: missing ({_code(error)})"]
            if head.get("ObjectLockMode") is None:
                problems.append(f"{key}: not under Object Lock")
            elif (head.get("ObjectLockRetainUntilDate") or now) <= now:
                problems.append(f"{key}: Object Lock retention has expired")
            try:
                newest = self.s3.head_object(Bucket=self.bucket, Key=key).get("VersionId")
            except ClientError as error:
                # The published version was read above: only a delete marker hides it here.
                problems.append(
                    f"{key}: a delete marker sits over the published object ({_code(error)}); "
                    "pull still reads the published version"
                )
                newest = None
            if version_id and newest and newest != version_id:
                problems.append(
                    f"{key}: a newer object ({newest}) was written over the published one "
                    f"({version_id}); pull still reads the published one"
                )
            digest, size = self._stream_hash(sha, version_id, counted)
            if digest != sha or size != blobs[sha]:
                problems.append(
                    f"{key}: content hash {digest[:12]}... ({size} bytes) "
                    "does not match the manifest"
                )
            return problems

        try:
            found = parallel(check, sorted(blobs), self.workers, stop)
        except BaseException:
            meter.close(completed=False)
            raise
        meter.close()
        return overwritten + [problem for problems in found for problem in problems]

    def _manifest_overwrite(self, published: Published) -> list[str]:
        """An object written over the published manifest, which reads keep ignoring.

        Listed, not headed: a delete marker on top must not hide (or fail) the check.
        """
        newer: list[str] = []
        paginator = self.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=published.key):
                for item in page.get("Versions", []):
                    if item["Key"] == published.key:
                        newer.append(item["VersionId"])
        except ClientError as error:
            raise self._access(error) from None
        # S3 lists a key's versions newest first: everything before the published one is newer.
        if published.version_id not in newer or newer[0] == published.version_id:
            return []
        return [
            f"{published.key}: a newer object ({newer[0]}) was written over the published "
            f"manifest ({published.version_id}); list, show, verify and pull still read the "
            "published one"
        ]

    def pull(self, bundle: BundleId, dest: Path, serving_layout: bool = False) -> PullResult:
        """Download ``bundle`` to ``dest`` (new, or an empty folder), every hash checked.

        Files are staged in ``.<dest>.partial-<hash>`` beside a new ``dest``, which then takes
        its place in one rename once every file is checked. An empty ``dest`` (a volume mount,
        which cannot be renamed over) stages in ``dest/.partial-<hash>``; its checked files
        move up, and ``.weightshift/bundle.json``, which says what the folder holds, comes
        last. A failed check removes the staging folder. Ctrl-C keeps it
        (:class:`Interrupted`): the next pull of the bundle to the same place hashes what it
        holds again and downloads only the rest.
        """
        published = self.resolve(bundle)
        manifest = published.manifest
        inside = dest.is_dir()
        staging = (
            dest / f".partial-{bundle.digest}"
            if inside
            else dest.parent / f".{dest.name}.partial-{bundle.digest}"
        )
        if dest.exists() and (not inside or any(p != staging for p in dest.iterdir())):
            raise StoreError(
                f"{dest} already exists and is not an empty folder: pull into a new or an empty "
                "folder (nothing is overwritten)."
            )
        by_blob: dict[str, list[str]] = {}
        for entry in manifest.files:
            by_blob.setdefault(entry.sha256, []).append(entry.path)
        staging.mkdir(parents=True, exist_ok=True)
        meter = self.progress("pulling", manifest.size)
        stop = threading.Event()
        done: list[str] = []
        resumed: list[int] = []

        def fetch(sha: str) -> None:
            first, *copies = by_blob[sha]
            target, size = staging / first, manifest.blobs()[sha]
            kept = target.is_file() and target.stat().st_size == size
            if kept and sha256_file(target, meter.add, stop)[0] == sha:
                resumed.append(size)
            else:
                self._download(published, sha, target, on_bytes=meter.add, stop=stop, dest=dest)
            for copy in copies:
                (staging / copy).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(target, staging / copy)
            done.extend(by_blob[sha])

        try:
            parallel(fetch, sorted(by_blob), self.workers, stop)
            _finish_staging(staging, published, serving_layout)
            if inside:
                _move_up(staging, dest)
            else:
                os.replace(staging, dest)
        except KeyboardInterrupt:
            meter.close(completed=False)
            raise Interrupted(
                f"interrupted: {len(done)} of {len(manifest.files)} files downloaded and checked, "
                f"kept in {staging}; nothing {'else ' if inside else ''}was written to {dest}. "
                "Run the same command again to resume: what was kept is hashed again and only "
                "the rest is downloaded."
            ) from None
        except ClientError as error:
            meter.close(completed=False)
            shutil.rmtree(staging, ignore_errors=True)
            raise self._access(error) from None
        except BaseException:
            meter.close(completed=False)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        meter.close()
        return PullResult(manifest, dest, manifest.size - sum(resumed), sum(resumed))

    def _download(
        self,
        published: Published,
        sha: str,
        target: Path,
        *,
        on_bytes: Callable[[int], None],
        stop: threading.Event,
        dest: Path,
    ) -> None:
        """One blob's pinned version to ``target``, written in place only once its hash matches."""
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".download", dir=target.parent
        )
        try:
            with os.fdopen(handle, "wb") as out:

                def sink(chunk: bytes) -> None:
                    if stop.is_set():
                        raise Cancelled(str(target))
                    out.write(chunk)
                    on_bytes(len(chunk))

                digest, size = self._stream_hash(sha, published.blob_versions.get(sha, ""), sink)
            if digest != sha or size != published.manifest.blobs()[sha]:
                raise StoreError(
                    f"{blob_key(sha)} (for {target.name}) does not match the manifest: content "
                    f"hash {digest[:12]}..., {size} bytes. The bucket copy is damaged or was "
                    f"tampered with; nothing was written to {dest}. "
                    f"Run `weightshift bundle verify {published.manifest.id}`."
                )
            os.replace(partial, target)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise


def _finish_staging(staging: Path, published: Published, serving_layout: bool) -> None:
    """Make a staging folder whose files are all checked ready to move into place: nothing
    but the bundle's files (a killed pull's leftovers go), the serving layout if asked, and
    the record of what the folder holds."""
    expected = {entry.path for entry in published.manifest.files}
    for derived in (staging / SERVING_DIR, (staging / PULLED_ID).parent):
        shutil.rmtree(derived, ignore_errors=True)
    for path in sorted(staging.rglob("*"), reverse=True):
        if path.is_dir():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(staging).as_posix() not in expected:
            path.unlink()
    if serving_layout:
        link_serving_layout(staging)
    # What the folder holds, for whoever serves it (the gateway names its metrics by this
    # id): the bundle's own files never carry it.
    (staging / PULLED_ID).parent.mkdir()
    (staging / PULLED_ID).write_text(
        json.dumps(
            {
                "id": str(published.manifest.id),
                "digest": published.manifest.digest,
                "publishedAt": published.published_at,
            },
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )


def _move_up(staging: Path, dest: Path) -> None:
    """Move a finished staging folder's contents into ``dest``, its parent: the record of
    what the folder holds last, so whoever reads it finds every file in place."""
    record = Path(PULLED_ID).parts[0]
    children = sorted(staging.iterdir(), key=lambda child: child.name == record)
    for child in children:
        os.replace(child, dest / child.name)
    staging.rmdir()


def release_base(
    name: str, published: list[Version], version: Version | None
) -> tuple[Version | None, bool]:
    """The published version a new release of ``name`` is measured from, and whether it is a
    hotfix; (None, False) for a first release.

    A release above the latest is measured from the latest. A version below it is a hotfix:
    it is measured from the newest published version of its own MAJOR.MINOR line, and must
    be above it.
    """
    if not published:
        return None, False
    latest = max(published)
    if version is None or version > latest:
        return latest, False
    line = [v for v in published if (v.major, v.minor) == (version.major, version.minor)]
    if not line:
        raise StoreError(
            f"Version {version} is not greater than the latest published, {name} v{latest}, "
            f"and no {version.major}.{version.minor}.x is published for it to be a hotfix of. "
            f"Choose a version above {latest} (--bump auto picks the smallest legal one); a "
            "hotfix is a PATCH above the newest version of an older MAJOR.MINOR line."
        )
    newest = max(line)
    if version <= newest:
        raise StoreError(
            f"Version {version} is not greater than {name} v{newest}, the newest published "
            f"{version.major}.{version.minor}.x: a hotfix on that line is "
            f"{newest.bumped(Bump.PATCH)}, a new release is above {latest} (--bump auto)."
        )
    return newest, True


def release_version(
    base: Manifest,
    candidate: Manifest,
    version: Version | None,
    bump: Bump | None,
    latest: Version,
) -> tuple[Version, Bump, tuple[str, ...]]:
    """The version of ``candidate`` measured from ``base`` (``release_base``): ``version``, or
    base bumped by ``bump`` (None: by what the change needs). Returns it with the bump the
    change needs and why; refuses a step smaller than that, or no change at all."""
    change = diff(base, candidate)
    if change.bump is None:
        raise StoreError(
            f"Nothing changed since {base.id}: every file is identical. "
            "There is nothing to publish."
        )
    required, why = change.bump, "; ".join(change.reasons)
    if version is None:
        if bump is not None and bump < required:
            raise StoreError(
                f"--bump {bump.name.lower()} is smaller than the change from {base.id} needs, "
                f"{required.name}: {why}. Use --bump {required.name.lower()} (or --bump auto)."
            )
        return base.version.bumped(bump or required), required, change.reasons
    if version < latest and required > Bump.PATCH:
        raise StoreError(
            f"Version {version} is a hotfix on the {version.major}.{version.minor} line (a "
            f"PATCH of {base.id}; the latest is v{latest}), but the change from {base.id} "
            f"needs {required.name}: {why}. A hotfix may change only what a PATCH covers "
            "(generation, safety or routing parameters, metadata, evaluation results, "
            f"dependency versions); publish this as a new release above v{latest} "
            "(--bump auto)."
        )
    step = base.version.bump_to(version)
    assert step is not None
    if step < required:
        raise StoreError(
            f"Version {version} is a {step.name} step from {base.version}, but the change "
            f"needs at least {required.name}: {why}. Publish as "
            f"{base.version.bumped(required)} (or --bump auto)."
        )
    return version, required, change.reasons


def iter_published(store: BundleStore, name: str) -> Iterator[Published]:
    for version, version_id in sorted(store.manifest_listing(name).items()):
        found = store.published(name, version, version_id)
        if found is not None:
            yield found
