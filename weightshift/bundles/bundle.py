"""Artifact bundles: the layout, the schema of every JSON part, the manifest and its digest,
and the rules for how big a version bump a change needs.

A bundle is a folder::

    model/weights/           checkpoint shards (.safetensors or .gguf), checked by content
    model/tokenizer/         tokenizer config and vocabulary
    model/config.json        model configuration (architectures, model_type)
    prompt/system.txt        system prompt template
    prompt/few_shot/         few-shot examples (.json list or .jsonl of {input, output})
    config/generation.json   temperature, top_p, ...
    config/safety.json       guardrails
    config/routing.json      request routing rules
    metadata.json            base model, architecture, parent, source commit, dependencies
    tests/evaluation.json    evaluation results (optional until a gate asks for them)

Every file is hashed (sha256); the manifest lists path, size and hash of each; the bundle
digest is the sha256 of the canonical manifest; the id is ``name/vX.Y.Z-<12 hex>``.

No file anywhere in a bundle may be a pickle, whatever its name: a pickle runs code when it is
loaded. A safetensors shard's header must describe exactly the bytes the file holds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weightshift.bundles.versioning import (
    HASH_LENGTH,
    Bump,
    BundleId,
    Version,
    VersionError,
    is_model_name,
)

SCHEMA = "weightshift.bundle/v1"
CHUNK = 8 * 1024 * 1024
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class BundleError(ValueError):
    """A bundle that does not follow the layout or schemas; ``problems`` lists every one."""

    def __init__(self, problems: Sequence[str], where: str = "bundle") -> None:
        self.problems = list(problems)
        listed = "; ".join(self.problems)
        super().__init__(
            f"Invalid {where}: {listed}. Fix these and run again; nothing was written."
        )


# --- schemas of the JSON parts -------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(BaseModel):
    """``model/config.json``: a Hugging Face style model config; only these keys are required."""

    model_config = ConfigDict(extra="allow", frozen=True)
    architectures: list[str] = Field(min_length=1)
    model_type: str = Field(min_length=1)


class Generation(_Strict):
    """``config/generation.json``: the server's sampling defaults."""

    temperature: float = Field(ge=0, le=2)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(default=-1, ge=-1)
    max_tokens: int = Field(gt=0, le=1_000_000)
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    stop: list[str] = Field(default_factory=list, max_length=16)
    seed: int | None = None


class Safety(_Strict):
    """``config/safety.json``: guardrails applied around the model (``docs/gateway.md``)."""

    input_moderation: bool = True
    """Moderate the client's messages before they reach the model."""
    output_moderation: bool = True
    """Moderate the model's answer before it reaches the client."""
    blocked_categories: list[str] = Field(default_factory=list)
    """Content categories to block: the Bedrock Guardrail's content filters and denied
    topics (``weightshift/bundles/guardrail.py``)."""
    blocked_terms: list[str] = Field(default_factory=list, max_length=10_000)
    """Words or phrases refused outright, by both moderators (case-insensitive, whole words)."""
    max_toxicity: float = Field(default=0.05, ge=0, le=1)
    """Tolerance of the content filters: the lower, the stricter the filter strength."""
    pii_redaction: bool = True
    """Mask personal data (emails, phone and card numbers, ...) in inputs and outputs."""
    refusal_message: str = Field(min_length=1)
    """What the client receives instead of a blocked request or answer."""


class RoutingRule(_Strict):
    match: dict[str, str] = Field(min_length=1)
    """Request attributes (e.g. ``{"header:x-tenant": "acme"}``) that select the rule."""
    max_output_tokens: int | None = Field(default=None, gt=0)
    priority: Literal["interactive", "batch"] = "interactive"


class Routing(_Strict):
    """``config/routing.json``: limits and rules for requests reaching this version."""

    max_input_tokens: int = Field(gt=0)
    max_concurrent_requests: int = Field(gt=0)
    request_timeout_seconds: int = Field(gt=0, le=3600)
    rules: list[RoutingRule] = Field(default_factory=list)


class Dependencies(_Strict):
    serving_image: str = Field(pattern=r"^[a-z0-9][a-z0-9./_:-]*@sha256:[0-9a-f]{64}$")
    """The inference server image, pinned by digest."""
    libraries: dict[str, str] = Field(default_factory=dict)


