"""Publishing: the version a release gets and the bump it needs, the plan checked before a
byte is uploaded, then the upload and the manifest written last, exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from weightshift.bundles.diff import diff
from weightshift.bundles.hashing import Silent, canonical, parallel
from weightshift.bundles.manifest import FileEntry, LocalBundle, Manifest
from weightshift.bundles.store.bucket import (
    Bucket,
    Interrupted,
    LockPolicy,
    StoreError,
    blob_key,
    code,
    manifest_key,
)
from weightshift.bundles.store.manifests import Manifests, Published
from weightshift.bundles.store.reuse import Reuse
from weightshift.bundles.store.upload import UploadBatch, Uploader
from weightshift.bundles.versioning import Bump, BundleId, Version

QUIET_BELOW = 1024 * 1024
"""Uploads smaller than this in all show no progress meter (the summary says what went up)."""


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
    uploaded: tuple[FileEntry, ...] = ()
    """The files whose content was uploaded."""
    reused: tuple[FileEntry, ...] = ()
    """The files whose content the bucket already held (an earlier version's, mostly)."""
    reused_from: BundleId | None = None
    """The published version the bump was measured from, when it holds every reused file's
    content (a prompt-only release reuses the weights of the one before)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "bytesTotal": self.bytes_total,
            "bytesUploaded": self.bytes_uploaded,
            "bytesSkipped": self.bytes_skipped,
            "blobsUploaded": self.blobs_uploaded,
            "blobsSkipped": self.blobs_skipped,
            "filesUploaded": [entry.path for entry in self.uploaded],
            "filesReused": [entry.path for entry in self.reused],
            "reusedFrom": str(self.reused_from) if self.reused_from else None,
            "manifest": self.manifest_key,
        }


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


class Publisher:
    """Plans and runs a publish."""

    def __init__(self, bucket: Bucket, manifests: Manifests) -> None:
        self.bucket = bucket
        self.manifests = manifests
        self.reuse = Reuse(bucket)
        self.uploader = Uploader(bucket, self.reuse)

    def plan(
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
        self.bucket.lock_policy()
        name = local.metadata.name
        listing = self.manifests.listing(name)
        if version is not None and version in listing:
            self.check_unpublished(name, version, listing[version])
        base_version, hotfix = release_base(name, sorted(listing), version)
        base: Published | None = None
        reasons: tuple[str, ...]
        if base_version is None:
            if version is None:
                version = Version(0, 0, 0).bumped(bump) if bump else Version(1, 0, 0)
            required, reasons = None, ("first release of " + name,)
        else:
            base = self.manifests.published(name, base_version, listing[base_version])
            assert base is not None
            version, required, reasons = release_version(
                base.manifest,
                local.manifest(base_version),
                version,
                None if auto_bump else bump,
                max(listing),
            )
        manifest = local.manifest(version)
        missing, present = self._missing_and_present(manifest.blobs())
        # Key and size prove nothing about content: confirm each reused blob before the plan
        # is accepted, so a wrong one stops the publish before a byte is uploaded.
        checksums = self.reuse.confirm_reused(local, present, base)
        base_manifest = base.manifest if base else None
        return PublishPlan(
            manifest, base_manifest, required, tuple(reasons), missing, present, checksums, hotfix
        )

    def check_unpublished(self, name: str, version: Version, version_id: str | None = None) -> None:
        """Refuse ``name`` ``version`` if it is published, naming the id it has: one listing
        and one small read, so a repeated ``--version`` is said before anything is hashed."""
        found = self.manifests.published(name, version, version_id)
        if found is not None:
            raise StoreError(
                f"{name} v{version} is already published, as {found.manifest.id}; versions are "
                "never replaced. Bump the version: give a higher --version, or --bump auto for "
                "the smallest legal one."
            )

    def _missing_and_present(self, blobs: dict[str, int]) -> tuple[dict[str, int], dict[str, str]]:
        """The blobs the bucket lacks (sha256 -> size) and those it has (sha256 -> version id)."""
        missing: dict[str, int] = {}
        present: dict[str, str] = {}
        inventory = self.bucket.blob_inventory()
        for sha, size in blobs.items():
            head = inventory.get(sha)
            if head is None:
                missing[sha] = size
            elif head[1] != size:
                raise StoreError(
                    f"{blob_key(sha)} exists with {head[1]} bytes but the content with that hash "
                    f"has {size}: the bucket is corrupt. Run `weightshift bundle verify`."
                )
            else:
                present[sha] = head[0]
        return missing, present

    def publish(self, local: LocalBundle, plan: PublishPlan) -> PublishResult:
        """Upload what the bucket lacks, then write the manifest last, exactly once.

        Ctrl-C raises :class:`Interrupted`: what was uploaded stays, and publishing again
        uploads only the rest."""
        lock = self.bucket.lock_policy()
        encryption = self.bucket.encryption()
        versions, checksums = self._upload_missing(local, plan, lock, encryption)
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
            self.put_manifest(key, document, lock, encryption)
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted while writing the manifest of {plan.manifest.id}: every blob is "
                f"in the bucket; `weightshift bundle list {plan.manifest.name}` shows whether it "
                "was published, and if not, run the same command again."
            ) from None
        skipped = sum(plan.manifest.blobs()[sha] for sha in plan.present)
        files = plan.manifest.files
        reused = tuple(entry for entry in files if entry.sha256 not in plan.missing)
        base = plan.base
        from_base = base is not None and all(e.sha256 in base.blobs() for e in reused)
        return PublishResult(
            plan.manifest.id,
            plan.manifest.size,
            sum(plan.missing.values()),
            skipped,
            len(plan.missing),
            len(plan.present),
            key,
            tuple(entry for entry in files if entry.sha256 in plan.missing),
            reused,
            base.id if base is not None and reused and from_base else None,
        )

    def _upload_missing(
        self, local: LocalBundle, plan: PublishPlan, lock: LockPolicy, encryption: dict[str, Any]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Upload the blobs the bucket lacks and extend the lock of those reused: every blob's
        version id and checksum (sha256 -> each)."""
        paths = {entry.sha256: entry.path for entry in plan.manifest.files}
        versions = dict(plan.present)
        checksums = dict(plan.checksums)
        total = sum(plan.missing.values())
        # A few small files go up in a request or two: a meter would only say "0.0 of 0.0 MiB".
        meter = self.bucket.progress("uploading", total) if total >= QUIET_BELOW else Silent("", 0)
        shared = UploadBatch(lock, encryption, meter)
        uploaded: list[str] = []

        def upload(sha: str) -> tuple[str, tuple[str, str]]:
            path = paths[sha]
            written = self.uploader.upload_blob(
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
                upload, list(plan.missing), self.bucket.workers // 4, shared.stop
            ):
                versions[sha] = version_id
                checksums[sha] = checksum
            self.extend_retention(plan.present, lock)
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
        return versions, checksums

    def put_manifest(
        self, key: str, document: dict[str, Any], lock: LockPolicy, encryption: dict[str, Any]
    ) -> None:
        """Write a manifest, once: a conditional create under the bucket's lock."""
        manifest = document["manifest"]
        try:
            self.bucket.s3.put_object(
                Bucket=self.bucket.name,
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
            if code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StoreError(
                    f"{manifest['name']} v{manifest['version']} was published by someone else "
                    "while this publish ran; versions are never replaced. Publish the next version."
                ) from None
            raise self.bucket.access(error) from None

    def extend_retention(self, present: dict[str, str], lock: LockPolicy) -> None:
        """A reused blob must stay locked as long as the newest bundle using it."""
        until = lock.until()

        def extend(item: tuple[str, str]) -> None:
            sha, version_id = item
            key = blob_key(sha)
            head = self.bucket.s3.head_object(
                Bucket=self.bucket.name, Key=key, VersionId=version_id
            )
            current = head.get("ObjectLockRetainUntilDate")
            if current is None or current < until:
                self.bucket.s3.put_object_retention(
                    Bucket=self.bucket.name,
                    Key=key,
                    VersionId=version_id,
                    Retention=lock.retention(until),
                )

        parallel(extend, present.items(), self.bucket.workers)
