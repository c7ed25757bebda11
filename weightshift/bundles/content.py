"""Files of a bundle checked by their content: safetensors headers, pickles under any name,
GGUF magic, and the placeholders ``bundle init`` writes that make a bundle unpublishable.

No file anywhere in a bundle may be a pickle, whatever its name: a pickle runs code when it is
loaded. A safetensors shard's header must describe exactly the bytes the file holds.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from weightshift.bundles import strict_json
from weightshift.bundles.hashing import canonical
from weightshift.bundles.schemas import Metadata, Part

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


SAFETENSORS_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U16": 16,
    "I16": 16,
    "F16": 16,
    "BF16": 16,
    "U32": 32,
    "I32": 32,
    "F32": 32,
    "C64": 64,
    "U64": 64,
    "I64": 64,
    "F64": 64,
}
"""Bits per element of each safetensors dtype (the format's own list)."""
SAFETENSORS_MAX_HEADER = 100_000_000
"""The safetensors library refuses a larger header."""
SHOWN_TENSOR_PROBLEMS = 5


def read_safetensors(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """A safetensors file's header, and what is wrong with the file as the header describes it.

    The layout: an 8-byte little-endian header length, a JSON header naming each tensor's
    dtype, shape and ``data_offsets`` (relative to the end of the header), then the tensors'
    bytes, which the offsets must cover exactly, without gaps or overlaps. Only the header is
    read.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return None, [
                f"not a safetensors file: {size} bytes, too short for the 8-byte header length"
            ]
        length = int.from_bytes(head, "little")
        if length > min(SAFETENSORS_MAX_HEADER, size - 8):
            return None, [
                f"not a safetensors file: its first 8 bytes give a header of {length:,} bytes, "
                f"but the file has {size:,}"
            ]
        raw = handle.read(length)
    try:
        header = strict_json.loads(raw)
    except strict_json.DuplicateKeyError as exc:
        return None, [f"its safetensors header names {exc.key!r} twice: the file is damaged"]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, ["not a safetensors file: its header is not JSON"]
    if not isinstance(header, dict):
        return None, ["not a safetensors file: its header is not a JSON object"]
    data = size - 8 - length
    problems: list[str] = []
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                problems.append("__metadata__ must map strings to strings")
            continue
        found = _tensor(name, info, data)
        if isinstance(found, str):
            problems.append(found)
        else:
            spans.append(found)
    if not problems:
        end = 0
        for begin, stop, name in sorted(spans):
            if begin != end:
                kind = "a gap" if begin > end else "an overlap"
                problems.append(
                    f"tensor {name!r} starts at byte {begin:,}: {kind} after byte {end:,}"
                )
            end = max(end, stop)
        if end != data:
            problems.append(
                f"the tensors cover {end:,} bytes, but the file holds {data:,} bytes of tensor "
                "data after its header (truncated, or padded with bytes no tensor owns)"
            )
    if len(problems) > SHOWN_TENSOR_PROBLEMS:
        more = len(problems) - SHOWN_TENSOR_PROBLEMS
        problems = [*problems[:SHOWN_TENSOR_PROBLEMS], f"and {more} more problem(s) like these"]
    return header, problems


def _tensor(name: str, info: Any, data: int) -> tuple[int, int, str] | str:
    """One header entry: its (begin, end, name) in the data, or what is wrong with it."""
    where = f"tensor {name!r}"
    if not isinstance(info, dict):
        return f"{where}: not a JSON object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_BITS:
        return f"{where}: unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        return f"{where}: shape {shape!r} is not a list of sizes"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
    ):
        return f"{where}: data_offsets {offsets!r} is not [begin, end]"
    begin, end = offsets
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if not 0 <= begin <= end <= data:
        return (
            f"{where}: data_offsets [{begin:,}, {end:,}] fall outside the file's {data:,} bytes "
            "of tensor data (is the file truncated?)"
        )
    if bits % 8 or end - begin != bits // 8:
        return (
            f"{where}: {dtype} {shape} takes {bits / 8:,g} bytes, but its data_offsets span "
            f"{end - begin:,}"
        )
    return begin, end, name


def pickled(path: Path) -> str | None:
    """What kind of pickle ``path`` holds, by its first bytes; None if it is not one.

    A pickle of protocol 2 or later opens with 0x80 and the protocol number; PyTorch's
    ``torch.save`` writes a zip archive holding ``data.pkl``.
    """
    with path.open("rb") as handle:
        head = handle.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return f"a pickle (protocol {head[1]})"
    if head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".pkl")]
        except (zipfile.BadZipFile, OSError):
            return None
        if names:
            return f"a PyTorch checkpoint (a zip archive holding the pickle {names[0]})"
    return None


def content_problems(path: Path, part: Part | None) -> list[str]:
    """What is wrong with a file of the bundle by its content (weights by their format)."""
    suffix = path.suffix
    found: list[str] = []
    if suffix == ".safetensors":
        _, found = read_safetensors(path)
        if not found:
            return []
    kind = pickled(path)
    if kind is not None:
        return [
            f"{kind}, whatever its name says: loading it can run code; "
            "convert the weights to .safetensors"
        ]
    if found:
        return found
    if part is None or part.name != "weights":
        return []
    if suffix in PICKLE_SUFFIXES:
        return ["pickle-based weights can run code when loaded; convert to .safetensors"]
    if suffix == ".gguf":
        with path.open("rb") as handle:
            magic = handle.read(4)
        return [] if magic == b"GGUF" else ["not a GGUF file: it does not start with GGUF"]
    if suffix not in WEIGHT_SUFFIXES:
        return ["weights must be .safetensors or .gguf (plus .json indexes)"]
    return []


ZERO_DIGEST = "sha256:" + "0" * 64
PLACEHOLDER_MARK = "placeholder"
"""How ``bundle init``'s checkpoint marks itself (its ``__metadata__["weightshift"]``)."""


def unpublishable(root: Path, files: Iterable[str], metadata: Metadata | None) -> list[str]:
    """What ``bundle init`` put in as a placeholder and is still there: a valid bundle, but
    one no server could run. Publishing refuses it."""
    found: list[str] = []
    for rel in files:
        if not (rel.startswith("model/weights/") and rel.endswith(".safetensors")):
            continue
        header, _ = read_safetensors(root / rel)
        marks = (header or {}).get("__metadata__")
        if isinstance(marks, dict) and str(marks.get("weightshift", "")).startswith(
            PLACEHOLDER_MARK
        ):
            found.append(
                f"{rel}: the placeholder checkpoint `bundle init` wrote; put the model's "
                "real .safetensors shards in model/weights/"
            )
    if metadata is not None and metadata.dependencies.serving_image.endswith(ZERO_DIGEST):
        found.append(
            "metadata.json:dependencies.serving_image: the all-zero placeholder digest `bundle "
            "init` wrote; pin the inference server's image by its real digest"
        )
    return found


def safetensors_bytes(
    tensors: Mapping[str, tuple[str, Sequence[int], bytes]],
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """A safetensors file of ``tensors`` (name -> dtype, shape, raw bytes), in that order."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    encoded = canonical(header)
    encoded += b" " * (-len(encoded) % 8)
    return (
        len(encoded).to_bytes(8, "little")
        + encoded
        + b"".join(data for _, _, data in tensors.values())
    )