class Metadata(_Strict):
    """``metadata.json``: where the version comes from and what it needs to run."""

    name: str
    base_model: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    parent_version: str | None = None
    source_commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,40}$")
    description: str = ""
    dependencies: Dependencies

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not is_model_name(value):
            raise ValueError("lowercase letters, digits and inner hyphens, at most 40 characters")
        return value

    @field_validator("parent_version")
    @classmethod
    def _parent(cls, value: str | None) -> str | None:
        if value is not None:
            BundleId.parse(value)
        return value


class FewShotExample(_Strict):
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)


class Adversarial(_Strict):
    passed: int = Field(ge=0)
    total: int = Field(ge=1)

    @model_validator(mode="after")
    def _bounded(self) -> Adversarial:
        if self.passed > self.total:
            raise ValueError(f"passed ({self.passed}) cannot exceed total ({self.total})")
        return self


class Evaluation(_Strict):
    """``tests/evaluation.json``: the results the pre-deployment gates read."""

    toxicity: float = Field(ge=0, le=1)
    win_rate: float = Field(ge=0, le=1)
    baseline: str | None = None
    """The bundle id the win rate was measured against."""
    latency_p99_ms: float = Field(gt=0)
    adversarial: Adversarial
    dataset: str | None = None

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: str | None) -> str | None:
        if value is not None:
            BundleId.parse(value)
        return value


# --- layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """A piece of the layout: a file or a folder, what bump a change to it needs."""

    name: str
    path: str
    folder: bool
    required: bool
    bump: Bump
    why: str


PARTS: tuple[Part, ...] = (
    Part("weights", "model/weights", True, True, Bump.MINOR, "weights changed (a fine-tune)"),
    Part("tokenizer", "model/tokenizer", True, True, Bump.MAJOR, "tokenizer changed"),
    Part("model-config", "model/config.json", False, True, Bump.MINOR, "model config changed"),
    Part("system-prompt", "prompt/system.txt", False, True, Bump.MINOR, "system prompt changed"),
    Part("few-shot", "prompt/few_shot", True, False, Bump.MINOR, "few-shot examples changed"),
    Part(
        "generation",
        "config/generation.json",
        False,
        True,
        Bump.PATCH,
        "generation parameters changed",
    ),
    Part("safety", "config/safety.json", False, True, Bump.PATCH, "safety configuration changed"),
    Part("routing", "config/routing.json", False, True, Bump.PATCH, "routing rules changed"),
    Part("metadata", "metadata.json", False, True, Bump.PATCH, "metadata changed"),
    Part("tests", "tests", True, False, Bump.PATCH, "evaluation results changed"),
)


def part_of(path: str) -> Part | None:
    for part in PARTS:
        if path == part.path or (part.folder and path.startswith(part.path + "/")):
            return part
    return None


def _json(path: Path, problems: list[str], rel: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        problems.append(f"{rel}: not UTF-8 text")
    except json.JSONDecodeError as exc:
        problems.append(f"{rel}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")
    return None


def _schema(model: type[BaseModel], data: Any, rel: str, problems: list[str]) -> BaseModel | None:
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            msg = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{rel}{':' + where if where else ''}: {msg}")
    return None


def list_files(root: Path) -> tuple[list[str], list[str]]:
    """Relative POSIX paths of every regular file under ``root``, and the problems found."""
    files: list[str] = []
    problems: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames):
            full = Path(dirpath, name)
            if full.is_symlink():
                problems.append(
                    f"{full.relative_to(root).as_posix()}: symbolic links are not allowed"
                )
        for name in filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.is_symlink() or not full.is_file():
                problems.append(f"{rel}: only regular files are allowed (no links or devices)")
                continue
            files.append(rel)
    return sorted(files), problems


TOKENIZER_FILE = "model/tokenizer/tokenizer.json"
"""The tokenizer the gateway loads (``tokenizers``) to count input tokens."""
TEMPLATE_VARIABLES = ("model", "version", "date", "user")
"""What a system prompt template may name as ``{{variable}}``: the bundle's model name and
full id, today's date (UTC, ``YYYY-MM-DD``) and the request's ``user`` field (empty when
absent)."""
PLACEHOLDER = re.compile(r"{{\s*([A-Za-z_][A-Za-z0-9_]*)\s*}}")


