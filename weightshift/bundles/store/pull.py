"""Reading published bundles back: one small file, or the whole bundle pulled into a folder
through a staging folder (resumed after Ctrl-C), every hash checked; with ``reuse``, a
complete copy already there verified and kept instead (``kept``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError

from weightshift.bundles.folders import check_folder_to_write
from weightshift.bundles.hashing import Cancelled, parallel, sha256_file
from weightshift.bundles.manifest import SERVING_DIR, Manifest, link_serving_layout
from weightshift.bundles.store.bucket import PULLED_ID, Bucket, Interrupted, StoreError, blob_key
from weightshift.bundles.store.kept import clear, copy_problem, stray_staging
from weightshift.bundles.store.manifests import Manifests, Published
from weightshift.bundles.versioning import BundleId


@dataclass(frozen=True)
class PullResult:
    manifest: Manifest
    dest: Path
    bytes_downloaded: int
    bytes_resumed: int
    """Already downloaded and checked by an interrupted pull, hashed again and kept."""
    outcome: Literal["pulled", "kept", "replaced"] = "pulled"
    """pulled: into a new or empty ``dest``; with ``reuse``, kept: ``dest`` held a complete
    copy of the bundle, verified, and nothing was downloaded; replaced: it held something
    else (``replaced`` says what), which was removed before the pull."""
    replaced: str = ""
    removed_staging: tuple[str, ...] = ()
    """Staging folders of other, interrupted pulls to ``dest`` that ``reuse`` removed."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.manifest.id),
            "digest": self.manifest.digest,
            "files": len(self.manifest.files),
            "bytes": self.manifest.size,
            "bytesDownloaded": self.bytes_downloaded,
            "bytesResumed": self.bytes_resumed,
            "dest": str(self.dest),
            "outcome": self.outcome,
            "replaced": self.replaced or None,
            "removedStaging": list(self.removed_staging),
        }


