"""The bundle a gateway serves, loaded once at start-up.

Everything a request needs from the bundle is read, validated and prepared here, so the
request path does no file I/O and no parsing it could have done once: the system prompt
template split into its literal parts, the few-shot examples as ready messages, their token
counts and the system prompt's (its literal parts' where it has variables), the generation
defaults, the safety and routing configuration and the tokenizer, and the bounds a request
meets before any work is done on it:

- ``max_body_bytes``: the largest body read (413 beyond it, before parsing);
  ``BODY_BYTES_PER_TOKEN`` per input token, from ``MIN_BODY_BYTES`` to ``MAX_BODY_BYTES``,
  unless the gateway is given its own.
- ``max_bytes_per_token``: the most UTF-8 bytes one token of this tokenizer can stand for
  (its longest vocabulary entry, times 4 behind a normalizer), so a text of more characters
  than ``max_input_tokens`` times it cannot fit and is refused without tokenizing. ``None``
  where the tokenizer can drop text (a whitespace pre-tokenizer, unknown characters fused
  or skipped, a stripping normalizer, added tokens that swallow spaces): then only counting
  decides.
- ``served_names``: the ``model`` names a request may give (404 for any other): the
  bundle's model name, its id, and any name a routing rule matches on.
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
BODY_BYTES_PER_TOKEN = 48
"""Body bytes allowed per input token by default: JSON escapes a non-ASCII character as
``\\uXXXX`` (6 bytes, 12 for an emoji) and a request carries fields besides its text."""
MIN_BODY_BYTES = 256 * 1024
MAX_BODY_BYTES = 4 * 1024 * 1024
"""The default body limit's bounds (a pod's memory is a few GiB; a body is parsed whole)."""
COUNT_SLICE_CHARS = 16 * 1024
"""Texts are tokenized in slices of about this many characters (cut before a space where
one is near), about ``COUNT_BATCH_CHARS`` at a time, stopping once the limit is passed:
memory stays that of one batch and a text far beyond the limit costs the limit's worth of
work. A cut can move the count by a token or so (as ``MESSAGE_OVERHEAD_TOKENS`` does)."""
COUNT_BATCH_CHARS = 4 * COUNT_SLICE_CHARS
_KEEPS_TEXT_PRE_TOKENIZERS = frozenset(
    {"ByteLevel", "Metaspace", "Digits", "Punctuation", "UnicodeScripts", "Sequence"}
)
"""Pre-tokenizers that keep every character (whitespace ones drop it)."""
_BOUNDED_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Prepend", "Sequence"})
"""Normalizers that shrink a text by at most a few times (``Strip``, ``Replace`` and
``BertNormalizer`` can remove any amount of it)."""
NORMALIZER_SHRINK = 4


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
    system_tokens: int = 0
    """Tokens of the system prompt but for its ``{{user}}`` values, counted once."""
    system_user_slots: int = 0
    """How many times the system prompt names ``{{user}}``."""
    max_body_bytes: int = MAX_BODY_BYTES
    max_bytes_per_token: int | None = None
    served_names: frozenset[str] = frozenset()
    prompt_json: str | None = None
    """The system prompt and examples as the JSON of chat messages, comma-separated, where
    they are the same for every request (the template has no variables); else None."""

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

    def system_prompt_tokens(self, user: str | None) -> int:
        """Tokens of the system prompt for ``user``: counted once at load (its literal
        parts and its variables' values, a date as any date), but for the user's name."""
        if user and self.system_user_slots:
            return self.system_tokens + self.count([user]) * self.system_user_slots
        return self.system_tokens

    def count(self, texts: list[str], limit: int | None = None) -> int:
        """Tokens of ``texts`` by the bundle's own tokenizer (no special tokens); with
        ``limit``, counting stops once it is passed (the answer is then above ``limit``)."""
        total = 0
        batch: list[str] = []
        size = 0
        for text in texts:
            for piece in [text] if len(text) <= COUNT_SLICE_CHARS else _slices(text):
                batch.append(piece)
                size += len(piece)
                if size >= COUNT_BATCH_CHARS:
                    total += self._encoded(batch)
                    batch, size = [], 0
                    if limit is not None and total > limit:
                        return total
        return total + self._encoded(batch) if batch else total

    def _encoded(self, texts: list[str]) -> int:
        return sum(
            len(encoding.ids)
            for encoding in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        )


def _slices(text: str) -> list[str]:
    """``text`` in pieces of at most ``COUNT_SLICE_CHARS``, each cut before a space where
    one is in the piece's last quarter (so a word is rarely split)."""
    pieces: list[str] = []
    start, size = 0, COUNT_SLICE_CHARS
    while len(text) - start > size:
        end = start + size
        space = text.rfind(" ", end - size // 4, end)
        if space > start:
            end = space
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def max_bytes_per_token(tokenizer: Tokenizer) -> int | None:
    """The most UTF-8 bytes of input one token can stand for, or ``None`` where this
    tokenizer can turn any amount of text into a few tokens (see the module's docstring)."""
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        return None  # WordPiece and WordLevel make one [UNK] of any unknown word
    pre = _types(spec.get("pre_tokenizer"), "pretokenizers")
    normal = _types(spec.get("normalizer"), "normalizers")
    if not pre <= _KEEPS_TEXT_PRE_TOKENIZERS or not normal <= _BOUNDED_NORMALIZERS:
        return None
    every_byte = "ByteLevel" in pre or bool(model.get("byte_fallback"))
    if not every_byte and (model.get("unk_token") is None or model.get("fuse_unk")):
        return None  # unknown characters skipped, or fused into one token
    added = spec.get("added_tokens") or []
    if any(token.get("lstrip") or token.get("rstrip") for token in added):
        return None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    longest = max((len(token.encode()) for token in vocab), default=1)
    return longest * (NORMALIZER_SHRINK if normal else 1)


def _types(node: Any, children: str) -> set[str]:
    """The ``type`` of a tokenizer.json component and of the members of its sequences."""
    if not node:
        return set()
    found = {str(node.get("type"))}
    for member in node.get(children) or []:
        found |= _types(member, children)
    return found


def default_body_bytes(max_input_tokens: int) -> int:
    """The body limit for a bundle taking ``max_input_tokens``."""
    return max(MIN_BODY_BYTES, min(MAX_BODY_BYTES, max_input_tokens * BODY_BYTES_PER_TOKEN))


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


def load_served(
    root: Path, bundle_id: str | None = None, max_body_bytes: int | None = None
) -> ServedBundle:
    """Read and prepare the bundle folder ``root`` (as ``weightshift bundle pull`` leaves it);
    ``max_body_bytes``: the largest request body read (default: from the bundle's
    ``max_input_tokens``, :func:`default_body_bytes`)."""
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
    routing = _model(root, "config/routing.json", Routing)
    system = PromptTemplate.parse(_read(root, "prompt/system.txt").strip())
    served = ServedBundle(
        id=identity,
        model=metadata.name,
        system=system,
        few_shot=few_shot,
        few_shot_messages=tuple(messages),
        few_shot_tokens=0,
        generation=_model(root, "config/generation.json", Generation),
        safety=_model(root, "config/safety.json", Safety),
        routing=routing,
        tokenizer=tokenizer,
        max_body_bytes=max_body_bytes or default_body_bytes(routing.max_input_tokens),
        max_bytes_per_token=max_bytes_per_token(tokenizer),
        served_names=frozenset(
            {metadata.name, str(identity)}
            | {rule.match["model"] for rule in routing.rules if "model" in rule.match}
        ),
    )
    counted = served.count([m["content"] for m in messages])
    values = {"model": served.model, "version": served.version, "date": "2025-01-01"}
    constants = [values.get(name, "") for name in system.variables if name != "user"]
    prompt_json = None
    if not system.variables:
        prompt = [{"role": "system", "content": system.parts[0]}, *messages]
        prompt_json = json.dumps(prompt, separators=(",", ":"))[1:-1]
    return replace(
        served,
        prompt_json=prompt_json,
        few_shot_tokens=counted + MESSAGE_OVERHEAD_TOKENS * len(messages),
        system_tokens=served.count(list(system.parts[::2]) + constants),
        system_user_slots=system.variables.count("user"),
    )