def template_problems(text: str) -> list[str]:
    """What is wrong with a system prompt template: variables the gateway cannot fill."""
    unknown = sorted(set(PLACEHOLDER.split(text)[1::2]) - set(TEMPLATE_VARIABLES))
    if not unknown:
        return []
    return [
        f"names {', '.join('{{' + u + '}}' for u in unknown)}; a template may use only "
        f"{', '.join('{{' + v + '}}' for v in TEMPLATE_VARIABLES)}"
    ]


def validate(root: Path) -> tuple[list[str], Metadata | None, list[str]]:
    """Check the layout and every JSON part. Returns (files, metadata, problems)."""
    if not root.is_dir():
        return [], None, [f"{root}: not a folder"]
    files, problems = list_files(root)
    present = set(files)
    for rel in files:
        part = part_of(rel)
        if part is None:
            allowed = ", ".join(p.path + ("/" if p.folder else "") for p in PARTS)
            problems.append(f"{rel}: not part of the bundle layout (allowed: {allowed})")
        problems.extend(f"{rel}: {p}" for p in content_problems(root / rel, part))
    for part in PARTS:
        if not part.required:
            continue
        if part.folder and not any(f.startswith(part.path + "/") for f in files):
            problems.append(f"{part.path}/: missing or empty ({part.name} is required)")
        elif not part.folder and part.path not in present:
            problems.append(f"{part.path}: missing ({part.name} is required)")

    def check(rel: str, model: type[BaseModel]) -> BaseModel | None:
        if rel not in present:
            return None
        return _schema(model, _json(root / rel, problems, rel), rel, problems)

    model_config = check("model/config.json", ModelConfig)
    check("config/generation.json", Generation)
    check("config/safety.json", Safety)
    check("config/routing.json", Routing)
    check("tests/evaluation.json", Evaluation)
    metadata = check("metadata.json", Metadata)
    if "prompt/system.txt" in present:
        try:
            template = (root / "prompt/system.txt").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            problems.append("prompt/system.txt: not UTF-8 text")
        else:
            if not template.strip():
                problems.append("prompt/system.txt: empty; write the system prompt template")
            problems.extend(f"prompt/system.txt: {p}" for p in template_problems(template))
    if any(rel.startswith("model/tokenizer/") for rel in files) and TOKENIZER_FILE not in files:
        problems.append(
            f"{TOKENIZER_FILE}: missing; the gateway counts input tokens with the model's own "
            "tokenizer (the `tokenizers` library's file, which Hugging Face models ship)"
        )
    for rel in files:
        if rel.startswith("model/tokenizer/") and rel.endswith(".json"):
            _json(root / rel, problems, rel)
        if rel.startswith("prompt/few_shot/"):
            _few_shot(root / rel, rel, problems)
    served: dict[str, str] = {}
    for rel in files:
        if rel == "model/config.json" or rel.startswith(("model/weights/", "model/tokenizer/")):
            name = PurePosixPath(rel).name
            if name in served:
                problems.append(
                    f"{rel}: same file name as {served[name]}; the serving layout puts the "
                    "model's config, weights and tokenizer side by side, so rename one"
                )
            served[name] = rel
    if (
        isinstance(metadata, Metadata)
        and isinstance(model_config, ModelConfig)
        and metadata.architecture not in model_config.architectures
    ):
        problems.append(
            f"metadata.json:architecture: {metadata.architecture!r} is not among "
            f"model/config.json architectures {model_config.architectures}"
        )
    return files, metadata if isinstance(metadata, Metadata) else None, problems


# --- files by content ----------------------------------------------------------------------

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
        header = json.loads(raw)
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


