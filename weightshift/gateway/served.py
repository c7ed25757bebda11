"""The bundle a gateway serves, loaded once at start-up.

Everything a request needs from the bundle is read, validated and prepared here, so the
request path does no file I/O and no parsing it could have done once: the system prompt
template split into its literal parts, the few-shot examples as ready messages, their token
counts, the generation defaults, the safety and routing configuration and the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tokenizers import Tokenizer

from weightshift.bundles.layout import PLACEHOLDER, TOKENIZER_FILE, template_problems
from weightshift.bundles.schemas import FewShotExample, Generation, Metadata, Routing, Safety
from weightshift.bundles.store import PULLED_ID
from weightshift.bundles.versioning import BundleId
from weightshift.gateway.errors import BundleLoadError

TOKENIZER_PATH = TOKENIZER_FILE
MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat template adds per message (role markers and separators), counted on top of
each message's content: the model server applies the template; the gateway approximates it
so a limit is never undercounted by more than a few tokens per message."""


_M = TypeVar("_M", bound=BaseModel)


@dataclass(frozen=True)
class PromptTemplate:
    """``prompt/system.txt`` split at its ``{{variable}}`` placeholders."""

    parts: tuple[str, ...]
    """Literal text, alternating with variable names (odd positions)."""

    @classmethod
    def parse(cls, text: str) -> PromptTemplate:
        problems = template_problems(text)
        if problems:
            raise BundleLoadError(f"prompt/system.txt {problems[0]}")
        return cls(tuple(PLACEHOLDER.split(text)))

    @property
    def variables(self) -> tuple[str, ...]:
        return self.parts[1::2]

    def render(self, values: dict[str, str]) -> str:
        if len(self.parts) == 1:
            return self.parts[0]
        return "".join(
            part if index % 2 == 0 else values.get(part, "")
            for index, part in enumerate(self.parts)
        )


@dataclass(frozen=True)
class ServedBundle:
    """One bundle as the gateway serves it."""

    id: BundleId
    model: str
    system: PromptTemplate
    few_shot: tuple[FewShotExample, ...]
    few_shot_messages: tuple[dict[str, str], ...]
    """The examples as chat turns (user input, assistant output), built once."""
    few_shot_tokens: int
    """Tokens of the few-shot turns, overhead included (counted once)."""
    generation: Generation
    safety: Safety
    routing: Routing
    tokenizer: Tokenizer

    @property
    def version(self) -> str:
        """The full bundle id: the ``Version`` dimension of every metric."""
        return str(self.id)

    def system_prompt(self, user: str | None, now: datetime | None = None) -> str:
        if not self.system.variables:
            return self.system.parts[0]
        return self.system.render(
            {
                "model": self.model,
                "version": self.version,
                "date": (now or datetime.now(UTC)).date().isoformat(),
                "user": user or "",
            }
        )

    def count(self, texts: list[str]) -> int:
        """Tokens of ``texts`` by the bundle's own tokenizer (no special tokens)."""
        if not texts:
            return 0
        return sum(
            len(encoding.ids)
            for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)
        )


def _read(root: Path, rel: str) -> str:
    path = root / rel
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleLoadError(f"{path}: missing; is {root} a bundle folder?") from None
    except UnicodeDecodeError:
        raise BundleLoadError(f"{path}: not UTF-8 text") from None


def _model(root: Path, rel: str, model: type[_M]) -> _M:
    try:
        return model.model_validate(json.loads(_read(root, rel)))
    except json.JSONDecodeError as exc:
        raise BundleLoadError(
            f"{root / rel}: not valid JSON ({exc.msg}, line {exc.lineno})"
        ) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise BundleLoadError(f"{root / rel}: {where}: {first['msg']}") from None


def _few_shot(root: Path) -> tuple[FewShotExample, ...]:
    folder = root / "prompt/few_shot"
    if not folder.is_dir():
        return ()
    examples: list[FewShotExample] = []
    for path in sorted(folder.iterdir()):
        rel = path.relative_to(root).as_posix()
        text = _read(root, rel)
        try:
            if path.suffix == ".jsonl":
                rows: list[Any] = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                rows = list(json.loads(text))
            examples += [FewShotExample.model_validate(row) for row in rows]
        except (ValueError, TypeError) as exc:
            raise BundleLoadError(
                f"{path}: not a list of {{input, output}} examples ({exc})"
            ) from None
    return tuple(examples)


def _bundle_id(root: Path, given: str | None, model: str) -> BundleId:
    if given:
        return BundleId.parse(given)
    stamp = root / PULLED_ID
    try:
        recorded = json.loads(stamp.read_text(encoding="utf-8"))["id"]
    except FileNotFoundError:
        raise BundleLoadError(
            f"{root} has no {PULLED_ID}: it was not pulled with `weightshift bundle pull`, so "
            f"its published id is unknown. Pull it, or pass --bundle-id {model}/vX.Y.Z-HASH."
        ) from None
    except (KeyError, ValueError):
        raise BundleLoadError(f"{stamp}: not what `weightshift bundle pull` writes") from None
    return BundleId.parse(str(recorded))


def load_served(root: Path, bundle_id: str | None = None) -> ServedBundle:
    """Read and prepare the bundle folder ``root`` (as ``weightshift bundle pull`` leaves it)."""
    if not root.is_dir():
        raise BundleLoadError(f"{root}: not a folder; pass --bundle with a pulled bundle folder")
    metadata = _model(root, "metadata.json", Metadata)
    identity = _bundle_id(root, bundle_id, metadata.name)
    if identity.name != metadata.name:
        raise BundleLoadError(
            f"{root} holds a bundle of {metadata.name!r}, but its id is {identity}"
        )
    tokenizer_file = root / TOKENIZER_PATH
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 (the library raises plain Exception)
        raise BundleLoadError(
            f"{tokenizer_file}: cannot be loaded by the `tokenizers` library ({exc}). The "
            "gateway counts input tokens with the model's own tokenizer: add its "
            "tokenizer.json (Hugging Face models ship one)."
        ) from None
    few_shot = _few_shot(root)
    messages: list[dict[str, str]] = []
    for example in few_shot:
        messages += [
            {"role": "user", "content": example.input},
            {"role": "assistant", "content": example.output},
        ]
    served = ServedBundle(
        id=identity,
        model=metadata.name,
        system=PromptTemplate.parse(_read(root, "prompt/system.txt").strip()),
        few_shot=few_shot,
        few_shot_messages=tuple(messages),
        few_shot_tokens=0,
        generation=_model(root, "config/generation.json", Generation),
        safety=_model(root, "config/safety.json", Safety),
        routing=_model(root, "config/routing.json", Routing),
        tokenizer=tokenizer,
    )
    counted = served.count([m["content"] for m in messages])
    return replace(served, few_shot_tokens=counted + MESSAGE_OVERHEAD_TOKENS * len(messages))
