"""Artifact bundles: the layout, the schema of every JSON part, the manifest and its digest,
and the rules for how big a version bump a change needs.

A bundle is a folder::

    model/weights/           checkpoint shards (.safetensors or .gguf; no pickles)
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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weightshift.versioning import HASH_LENGTH, Bump, BundleId, Version, VersionError, is_model_name

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
    topics (``weightshift/guardrail.py``)."""
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
        elif part.name == "weights":
            suffix = PurePosixPath(rel).suffix
            if suffix in PICKLE_SUFFIXES:
                problems.append(
                    f"{rel}: pickle-based weights can run code when loaded; convert to .safetensors"
                )
            elif suffix not in WEIGHT_SUFFIXES:
                problems.append(
                    f"{rel}: weights must be .safetensors or .gguf (plus .json indexes)"
                )
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


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hash a file in large chunks into a reused buffer (hashlib releases the GIL for them)."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    size = 0
    with path.open("rb", buffering=0) as handle:
        while True:
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
    workers = workers or min(32, (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda rel: sha256_file(root / rel, on_bytes), paths)
        return dict(zip(paths, results, strict=True))


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

    def unchanged(self, path: str) -> bool:
        return stamp(self.root / path) == self.stamps.get(path)

    def manifest(self, version: Version) -> Manifest:
        return Manifest(
            self.metadata.name, version, self.entries, self.metadata.model_dump(mode="json")
        )


def load_local(
    root: Path, workers: int | None = None, on_bytes: Callable[[int], None] | None = None
) -> LocalBundle:
    """Validate ``root`` (every problem at once) and hash its files."""
    files, metadata, problems = validate(root)
    if problems or metadata is None:
        raise BundleError(problems or ["metadata.json: missing"], f"bundle {root}")
    stamps = {rel: stamp(root / rel) for rel in files}
    hashed = hash_files(root, files, workers, on_bytes)
    moved = [rel for rel in files if stamp(root / rel) != stamps[rel]]
    if moved:
        raise BundleError(
            [f"{rel}: changed while it was being hashed" for rel in moved], f"bundle {root}"
        )
    entries = tuple(FileEntry(rel, hashed[rel][1], hashed[rel][0]) for rel in files)
    return LocalBundle(root, metadata, entries, stamps)


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


@dataclass(frozen=True)
class PartChange:
    part: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()


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
                }
                for c in self.changes
            ],
        }


def diff(old: Manifest, new: Manifest) -> BundleDiff:
    """What changed from ``old`` to ``new``, part by part, and the bump it requires."""
    before, after = old.by_path(), new.by_path()
    by_part: dict[str, dict[str, list[str]]] = {}
    for path in sorted(before.keys() | after.keys()):
        part = part_of(path)
        name = part.name if part else "other"
        kind = (
            "added"
            if path not in before
            else "removed"
            if path not in after
            else "changed"
            if before[path].sha256 != after[path].sha256
            else None
        )
        if kind:
            by_part.setdefault(name, {"added": [], "removed": [], "changed": []})[kind].append(path)
    changes = tuple(
        PartChange(name, tuple(v["added"]), tuple(v["removed"]), tuple(v["changed"]))
        for name, v in by_part.items()
    )
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


def _placeholder_safetensors() -> bytes:
    """A valid one-tensor safetensors file, so the skeleton validates before real weights exist."""
    header = canonical(
        {
            "__metadata__": {"weightshift": "placeholder: replace with the real checkpoint"},
            "placeholder": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        }
    )
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + bytes(4)


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