def _few_shot(path: Path, rel: str, problems: list[str]) -> None:
    if rel.endswith(".jsonl"):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            problems.append(f"{rel}: not UTF-8 text")
            return
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{rel}:{number}: not valid JSON ({exc.msg})")
                continue
            _schema(FewShotExample, data, f"{rel}:{number}", problems)
    elif rel.endswith(".json"):
        data = _json(path, problems, rel)
        if data is not None and not isinstance(data, list):
            problems.append(f"{rel}: must be a JSON list of {{input, output}} examples")
            return
        for index, example in enumerate(data or []):
            _schema(FewShotExample, example, f"{rel}[{index}]", problems)
    else:
        problems.append(f"{rel}: few-shot examples must be .json or .jsonl")


# --- hashing and the manifest --------------------------------------------------------------


T = TypeVar("T")
R = TypeVar("R")


class Cancelled(Exception):
    """Raised in a worker whose batch was stopped (a failure elsewhere, or Ctrl-C)."""


def parallel(
    work: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    stop: threading.Event | None = None,
) -> list[R]:
    """``work`` on each of ``items`` over ``workers`` threads; the results in order.

    A failure, or Ctrl-C in the calling thread, stops the batch at once: items not started
    are dropped, ``stop`` is set so running ones end at their next check of it, and the
    error is raised once they have (``ThreadPoolExecutor``'s own exit would first run every
    queued item: minutes of hashing or uploading after a Ctrl-C).
    """
    stop = stop or threading.Event()
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    futures = []
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        while True:
            try:
                pool.shutdown(wait=True)
                break
            except KeyboardInterrupt:
                continue  # Ctrl-C again: the running items are ending already
        raise
    finally:
        pool.shutdown(wait=True)


def sha256_file(
    path: Path,
    on_bytes: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
) -> tuple[str, int]:
    """Hash a file in large chunks into a reused buffer (hashlib releases the GIL for them)."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with path.open("rb", buffering=0) as handle:
        while True:
            if stop is not None and stop.is_set():
                raise Cancelled(str(path))
            read = handle.readinto(buffer)
            if not read:
                break
            digest.update(view[:read])
            size += read
            if on_bytes is not None:
                on_bytes(read)
    return digest.hexdigest(), size


def hash_files(
    root: Path,
    paths: Iterable[str],
    workers: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, tuple[str, int]]:
    """sha256 and size of each path, files hashed in parallel across cores."""
    paths = list(paths)
    stop = threading.Event()
    hashed = parallel(
        lambda rel: sha256_file(root / rel, on_bytes, stop),
        paths,
        workers or min(32, (os.cpu_count() or 1)),
        stop,
    )
    return dict(zip(paths, hashed, strict=True))


class Meter(Protocol):
    """Progress of a long operation in bytes (``weightshift.console.Progress``)."""

    def add(self, amount: int) -> None: ...

    def close(self, *, completed: bool = True) -> None: ...


class Silent:
    """A meter that shows nothing."""

    def __init__(self, label: str, total: int) -> None:
        del label, total

    def add(self, amount: int) -> None:
        del amount

    def close(self, *, completed: bool = True) -> None:
        del completed


MeterFactory = Callable[[str, int], Meter]
"""Makes a meter from a label and a total of bytes (``console.Progress`` is one)."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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


# --- diff and bump rules -------------------------------------------------------------------


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


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()
"""A key on one side of a value change only."""


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
            return f"+ {self.key}: {_shown(self.after)}"
        if self.after is ABSENT:
            return f"- {self.key}: {_shown(self.before)}"
        return f"{self.key}: {_shown(self.before)}{ARROW}{_shown(self.after)}"


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """``value`` flattened: nested keys dotted, lists of objects indexed (``rules[0].match``);
    other lists and empty containers are leaves."""
    if isinstance(value, dict) and value:
        found: dict[str, Any] = {}
        for key, item in value.items():
            found.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
        return found
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        found = {}
        for index, item in enumerate(value):
            found.update(_leaves(item, f"{prefix}[{index}]"))
        return found
    return {prefix or "(whole file)": value}


