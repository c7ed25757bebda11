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
beside the destination, and the next pull of the same bundle resumes from there. A pull
with ``reuse`` (an init container run again over its volume) keeps a complete, verified copy
already at the destination and replaces anything else.

:class:`BundleStore` is the face callers use; each job is a collaborator of its own:
``bucket`` (settings, lock policy, encryption, single S3 calls), ``manifests`` (listing,
resolve, latest), ``reuse`` (confirming blobs already stored), ``upload``, ``publishing``
(plan and publish), ``verify``, ``pull`` and ``kept`` (judging a folder an earlier pull
left).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from weightshift.bundles.hashing import Meter
from weightshift.bundles.manifest import LocalBundle
from weightshift.bundles.store.bucket import (
    MAX_PARTS,
    MIN_PART,
    MULTIPART_THRESHOLD,
    PULLED_ID,
    Bucket,
    Interrupted,
    LockPolicy,
    StoreError,
    blob_key,
    default_client,
    manifest_key,
)
from weightshift.bundles.store.manifests import Manifests, Published
from weightshift.bundles.store.publishing import (
    Publisher,
    PublishPlan,
    PublishResult,
    release_base,
    release_version,
)
from weightshift.bundles.store.pull import Puller, PullResult, check_destination
from weightshift.bundles.store.reuse import composite_sha256
from weightshift.bundles.store.upload import part_size_for
from weightshift.bundles.store.verify import Verifier
from weightshift.bundles.versioning import Bump, BundleId, BundleRef, Version

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "MAX_PARTS",
    "MIN_PART",
    "MULTIPART_THRESHOLD",
    "PULLED_ID",
    "BundleStore",
    "Interrupted",
    "LockPolicy",
    "PublishPlan",
    "PublishResult",
    "Published",
    "PullResult",
    "StoreError",
    "blob_key",
    "check_destination",
    "composite_sha256",
    "default_client",
    "iter_published",
    "manifest_key",
    "part_size_for",
    "release_base",
    "release_version",
]


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
        self.view = Bucket(
            bucket,
            client or default_client(workers),
            workers=workers,
            part_size=part_size,
            multipart_threshold=multipart_threshold,
            progress_stream=progress_stream,
        )
        self.manifests = Manifests(self.view)
        self.publisher = Publisher(self.view, self.manifests)
        self.verifier = Verifier(self.view, self.manifests)
        self.puller = Puller(self.view, self.manifests)

    @property
    def bucket(self) -> str:
        return self.view.name

    @property
    def s3(self) -> S3Client:
        return self.view.s3

    @property
    def workers(self) -> int:
        return self.view.workers

    @workers.setter
    def workers(self, workers: int) -> None:
        self.view.workers = workers

    def progress(self, label: str, total: int) -> Meter:
        """Progress of one operation, on ``progress_stream`` (stderr)."""
        return self.view.progress(label, total)

    def lock_policy(self) -> LockPolicy:
        """The bucket's default Object Lock retention; refuse a bucket without one."""
        return self.view.lock_policy()

    def manifest_listing(self, name: str) -> dict[Version, str]:
        """Published versions of ``name`` -> the oldest S3 version id of each manifest."""
        return self.manifests.listing(name)

    def versions(self, name: str) -> list[Version]:
        """Published versions of ``name``, oldest first."""
        return self.manifests.versions(name)

    def published(
        self, name: str, version: Version, version_id: str | None = None
    ) -> Published | None:
        """The manifest of ``name`` ``version`` as first written, or None if unpublished."""
        return self.manifests.published(name, version, version_id)

    def resolve(self, bundle: BundleId) -> Published:
        """The published bundle ``bundle``; the hash in the id must match the manifest."""
        return self.manifests.resolve(bundle)

    def resolve_ref(self, ref: BundleRef) -> Published:
        """The published bundle ``name/vX.Y.Z`` or full id."""
        return self.manifests.resolve_ref(ref)

    def latest(self, name: str) -> Published | None:
        return self.manifests.latest(name)

    def plan_publish(
        self,
        local: LocalBundle,
        version: Version | None,
        auto_bump: bool = False,
        *,
        bump: Bump | None = None,
        allow_placeholders: bool = False,
    ) -> PublishPlan:
        """Everything a publish must check, before a single byte is uploaded
        (:meth:`Publisher.plan`)."""
        return self.publisher.plan(
            local, version, auto_bump, bump=bump, allow_placeholders=allow_placeholders
        )

    def check_unpublished(self, name: str, version: Version) -> None:
        """Refuse ``name`` ``version`` if it is already published (before any hashing)."""
        self.publisher.check_unpublished(name, version)

    def publish(
        self,
        local: LocalBundle,
        version: Version | None,
        auto_bump: bool = False,
        *,
        bump: Bump | None = None,
        allow_placeholders: bool = False,
    ) -> PublishResult:
        """Plan, then upload what the bucket lacks and write the manifest last, exactly once.

        Ctrl-C raises :class:`Interrupted`: what was uploaded stays, and publishing again
        uploads only the rest."""
        plan = self.plan_publish(
            local, version, auto_bump, bump=bump, allow_placeholders=allow_placeholders
        )
        return self.publisher.publish(local, plan)

    def read_file(self, published: Published, path: str) -> bytes:
        """One small file of a published bundle, from its pinned blob version, hash checked."""
        return self.puller.read_file(published, path)

    def verify(self, bundle: BundleId) -> list[str]:
        """Every problem with a published bundle: hashes, sizes, locks, overwrites (empty: good)."""
        return self.verifier.verify(bundle)

    def pull(
        self, bundle: BundleId, dest: Path, serving_layout: bool = False, *, reuse: bool = False
    ) -> PullResult:
        """Download ``bundle`` to ``dest`` (new, or an empty folder), every hash checked;
        ``reuse``: ``dest`` is the caller's own, a complete copy there is verified and kept,
        anything else replaced (:meth:`Puller.pull`)."""
        return self.puller.pull(bundle, dest, serving_layout, reuse=reuse)


def iter_published(store: BundleStore, name: str) -> Iterator[Published]:
    for version, version_id in sorted(store.manifest_listing(name).items()):
        found = store.published(name, version, version_id)
        if found is not None:
            yield found
