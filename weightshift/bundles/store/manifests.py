"""Published manifests: the versions of a bundle in the bucket, each manifest as first
written (its digest checked), ids resolved to them, and objects written over them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from weightshift.bundles import strict_json
from weightshift.bundles.manifest import Manifest
from weightshift.bundles.schemas import BundleError
from weightshift.bundles.store.bucket import Bucket, StoreError, manifest_key
from weightshift.bundles.versioning import BundleId, BundleRef, Version


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


class Manifests:
    """Reading the manifests of one bucket."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def listing(self, name: str) -> dict[Version, str]:
        """Published versions of ``name`` -> the oldest S3 version id of each manifest.

        One listing of versions, not objects: a delete marker must not hide a published
        version, and the oldest version is the one the conditional create wrote (S3 lists a
        key's versions newest first; timestamps can tie, list order cannot).
        """
        prefix = f"manifests/{name}/v"
        found: dict[Version, str] = {}
        paginator = self.bucket.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket.name, Prefix=prefix):
                for item in page.get("Versions", []):
                    try:
                        version = Version.parse(item["Key"][len(prefix) :].removesuffix(".json"))
                    except ValueError:
                        continue
                    if item["Key"] == manifest_key(name, version):
                        found[version] = item["VersionId"]
        except ClientError as error:
            raise self.bucket.access(error) from None
        return found

    def versions(self, name: str) -> list[Version]:
        """Published versions of ``name``, oldest first."""
        return sorted(self.listing(name))

    def published(
        self, name: str, version: Version, version_id: str | None = None
    ) -> Published | None:
        """The manifest of ``name`` ``version`` as first written, or None if unpublished."""
        key = manifest_key(name, version)
        try:
            if version_id is None:
                version_id = self.bucket.first_version(key)
            if version_id is None:
                return None
            body = self.bucket.s3.get_object(
                Bucket=self.bucket.name, Key=key, VersionId=version_id
            )["Body"].read()
        except ClientError as error:
            raise self.bucket.access(error) from None
        try:
            data = strict_json.loads(body)
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
                f"{bundle} is not published in bucket {self.bucket.name}: "
                f"`weightshift bundle list {bundle.name} --bucket {self.bucket.name}` "
                "shows what is."
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
                f"{ref} is not published in bucket {self.bucket.name}: "
                f"`weightshift bundle list {ref.name} --bucket {self.bucket.name}` shows what is."
            )
        return found

    def latest(self, name: str) -> Published | None:
        listing = self.listing(name)
        if not listing:
            return None
        newest = max(listing)
        return self.published(name, newest, listing[newest])

    def overwritten(self, published: Published) -> list[str]:
        """An object written over the published manifest, which reads keep ignoring.

        Listed, not headed: a delete marker on top must not hide (or fail) the check.
        """
        newer: list[str] = []
        paginator = self.bucket.s3.get_paginator("list_object_versions")
        try:
            for page in paginator.paginate(Bucket=self.bucket.name, Prefix=published.key):
                for item in page.get("Versions", []):
                    if item["Key"] == published.key:
                        newer.append(item["VersionId"])
        except ClientError as error:
            raise self.bucket.access(error) from None
        # S3 lists a key's versions newest first: everything before the published one is newer.
        if published.version_id not in newer or newer[0] == published.version_id:
            return []
        return [
            f"{published.key}: a newer object ({newer[0]}) was written over the published "
            f"manifest ({published.version_id}); list, show, verify and pull still read the "
            "published one"
        ]