def value_changes(before: Any, after: Any) -> tuple[ValueChange, ...]:
    """Every leaf that differs between two JSON documents, by dotted key."""
    old, new = _leaves(before), _leaves(after)

    def filled(key: str, side: dict[str, Any], other: dict[str, Any]) -> bool:
        """An empty list or object whose items the other side lists leaf by leaf."""
        return side[key] in ([], {}) and any(k.startswith((f"{key}.", f"{key}[")) for k in other)

    return tuple(
        ValueChange(key, old.get(key, ABSENT), new.get(key, ABSENT))
        for key in sorted(old.keys() | new.keys())
        if (key in old and key in new and _shown(old[key]) != _shown(new[key]))
        or (key not in new and not filled(key, old, new))
        or (key not in old and not filled(key, new, old))
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
        return json.loads(read(path))
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


# --- a skeleton for a new bundle -----------------------------------------------------------

PLACEHOLDER_IMAGE = "vllm/vllm-openai@sha256:" + "0" * 64


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


def _placeholder_safetensors() -> bytes:
    """A valid one-tensor safetensors file, so the skeleton validates before real weights exist
    (``unpublishable`` knows it by its mark)."""
    return safetensors_bytes(
        {"placeholder": ("F32", [1], bytes(4))},
        {"weightshift": f"{PLACEHOLDER_MARK}: replace with the real checkpoint"},
    )


def skeleton(name: str) -> dict[str, bytes]:
    """The files of a new bundle called ``name``: valid, with placeholders to replace."""
    if not is_model_name(name):
        raise BundleError(
            [
                f"--name {name!r}: lowercase letters, digits and inner hyphens, "
                "at most 40 characters"
            ],
            "bundle name",
        )

    def js(data: Any) -> bytes:
        return (json.dumps(data, indent=2) + "\n").encode()

    return {
        "model/weights/model.safetensors": _placeholder_safetensors(),
        "model/tokenizer/tokenizer_config.json": js(
            {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 8192}
        ),
        # A placeholder the `tokenizers` library loads (one token per word), so the gateway
        # can count input tokens before the model's own tokenizer.json replaces it.
        "model/tokenizer/tokenizer.json": js(
            {
                "version": "1.0",
                "truncation": None,
                "padding": None,
                "added_tokens": [],
                "normalizer": None,
                "pre_tokenizer": {"type": "Whitespace"},
                "post_processor": None,
                "decoder": None,
                "model": {"type": "WordLevel", "vocab": {"[UNK]": 0}, "unk_token": "[UNK]"},
            }
        ),
        "model/config.json": js({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}),
        "prompt/system.txt": b"You are a helpful assistant. Answer accurately and concisely.\n",
        "prompt/few_shot/examples.jsonl": canonical(
            {
                "input": "How do I reset my password?",
                "output": "Open Settings, then Security, then Reset password.",
            }
        )
        + b"\n",
        "config/generation.json": js(
            {"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024, "stop": []}
        ),
        "config/safety.json": js(
            {
                "input_moderation": True,
                "output_moderation": True,
                "blocked_categories": ["violence", "self-harm", "sexual-minors"],
                "max_toxicity": 0.05,
                "pii_redaction": True,
                "refusal_message": "Sorry, I can't help with that.",
            }
        ),
        "config/routing.json": js(
            {
                "max_input_tokens": 8192,
                "max_concurrent_requests": 64,
                "request_timeout_seconds": 120,
                "rules": [],
            }
        ),
        "metadata.json": js(
            {
                "name": name,
                "base_model": "meta-llama/Llama-3.1-8B-Instruct",
                "architecture": "LlamaForCausalLM",
                "parent_version": None,
                "source_commit": None,
                "description": "",
                "dependencies": {"serving_image": PLACEHOLDER_IMAGE, "libraries": {}},
            }
        ),
    }


def init_bundle(dest: Path, name: str) -> list[str]:
    """Write a skeleton bundle to ``dest`` (new or empty); return what to replace before use."""
    files = skeleton(name)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(
            [f"{dest}: exists and is not an empty folder; choose a new one"], "destination"
        )
    for rel, data in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return [
        "model/weights/: the placeholder checkpoint (real .safetensors shards)",
        "model/tokenizer/ and model/config.json: the model's own",
        "metadata.json: base_model, architecture, source_commit, and dependencies.serving_image "
        "(the placeholder digest is all zeros)",
        "prompt/, config/: your prompt, examples, generation, safety and routing settings",
        "tests/evaluation.json: evaluation results, before the first rollout stage",
    ]
