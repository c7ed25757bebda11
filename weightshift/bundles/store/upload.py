"""Uploading blobs: a conditional create under the bucket's lock, single put or multipart,
an interrupted multipart upload resumed from the parts that still match."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from weightshift.bundles.hashing import Cancelled, Meter, parallel
from weightshift.bundles.store.bucket import (
    MAX_PARTS,
    MIN_PART,
    Bucket,
    LockPolicy,
    StoreError,
    b64,
    blob_key,
    code,
)
from weightshift.bundles.store.reuse import Reuse


def part_size_for(size: int, preferred: int) -> int:
    """A part size at least ``preferred`` that keeps the upload within S3's 10,000 parts."""
    size_needed = -(-size // MAX_PARTS)
    return max(preferred, MIN_PART, size_needed)


@dataclass(frozen=True)
class UploadBatch:
    """What every blob upload of one publish shares."""

    lock: LockPolicy
    encryption: dict[str, Any]
    progress: Meter
    stop: threading.Event = field(default_factory=threading.Event)
    """Set by Ctrl-C (or a failure): uploads end at the next part."""
    parts: set[str] = field(default_factory=set)
    """Keys of blobs with parts in an unfinished multipart upload (resumed next time)."""


class Uploader:
    """Writes the blobs of one publish."""

    def __init__(self, bucket: Bucket, reuse: Reuse) -> None:
        self.bucket = bucket
        self.reuse = reuse

    def upload_blob(
        self, shared: UploadBatch, path: Path, sha: str, size: int, unchanged: Callable[[], bool]
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
            if size < self.bucket.multipart_threshold:
                data = path.read_bytes()
                if hashlib.sha256(data).hexdigest() != sha:
                    raise changed
                response = self.bucket.s3.put_object(
                    Bucket=self.bucket.name,
                    Key=key,
                    Body=data,
                    IfNoneMatch="*",
                    ObjectLockMode=lock.mode,  # type: ignore[arg-type]
                    ObjectLockRetainUntilDate=lock.until(),
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=b64(hashlib.sha256(data).digest()),
                    **encryption,
                )
                progress.add(size)
                version_id = str(response.get("VersionId", ""))
                checksum = str(response.get("ChecksumSHA256") or "")
                return version_id, checksum or self.bucket.checksum_of(key, version_id)
            if not unchanged():
                raise changed
            written = self._multipart(shared, path, key, size, unchanged)
            if written is None:
                raise changed
            return written
        except ClientError as error:
            if code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise self.bucket.access(error) from None
        # Another publish wrote this key first. Content addressing makes it ours too, but
        # only once its content is confirmed: the key alone proves nothing.
        head = self.bucket.head_blob(sha)
        if head is None:
            raise StoreError(
                f"{key} was written concurrently but cannot be read now; nothing was "
                "published. Run publish again."
            )
        checksum = self.reuse.confirm_blob(sha, head[0], size, path, unchanged=unchanged)
        progress.add(size)
        return head[0], checksum

    def _multipart(
        self, shared: UploadBatch, path: Path, key: str, size: int, unchanged: Callable[[], bool]
    ) -> tuple[str, str] | None:
        """Upload in parts (resuming an interrupted upload): (version id, S3's checksum); None
        if the file changed meanwhile."""
        lock, encryption, progress = shared.lock, shared.encryption, shared.progress
        part_size = part_size_for(size, self.bucket.part_size)
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
            checksum = b64(hashlib.sha256(data).digest())
            response = self.bucket.s3.upload_part(
                Bucket=self.bucket.name,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=data,
                ChecksumSHA256=checksum,
            )
            progress.add(len(data))
            shared.parts.add(key)
            return {"PartNumber": number, "ETag": response["ETag"], "ChecksumSHA256": checksum}

        parts = parallel(send, range(1, count + 1), self.bucket.workers, shared.stop)
        if not unchanged():
            # The parts read may mix two contents: never complete them under this hash.
            self.bucket.s3.abort_multipart_upload(
                Bucket=self.bucket.name, Key=key, UploadId=upload_id
            )
            return None
        response = self.bucket.s3.complete_multipart_upload(
            Bucket=self.bucket.name,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            IfNoneMatch="*",
        )
        version_id = str(response.get("VersionId", ""))
        # The lock was requested when the upload began; set it on the version too, so the
        # blob is locked even where a store (or an emulator) skips that for multipart.
        self.bucket.s3.put_object_retention(
            Bucket=self.bucket.name,
            Key=key,
            VersionId=version_id,
            Retention=lock.retention(),
        )
        checksum = str(response.get("ChecksumSHA256") or "")
        return version_id, checksum or self.bucket.checksum_of(key, version_id)

    def _resumable_upload(
        self, key: str, path: Path, part_size: int, lock: LockPolicy, encryption: dict[str, Any]
    ) -> tuple[str, dict[int, dict[str, Any]]]:
        """An interrupted upload of this blob with the parts matching the local file, or a new one.

        A listed part is kept only if its checksum (or, where the service reports none, its
        MD5 ETag) matches the same range of the local file.
        """
        uploads = self.bucket.s3.list_multipart_uploads(Bucket=self.bucket.name, Prefix=key).get(
            "Uploads", []
        )
        for upload in sorted(uploads, key=lambda u: u["Initiated"], reverse=True):
            if upload["Key"] != key:
                continue
            upload_id = upload["UploadId"]
            kept: dict[int, dict[str, Any]] = {}
            paginator = self.bucket.s3.get_paginator("list_parts")
            with path.open("rb") as handle:
                for page in paginator.paginate(
                    Bucket=self.bucket.name, Key=key, UploadId=upload_id
                ):
                    for part in page.get("Parts", []):
                        number = part["PartNumber"]
                        handle.seek((number - 1) * part_size)
                        data = handle.read(part_size)
                        if len(data) != part["Size"]:
                            continue
                        checksum = b64(hashlib.sha256(data).digest())
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
        created = self.bucket.s3.create_multipart_upload(
            Bucket=self.bucket.name,
            Key=key,
            ChecksumAlgorithm="SHA256",
            ObjectLockMode=lock.mode,  # type: ignore[arg-type]
            ObjectLockRetainUntilDate=lock.until(),
            **encryption,
        )
        return created["UploadId"], {}
