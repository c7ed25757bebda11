"""JSON as a bundle reads it: ``json.loads``, except that an object naming a key twice is
refused (the standard library keeps the last value without a word), with the lines of both.

Every JSON file of a bundle goes through :func:`loads`: the manifest, ``metadata.json``, the
``config/`` parts, the model config, tokenizer files and few-shot examples, and the record
``bundle pull`` writes. The duplicate is found by the decoder's ``object_pairs_hook``; only
then is the text scanned for where the two keys are, so a document without one costs a plain
parse.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')
"""A JSON token: a string, a punctuation mark, or a bare scalar (number, true, false, null)."""


class DuplicateKeyError(json.JSONDecodeError):
    """A JSON object names a key twice. ``lineno``/``colno`` are those of the second
    occurrence; ``msg`` says which key, where the first is, and the fix."""

    def __init__(self, key: str, doc: str, pos: int, first: int | None) -> None:
        self.key = key
        if first is None:
            where = ""
        elif doc.count("\n", 0, first) == doc.count("\n", 0, pos):
            where = f" (first at column {first - doc.rfind(chr(10), 0, first)})"
        else:
            where = f" (first at line {doc.count(chr(10), 0, first) + 1})"
        super().__init__(f"key {json.dumps(key)} appears twice{where}: remove one", doc, pos)

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.msg}"


class _Repeated(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Repeated(key)
        found[key] = value
    return found


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def loads(text: str | bytes) -> Any:
    """``text`` parsed as JSON; :class:`DuplicateKeyError` (a ``json.JSONDecodeError``) for
    an object with a key twice, ``json.JSONDecodeError`` for anything else malformed."""
    if isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    try:
        return _DECODER.decode(text)
    except _Repeated as repeated:
        first, second = _locate(text, repeated.key)
        raise DuplicateKeyError(repeated.key, text, second, first) from None


def _locate(text: str, key: str) -> tuple[int | None, int]:
    """Where ``key`` first appears twice in one object of ``text`` (valid JSON but for the
    duplicate): the offsets of both occurrences; (None, 0) if the scan cannot tell."""
    objects: list[dict[str, int] | None] = []  # the open containers; None for an array
    expect_key = False
    for token in _TOKEN.finditer(text):
        mark = token.group()
        if mark in ("{", "["):
            objects.append({} if mark == "{" else None)
            expect_key = mark == "{"
        elif mark in ("}", "]"):
            objects.pop()
            expect_key = False
        elif mark == ",":
            expect_key = bool(objects) and objects[-1] is not None
        elif expect_key and objects and (seen := objects[-1]) is not None:
            name = json.loads(mark)
            if name in seen and name == key:
                return seen[name], token.start()
            seen[name] = token.start()
            expect_key = False
    return None, 0
