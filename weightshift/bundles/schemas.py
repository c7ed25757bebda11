"""What a bundle holds: the layout's parts (and the bump a change to each needs), the schema of
every JSON part, and :class:`BundleError`.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from weightshift.bundles.versioning import Bump, BundleId, is_model_name


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
    toxicity_flagged: int | None = Field(default=None, ge=0)
    """Optional counts behind ``toxicity``: answers the moderator flagged..."""
    toxicity_total: int | None = Field(default=None, ge=1)
    """...of the answers moderated. With them, the toxicity gate has an interval."""
    moderator: str | None = None
    """What flagged them (``bedrock-guardrail:<id>:<version>``, ``local``...)."""
    wins: int | None = Field(default=None, ge=0)
    """Optional counts behind ``win_rate`` (a tie is half a win): pairs won..."""
    losses: int | None = Field(default=None, ge=0)
    ties: int | None = Field(default=None, ge=0)

    @field_validator("baseline")
    @classmethod
    def _baseline(cls, value: str | None) -> str | None:
        if value is not None:
            BundleId.parse(value)
        return value

    @model_validator(mode="after")
    def _counts_agree(self) -> Evaluation:
        if (self.toxicity_flagged is None) != (self.toxicity_total is None):
            raise ValueError(
                "toxicity_flagged and toxicity_total go together: give both, or neither"
            )
        if self.toxicity_flagged is not None and self.toxicity_total is not None:
            if self.toxicity_flagged > self.toxicity_total:
                raise ValueError(
                    f"toxicity_flagged ({self.toxicity_flagged}) cannot exceed toxicity_total "
                    f"({self.toxicity_total})"
                )
            share = self.toxicity_flagged / self.toxicity_total
            if abs(share - self.toxicity) > COUNT_AGREEMENT:
                raise ValueError(
                    f"toxicity_flagged / toxicity_total is {share:.4g}, but toxicity says "
                    f"{self.toxicity:g}: make them agree"
                )
        pairs = (self.wins, self.losses, self.ties)
        if any(n is not None for n in pairs):
            if any(n is None for n in pairs):
                raise ValueError("wins, losses and ties go together: give all three, or none")
            wins, losses, ties = (n or 0 for n in pairs)
            total = wins + losses + ties
            if total == 0:
                raise ValueError("wins, losses and ties: at least one pair")
            rate = (wins + ties / 2) / total
            if abs(rate - self.win_rate) > COUNT_AGREEMENT:
                raise ValueError(
                    f"(wins + ties / 2) / pairs is {rate:.4g}, but win_rate says "
                    f"{self.win_rate:g}: make them agree (a tie counts half a win)"
                )
        return self


COUNT_AGREEMENT = 0.005
"""How far a point estimate in ``tests/evaluation.json`` may sit from its counts (rounding)."""


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
