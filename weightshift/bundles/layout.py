"""Checking a bundle folder against the layout: every file in a part, every required part
present, every JSON part valid against its schema, the system prompt's template variables,
few-shot examples, and names that collide in the serving layout."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ValidationError

from weightshift.bundles import strict_json
from weightshift.bundles.content import content_problems
from weightshift.bundles.schemas import (
    PARTS,
    Evaluation,
    FewShotExample,
    Generation,
    Metadata,
    ModelConfig,
    Routing,
    Safety,
    part_of,
)
from weightshift.bundles.versioning import is_model_name


def _json(path: Path, problems: list[str], rel: str) -> Any:
    try:
        return strict_json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        problems.append(f"{rel}: not UTF-8 text")
    except strict_json.DuplicateKeyError as exc:
        problems.append(f"{rel} {exc}")
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


def _layout_problems(root: Path, files: list[str]) -> list[str]:
    """Files outside the layout or wrong by their content, and required parts missing."""
    problems: list[str] = []
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
    return problems


def _prompt_problems(root: Path) -> list[str]:
    """What is wrong with ``prompt/system.txt`` (present): encoding, emptiness, variables."""
    try:
        template = (root / "prompt/system.txt").read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return ["prompt/system.txt: not UTF-8 text"]
    problems: list[str] = []
    if not template.strip():
        problems.append("prompt/system.txt: empty; write the system prompt template")
    problems.extend(f"prompt/system.txt: {p}" for p in template_problems(template))
    return problems


def _model_file_problems(root: Path, files: list[str], problems: list[str]) -> None:
    """The tokenizer the gateway needs, tokenizer and few-shot files that do not parse, and
    model files whose names collide in the serving layout."""
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


def declared_name(root: Path) -> str | None:
    """The model name ``root/metadata.json`` gives, read alone (nothing hashed); None when it
    cannot be read or is not a model name (``validate`` says why)."""
    try:
        data = strict_json.loads((root / "metadata.json").read_bytes())
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and is_model_name(name) else None


def validate(root: Path) -> tuple[list[str], Metadata | None, list[str]]:
    """Check the layout and every JSON part. Returns (files, metadata, problems)."""
    if not root.is_dir():
        return [], None, [f"{root}: not a folder"]
    files, problems = list_files(root)
    present = set(files)
    problems += _layout_problems(root, files)

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
        problems += _prompt_problems(root)
    _model_file_problems(root, files, problems)
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
                data = strict_json.loads(line)
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
