"""Reusing blobs the bucket already holds: a blob is reused only once S3's stored checksum
of its pinned version is confirmed to be the local content, without downloading it."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightshift.bundles.hashing import CHUNK, Cancelled, Silent, parallel
from weightshift.bundles.manifest import LocalBundle
from weightshift.bundles.store.bucket import Bucket, StoreError, b64, blob_key
from weightshift.bundles.store.manifests import Published


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
    return b64(hashlib.sha256(b"".join(parts)).digest())


class Reuse:
    """Confirms the blobs a publish reuses."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def _refusal(self) -> str:
        """Why a blob that cannot be confirmed stops the publish, and what to do."""
        return (
            "weightshift reuses only a blob it has confirmed: a manifest naming a wrong one "
            "would fail every pull. "
            f"Nothing was published. Ask the owners of bucket {self.bucket.name} to find who wrote "
            "that version (CloudTrail data events or the bucket's access log); while it holds "
            "the key this content cannot be published there, so publish to another bucket or "
            "wait for its retention to end and the object to be removed."
        )

    def _head_with_sha256(self, key: str, version_id: str, size: int) -> dict[str, Any]:
        """The head of a blob version that has a SHA-256 stored and ``size`` bytes; refuses
        one that has not."""
        where = f"{key} (version {version_id})"
        head = self.bucket.stored_checksum(key, version_id)
        stored = str(head.get("ChecksumSHA256") or "")
        refuse = self._refusal()
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
        return head

    def confirm_blob(
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
        head = self._head_with_sha256(key, version_id, size)
        stored = str(head["ChecksumSHA256"])
        refuse = self._refusal()
        if vouched is not None and stored == vouched:
            return stored
        value, suffix = _split_checksum(stored)
        composite = suffix is not None or head.get("ChecksumType") == "COMPOSITE"
        whole = b64(bytes.fromhex(sha))
        if not composite and value == whole:
            return stored
        expected = f"SHA-256 {whole} (the content of {path})"
        layout = self.bucket.part_layout(key, version_id)
        if layout is None:
            found = f"SHA-256 {stored}"
        else:
            part_size, count = layout
            found = f"composite SHA-256 {stored} of {count} parts"
            # weightshift writes equal parts but the last; other layouts cannot be recomputed.
            if suffix in (None, count) and -(-size // part_size) == count:
                local = composite_sha256(path, part_size, count, self.bucket.workers, on_bytes)
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

    def confirm_reused(
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
            if sha not in vouched and entries[sha].size >= self.bucket.multipart_threshold
        }
        total = sum(entries[sha].size for sha in metered)
        meter = self.bucket.progress("confirming", total) if total else Silent("", 0)

        def confirm(sha: str) -> tuple[str, str]:
            entry = entries[sha]
            hashed = [0]

            def add(amount: int) -> None:
                hashed[0] += amount
                meter.add(amount)

            checksum = self.confirm_blob(
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
            confirmed = dict(parallel(confirm, sorted(present), self.bucket.workers))
        except BaseException:
            meter.close(completed=False)
            raise
        meter.close()
        return confirmed