class Puller:
    """Reads published bundles out of one bucket."""

    def __init__(self, bucket: Bucket, manifests: Manifests) -> None:
        self.bucket = bucket
        self.manifests = manifests

    def read_file(self, published: Published, path: str) -> bytes:
        """One small file of a published bundle, from its pinned blob version, hash checked."""
        entry = published.manifest.by_path().get(path)
        if entry is None:
            raise StoreError(f"{published.manifest.id} has no {path}.")
        chunks: list[bytes] = []
        try:
            digest, _ = self.bucket.stream_hash(
                entry.sha256, published.blob_versions.get(entry.sha256, ""), chunks.append
            )
        except ClientError as error:
            raise self.bucket.access(error) from None
        if digest != entry.sha256:
            raise StoreError(
                f"{blob_key(entry.sha256)} ({path} of {published.manifest.id}) does not match "
                f"its hash: run `weightshift bundle verify {published.manifest.id}`."
            )
        return b"".join(chunks)

    def pull(
        self, bundle: BundleId, dest: Path, serving_layout: bool = False, *, reuse: bool = False
    ) -> PullResult:
        """Download ``bundle`` to ``dest`` (new, or an empty folder), every hash checked.

        Files are staged in ``.<dest>.partial-<hash>`` beside a new ``dest``, which then takes
        its place in one rename once every file is checked. An empty ``dest`` (a volume mount,
        which cannot be renamed over) stages in ``dest/.partial-<hash>``; its checked files
        move up, and ``.weightshift/bundle.json``, which says what the folder holds, comes
        last. A failed check removes the staging folder. Ctrl-C keeps it
        (:class:`Interrupted`): the next pull of the bundle to the same place hashes what it
        holds again and downloads only the rest.

        A ``dest`` holding files is refused before the bucket is read, unless ``reuse``: then
        ``dest`` is the caller's own (an init container's volume), and a complete copy of the
        bundle there is verified and kept, anything else removed and pulled again
        (:mod:`weightshift.bundles.store.kept`).
        """
        check_destination(dest, reuse)
        if not reuse:
            _staging(bundle, dest)
        published = self.manifests.resolve(bundle)
        if reuse:
            return self._reuse(published, dest, serving_layout)
        return self._fetch(published, dest, serving_layout)

    def _reuse(self, published: Published, dest: Path, serving_layout: bool) -> PullResult:
        """``pull`` with ``reuse``: keep a verified complete copy at ``dest``; otherwise clear
        ``dest`` (but a staging folder of this bundle, to resume from) and pull."""
        manifest = published.manifest
        own = dest / f".partial-{manifest.id.digest}"
        replaced = ""
        if dest.is_dir() and any(child != own for child in dest.iterdir()):
            meter = self.bucket.progress("verifying", manifest.size)
            try:
                problem = copy_problem(published, dest, serving_layout, self.bucket.workers, meter)
            except BaseException:
                meter.close(completed=False)
                raise
            meter.close()
            if problem is None:
                removed = _remove(stray_staging(dest, None))
                return PullResult(manifest, dest, 0, 0, "kept", "", removed)
            replaced = problem
            clear(dest, keep=own)
        removed = _remove(stray_staging(dest, _staging(manifest.id, dest)))
        result = self._fetch(published, dest, serving_layout)
        outcome: Literal["pulled", "replaced"] = "replaced" if replaced else "pulled"
        return replace(result, outcome=outcome, replaced=replaced, removed_staging=removed)

    def _fetch(self, published: Published, dest: Path, serving_layout: bool) -> PullResult:
        """Download ``published`` to ``dest`` (new, or empty but for its staging folder)."""
        manifest = published.manifest
        bundle = manifest.id
        inside = dest.is_dir()
        staging = _staging(bundle, dest)
        by_blob: dict[str, list[str]] = {}
        for entry in manifest.files:
            by_blob.setdefault(entry.sha256, []).append(entry.path)
        staging.mkdir(parents=True, exist_ok=True)
        meter = self.bucket.progress("pulling", manifest.size)
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
            parallel(fetch, sorted(by_blob), self.bucket.workers, stop)
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
            raise self.bucket.access(error) from None
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

                digest, size = self.bucket.stream_hash(
                    sha, published.blob_versions.get(sha, ""), sink
                )
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


def _not_empty(dest: Path) -> StoreError:
    return StoreError(
        f"{dest} already exists and is not an empty folder: pull into a new or an empty "
        "folder (nothing is overwritten). Where DEST is this pull's own, as an init "
        "container's volume is, pass --reuse: a complete copy of the bundle there is verified "
        "and kept, anything else removed and pulled again."
    )


def check_destination(dest: Path, reuse: bool) -> None:
    """Refuse, before the bucket is read, a ``dest`` no pull can fill: a path that cannot be
    a folder (:func:`check_folder_to_write`), or, without ``reuse``, a folder holding
    anything but the staging folder of an interrupted pull."""
    check_folder_to_write(dest, "DEST")
    if reuse or not dest.is_dir():
        return
    if any(not child.name.startswith(".partial-") for child in dest.iterdir()):
        raise _not_empty(dest)


def _staging(bundle: BundleId, dest: Path) -> Path:
    """Where a pull to ``dest`` stages its files; refuses a ``dest`` holding anything else."""
    inside = dest.is_dir()
    staging = (
        dest / f".partial-{bundle.digest}"
        if inside
        else dest.parent / f".{dest.name}.partial-{bundle.digest}"
    )
    if dest.exists() and (not inside or any(p != staging for p in dest.iterdir())):
        raise _not_empty(dest)
    return staging


def _remove(folders: list[Path]) -> tuple[str, ...]:
    """Remove ``folders`` (staging folders of other pulls); their paths."""
    for folder in folders:
        shutil.rmtree(folder)
    return tuple(str(folder) for folder in folders)


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
