"""What a bundle is once hashed: its file entries, the manifest and its digest (the id's
hash), a validated local bundle folder, and the serving layout a server loads.

Every file is hashed (sha256); the manifest lists path, size and hash of each; the bundle
digest is the sha256 of the canonical manifest; the id is ``name/vX.Y.Z-<12 hex>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightshift.bundles.content import unpublishable
from weightshift.bundles.hashing import MeterFactory, Silent, canonical, hash_files
from weightshift.bundles.layout import validate
from weightshift.bundles.schemas import BundleError, Metadata
from weightshift.bundles.versioning import HASH_LENGTH, BundleId, Version, VersionError

SCHEMA = "weightshift.bundle/v1"


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """What a bundle is: name, version, every file, and its metadata."""

    name: str
    version: Version
    files: tuple[FileEntry, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def core(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": str(self.version),
            "files": [entry.to_json() for entry in self.files],
            "metadata": dict(self.metadata),
        }

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical(self.core())).hexdigest()

    @property
    def id(self) -> BundleId:
        return BundleId(self.name, self.version, self.digest[:HASH_LENGTH])

    @property
    def size(self) -> int:
        return sum(entry.size for entry in self.files)

    def blobs(self) -> dict[str, int]:
        """Distinct content: sha256 -> size."""
        return {entry.sha256: entry.size for entry in self.files}

    def by_path(self) -> dict[str, FileEntry]:
        return {entry.path: entry for entry in self.files}

    @classmethod
    def from_core(cls, data: Mapping[str, Any]) -> Manifest:
        """Parse a manifest; raise BundleError if it is malformed."""
        try:
            if data.get("schema") != SCHEMA:
                raise BundleError([f"schema {data.get('schema')!r} is not {SCHEMA}"], "manifest")
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]
            )
            return cls(
                str(data["name"]),
                Version.parse(str(data["version"])),
                files,
                data.get("metadata") or {},
            )
        except (KeyError, TypeError, ValueError, VersionError) as exc:
            if isinstance(exc, BundleError):
                raise
            raise BundleError([f"malformed manifest ({exc})"], "manifest") from None


def stamp(path: Path) -> tuple[int, int]:
    """Size and modification time: a file whose stamp moved may no longer match its hash."""
    info = path.stat()
    return info.st_size, info.st_mtime_ns


@dataclass
class LocalBundle:
    """A validated bundle folder and its hashed files."""

    root: Path
    metadata: Metadata
    entries: tuple[FileEntry, ...]
    stamps: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    unpublishable: tuple[str, ...] = ()
    """Placeholders ``bundle init`` wrote that are still there (``unpublishable``)."""

    def unchanged(self, path: str) -> bool:
        return stamp(self.root / path) == self.stamps.get(path)

    def manifest(self, version: Version) -> Manifest:
        return Manifest(
            self.metadata.name, version, self.entries, self.metadata.model_dump(mode="json")
        )


def load_local(
    root: Path, workers: int | None = None, progress: MeterFactory = Silent
) -> LocalBundle:
    """Validate ``root`` (every problem at once) and hash its files, metered as "hashing"."""
    files, metadata, problems = validate(root)
    if problems or metadata is None:
        raise BundleError(problems or ["metadata.json: missing"], f"bundle {root}")
    stamps = {rel: stamp(root / rel) for rel in files}
    meter = progress("hashing", sum(size for size, _ in stamps.values()))
    try:
        hashed = hash_files(root, files, workers, meter.add)
    except BaseException:
        meter.close(completed=False)
        raise
    meter.close()
    moved = [rel for rel in files if stamp(root / rel) != stamps[rel]]
    if moved:
        raise BundleError(
            [f"{rel}: changed while it was being hashed" for rel in moved], f"bundle {root}"
        )
    entries = tuple(FileEntry(rel, hashed[rel][1], hashed[rel][0]) for rel in files)
    return LocalBundle(root, metadata, entries, stamps, tuple(unpublishable(root, files, metadata)))


SERVING_DIR = "hf"


def link_serving_layout(root: Path) -> Path:
    """Link the model's files side by side in ``root/hf`` (the Hugging Face layout servers
    such as vLLM load: config.json, weight shards and tokenizer files in one folder).

    Hard links, so no byte is copied; two files that would land on one name are refused.
    """
    target = root / SERVING_DIR
    sources = [root / "model/config.json"]
    for folder in ("model/weights", "model/tokenizer"):
        sources += sorted(p for p in (root / folder).rglob("*") if p.is_file())
    placed: dict[str, Path] = {}
    for source in sources:
        name = source.name
        if name in placed:
            raise BundleError(
                [
                    f"{source.relative_to(root)} and {placed[name].relative_to(root)} would both "
                    f"be {SERVING_DIR}/{name} in the serving layout: rename one"
                ],
                f"bundle {root}",
            )
        placed[name] = source
    target.mkdir()
    for name, source in placed.items():
        try:
            os.link(source, target / name)
        except OSError:
            shutil.copyfile(source, target / name)
    return target
