"""The leaf values that differ between two JSON documents, by dotted path.

One walk serves ``weightshift plan`` (resource inputs before and after a stage) and
``weightshift bundle diff`` (a bundle's JSON parts). They open containers differently, and
each keeps the output its users know, so how a walk opens containers is a :class:`Policy`:

``ALIGNED`` (plan)
    A container is opened only where both sides hold one of the same shape: two objects, or
    two lists of one length (items of any kind, compared index by index). Any other pair is
    one change of the whole value. A key missing on one side is ``None`` there (so a missing
    key and a ``null`` are the same), and values are compared with ``==`` (``1 == 1.0``).

``EACH_SIDE`` (bundle diff)
    Each side is opened on its own: a non-empty object, or a non-empty list whose items are
    all objects; other lists and empty containers are single values. A value present on one
    side only is listed leaf by leaf, a key missing on one side is :data:`ABSENT` there, and
    values are compared as JSON text (``1`` and ``1.0`` differ). An empty container facing
    one that is opened is not listed (its items are), except the whole document's: a JSON
    file added or removed is compared with ``{}``, which its first line shows.

Paths: object keys are joined with ``.``, list items indexed (``rules[0].match``); the whole
document is the path ``""``. Changes come in walk order: object keys sorted, list items by
index. Standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""A key on one side of a change only (``EACH_SIDE``)."""


@dataclass(frozen=True)
class Policy:
    """How a walk opens containers, fills a missing key and compares two leaves."""

    each_side: bool
    """Open each side on its own (True), or only two containers of the same shape (False)."""
    missing: Any
    """What a key missing on one side is there: ``ABSENT`` or ``None``."""


ALIGNED = Policy(each_side=False, missing=None)
EACH_SIDE = Policy(each_side=True, missing=ABSENT)


@dataclass(frozen=True)
class Leaf:
    """One leaf that differs: its path, before and after."""

    path: str
    before: Any
    after: Any


def text(value: Any) -> str:
    """A value as canonical JSON text (keys sorted, non-ASCII kept)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def changes(before: Any, after: Any, policy: Policy) -> list[Leaf]:
    """Every leaf that differs between ``before`` and ``after``, in walk order."""
    return list(_walk(before, after, "", policy))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _children(value: Any, path: str) -> dict[str, Any] | None:
    """``value``'s items by path if ``EACH_SIDE`` opens it on its own; None for a leaf."""
    if value is ABSENT or not value:
        return None
    if isinstance(value, dict):
        return {_join(path, key): item for key, item in value.items()}
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return {f"{path}[{index}]": item for index, item in enumerate(value)}
    return None


def _aligned(before: Any, after: Any, path: str, missing: Any) -> list[tuple[str, Any, Any]] | None:
    """The items of two containers of the same shape, side by side; None for another pair."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            (_join(path, key), before.get(key, missing), after.get(key, missing))
            for key in sorted(before.keys() | after.keys())
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            (f"{path}[{i}]", old, new)
            for i, (old, new) in enumerate(zip(before, after, strict=True))
        ]
    return None


def _walk(before: Any, after: Any, path: str, policy: Policy) -> Iterator[Leaf]:
    if not policy.each_side:
        items = _aligned(before, after, path, policy.missing)
        if items is None:
            if before != after:
                yield Leaf(path, before, after)
            return
        for child, old, new in items:
            yield from _walk(old, new, child, policy)
        return
    old, new = _children(before, path), _children(after, path)
    if old is None and new is None:
        if before is ABSENT or after is ABSENT or text(before) != text(after):
            yield Leaf(path, before, after)
        return
    if old is None or new is None:
        # One side opened, the other a single value: listed unless it is absent, or an empty
        # container whose items the opened side lists (the whole document's is listed).
        single = before if old is None else after
        if single is not ABSENT and (single not in ([], {}) or not path):
            yield Leaf(path, single, ABSENT) if old is None else Leaf(path, ABSENT, single)
    old, new = old or {}, new or {}
    for child in sorted(old.keys() | new.keys()):
        yield from _walk(old.get(child, ABSENT), new.get(child, ABSENT), child, policy)
