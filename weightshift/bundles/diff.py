"""What changed between two bundles: files added, removed or changed part by part, the values
changed in their JSON parts, and the smallest version bump the change needs."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from weightshift import jsondiff
from weightshift.bundles import strict_json
from weightshift.bundles.manifest import FileEntry, Manifest
from weightshift.bundles.schemas import PARTS, part_of
from weightshift.bundles.versioning import Bump
from weightshift.jsondiff import ABSENT

VALUE_DIFF_PATHS = frozenset(
    {
        "model/config.json",
        "config/generation.json",
        "config/safety.json",
        "config/routing.json",
        "metadata.json",
        "tests/evaluation.json",
    }
)
"""The JSON parts whose changes ``diff`` shows value by value."""
VALUE_DIFF_LIMIT = 1024 * 1024
"""Larger JSON files are compared by size only."""

Reader = Callable[[str], bytes]
"""Reads one file of a bundle by its path (from a folder, or a published blob)."""


ARROW = " \u2192 "


@dataclass(frozen=True)
class ValueChange:
    """One leaf of a JSON part that changed: its dotted key, before and after."""

    key: str
    before: Any = ABSENT
    after: Any = ABSENT

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {"key": self.key}
        if self.before is not ABSENT:
            found["before"] = self.before
        if self.after is not ABSENT:
            found["after"] = self.after
        return found

    def render(self) -> str:
        if self.before is ABSENT:
            return f"+ {self.key}: {jsondiff.text(self.after)}"
        if self.after is ABSENT:
            return f"- {self.key}: {jsondiff.text(self.before)}"
        return f"{self.key}: {jsondiff.text(self.before)}{ARROW}{jsondiff.text(self.after)}"


WHOLE_FILE = "(whole file)"
"""The key of a change to a JSON part as a whole (its top-level value, not an object)."""


def value_changes(before: Any, after: Any) -> tuple[ValueChange, ...]:
    """Every leaf that differs between two JSON documents, by dotted key, keys sorted as text:
    lists of objects indexed (``rules[0].match``), other lists single values
    (:data:`weightshift.jsondiff.EACH_SIDE`)."""
    found = jsondiff.changes(before, after, jsondiff.EACH_SIDE)
    return tuple(
        sorted(
            (ValueChange(leaf.path or WHOLE_FILE, leaf.before, leaf.after) for leaf in found),
            key=lambda change: change.key,
        )
    )


@dataclass(frozen=True)
class FileChange:
    """One file added, removed or changed: its sizes and, for a JSON part, its values."""

    path: str
    change: Literal["added", "removed", "changed"]
    size_before: int | None
    size_after: int | None
    values: tuple[ValueChange, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "sizeBefore": self.size_before,
            "sizeAfter": self.size_after,
            "values": [value.to_json() for value in self.values],
        }

    def render(self) -> str:
        sizes = [f"{size:,}" for size in (self.size_before, self.size_after) if size is not None]
        return f"{self.path} ({ARROW.join(sizes)} bytes)"


@dataclass(frozen=True)
class PartChange:
    part: str
    files: tuple[FileChange, ...] = ()

    def paths(self, change: str) -> tuple[str, ...]:
        return tuple(f.path for f in self.files if f.change == change)

    @property
    def added(self) -> tuple[str, ...]:
        return self.paths("added")

    @property
    def removed(self) -> tuple[str, ...]:
        return self.paths("removed")

    @property
    def changed(self) -> tuple[str, ...]:
        return self.paths("changed")


@dataclass(frozen=True)
class BundleDiff:
    changes: tuple[PartChange, ...]
    bump: Bump | None
    """The smallest bump the change needs; None when nothing changed."""
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "requiredBump": self.bump.name if self.bump else None,
            "reasons": list(self.reasons),
            "parts": [
                {
                    "part": c.part,
                    "added": list(c.added),
                    "removed": list(c.removed),
                    "changed": list(c.changed),
                    "files": [f.to_json() for f in c.files],
                }
                for c in self.changes
            ],
        }

    def render(self) -> str:
        """One line per file (``+`` added, ``-`` removed, ``~`` changed) with its sizes, the
        values that changed in a JSON part under it, then the bump and why."""
        signs = {"added": "+", "removed": "-", "changed": "~"}
        lines: list[str] = []
        for part in self.changes:
            for found in part.files:
                lines.append(f"{signs[found.change]} {part.part}: {found.render()}")
                lines.extend(f"    {value.render()}" for value in found.values)
        lines.append(f"required bump: {self.bump.name if self.bump else 'none (identical)'}")
        lines.extend(f"  {reason}" for reason in self.reasons)
        return "\n".join(lines)


def _json_values(read: Reader | None, path: str, size: int | None) -> Any:
    """The parsed JSON part at ``path``, or ABSENT where it is not one to compare by value."""
    if read is None or size is None or size > VALUE_DIFF_LIMIT or path not in VALUE_DIFF_PATHS:
        return ABSENT
    try:
        return strict_json.loads(read(path))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return ABSENT


def _file_change(
    path: str,
    before: FileEntry | None,
    after: FileEntry | None,
    read_old: Reader | None,
    read_new: Reader | None,
) -> FileChange | None:
    if before is not None and after is not None and before.sha256 == after.sha256:
        return None
    change: Literal["added", "removed", "changed"] = (
        "added" if before is None else "removed" if after is None else "changed"
    )
    size_before = before.size if before else None
    size_after = after.size if after else None
    old = _json_values(read_old, path, size_before)
    new = _json_values(read_new, path, size_after)
    values: tuple[ValueChange, ...] = ()
    if old is not ABSENT or new is not ABSENT:
        values = value_changes({} if old is ABSENT else old, {} if new is ABSENT else new)
    return FileChange(path, change, size_before, size_after, values)


def diff(
    old: Manifest,
    new: Manifest,
    read_old: Reader | None = None,
    read_new: Reader | None = None,
) -> BundleDiff:
    """What changed from ``old`` to ``new``, part by part, and the bump it requires.

    Given readers of each side's files, a changed JSON part also lists its changed values."""
    before, after = old.by_path(), new.by_path()
    by_part: dict[str, list[FileChange]] = {}
    for path in sorted(before.keys() | after.keys()):
        found = _file_change(path, before.get(path), after.get(path), read_old, read_new)
        if found is not None:
            part = part_of(path)
            by_part.setdefault(part.name if part else "other", []).append(found)
    changes = tuple(PartChange(name, tuple(files)) for name, files in by_part.items())
    bump: Bump | None = None
    reasons: list[str] = []

    def need(size: Bump, why: str) -> None:
        nonlocal bump
        bump = size if bump is None or size > bump else bump
        reasons.append(f"{why} -> {size.name}")

    for old_key, label in (("base_model", "base model"), ("architecture", "architecture")):
        if old.metadata.get(old_key) != new.metadata.get(old_key):
            need(
                Bump.MAJOR,
                f"{label} changed ({old.metadata.get(old_key)} -> {new.metadata.get(old_key)})",
            )
    if old.metadata.get("dependencies") != new.metadata.get("dependencies"):
        need(Bump.PATCH, "dependency versions changed")
    parts = {part.name: part for part in PARTS}
    for change in changes:
        part = parts.get(change.part)
        need(part.bump if part else Bump.PATCH, part.why if part else f"{change.part} changed")
    return BundleDiff(changes, bump, tuple(reasons))
