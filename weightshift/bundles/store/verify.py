"""Verifying a published bundle: every blob read and hashed again, its lock and pinned
version checked, and objects written over the manifest or a blob reported."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from weightshift.bundles.hashing import Cancelled, parallel
from weightshift.bundles.store.bucket import Bucket, blob_key, code
from weightshift.bundles.store.manifests import Manifests
from weightshift.bundles.versioning import BundleId


class Verifier:
    """Checks published bundles in one bucket."""

    def __init__(self, bucket: Bucket, manifests: Manifests) -> None:
        self.bucket = bucket
        self.manifests = manifests

    def verify(self, bundle: BundleId) -> list[str]:
        """Every problem with a published bundle: hashes, sizes, locks, overwrites (empty: good).

        Every blob is read and hashed again, metered as "verifying"."""
        published = self.manifests.resolve(bundle)
        now = datetime.now(UTC)
        blobs = published.manifest.blobs()
        overwritten = self.manifests.overwritten(published)
        meter = self.bucket.progress("verifying", sum(blobs.values()))
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
                head = self.bucket.s3.head_object(Bucket=self.bucket.name, Key=key, **pinned)
            except ClientError as error:
                return [f"{key}: missing ({code(error)})"]
            if head.get("ObjectLockMode") is None:
                problems.append(f"{key}: not under Object Lock")
            elif (head.get("ObjectLockRetainUntilDate") or now) <= now:
                problems.append(f"{key}: Object Lock retention has expired")
            try:
                newest = self.bucket.s3.head_object(Bucket=self.bucket.name, Key=key).get(
                    "VersionId"
                )
            except ClientError as error:
                # The published version was read above: only a delete marker hides it here.
                problems.append(
                    f"{key}: a delete marker sits over the published object ({code(error)}); "
                    "pull still reads the published version"
                )
                newest = None
            if version_id and newest and newest != version_id:
                problems.append(
                    f"{key}: a newer object ({newest}) was written over the published one "
                    f"({version_id}); pull still reads the published one"
                )
            digest, size = self.bucket.stream_hash(sha, version_id, counted)
            if digest != sha or size != blobs[sha]:
                problems.append(
                    f"{key}: content hash {digest[:12]}... ({size} bytes) "
                    "does not match the manifest"
                )
            return problems

        try:
            found = parallel(check, sorted(blobs), self.bucket.workers, stop)
        except BaseException:
            meter.close(completed=False)
            raise
        meter.close()
        return overwritten + [problem for problems in found for problem in problems]
