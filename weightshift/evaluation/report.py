"""An evaluation report: the evidence the pre-deployment gates decide on.

A report names the bundle it evaluated by id *and* full digest (the sha256 of its canonical
manifest), and the baseline it was compared with. Gates read counts, never point estimates
alone: a win rate, a toxicity share or an adversarial pass rate is decided on its interval,
so the report keeps what the interval needs (wins, losses and ties; flagged of total; passed
of total; the latency samples of both colours).

The JSON form has camelCase keys and ``schema: 1``; unknown keys are refused, so a report
written by a newer weightshift is not silently half-read.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from weightshift.bundles import strict_json
from weightshift.bundles.versioning import HASH_LENGTH, BundleId

SCHEMA = 1
MAX_REPORT_BYTES = 32 * 1024 * 1024
"""A report larger than this is refused before it is parsed (latency samples of a few
hundred thousand prompts fit)."""
_DIGEST = re.compile(r"^[0-9a-f]{64}$")

Source = Literal["weightshift-eval", "promptfoo", "lm-eval", "bundle-tests"]
"""Who produced the figures: ``weightshift eval run``, or an importer."""


class _Part(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class BundleRef(_Part):
    """A bundle by id and full digest: the id's 12-character hash must begin the digest."""

    id: str
    digest: str

    @field_validator("digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if not _DIGEST.fullmatch(value):
            raise ValueError("the bundle digest: 64 lowercase hex characters (sha256)")
        return value

    @model_validator(mode="after")
    def _agrees(self) -> BundleRef:
        bundle = BundleId.parse(self.id)
        if not self.digest.startswith(bundle.digest):
            raise ValueError(
                f"digest {self.digest[:HASH_LENGTH]}... is not the digest of {self.id} "
                f"(its id says {bundle.digest}...)"
            )
        return self

    @property
    def bundle(self) -> BundleId:
        return BundleId.parse(self.id)


class Judge(_Part):
    """The pairwise judge: which model, where, and the exact prompt it was given."""

    model: str
    endpoint: str
    """An OpenAI-compatible base URL, or ``bedrock:<region>``."""
    prompt_version: str
    prompt_sha256: str


class Pairwise(_Part):
    """Candidate against baseline on the same prompts, judged pair by pair."""

    wins: int = Field(ge=0)
    losses: int = Field(ge=0)
    ties: int = Field(ge=0)
    judge: Judge | None = None
    """None where an importer's source does not say (the gate still reads the counts)."""

    @property
    def pairs(self) -> int:
        return self.wins + self.losses + self.ties


class Toxicity(_Part):
    """The share of the candidate's answers that a moderator flagged."""

    flagged: int = Field(ge=0)
    total: int = Field(ge=1)
    moderator: str
    """What flagged them, e.g. ``bedrock-guardrail:<id>:<version>`` or ``local``."""

    @model_validator(mode="after")
    def _bounded(self) -> Toxicity:
        if self.flagged > self.total:
            raise ValueError(f"flagged ({self.flagged}) cannot exceed total ({self.total})")
        return self


class AdversarialCase(_Part):
    """One adversarial prompt the candidate did not handle as it must."""

    id: str
    kind: Literal["must-refuse", "must-not-leak"]
    reason: str


class Adversarial(_Part):
    passed: int = Field(ge=0)
    total: int = Field(ge=1)
    failures: tuple[AdversarialCase, ...] = ()

    @model_validator(mode="after")
    def _bounded(self) -> Adversarial:
        if self.passed > self.total:
            raise ValueError(f"passed ({self.passed}) cannot exceed total ({self.total})")
        return self


class Latency(_Part):
    """Seconds per answer, each colour on the same prompts (whole answers, through its
    gateway). Samples, not only the p99: the gate's interval needs them."""

    candidate_seconds: tuple[float, ...]
    baseline_seconds: tuple[float, ...]

    @field_validator("candidate_seconds", "baseline_seconds")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not (math.isfinite(sample) and sample >= 0) for sample in value):
            raise ValueError("latency samples are seconds: finite, 0 or more")
        return value


class EvaluationReport(_Part):
    schema_: Literal[1] = Field(default=1, alias="schema")
    bundle: BundleRef
    """The candidate evaluated."""
    baseline: BundleRef | None = None
    """What it was compared with (the stable colour's bundle)."""
    created: AwareDatetime
    source: Source
    dataset: str
    """The prompt set's name and version, e.g. ``support-eval-2026-10``."""
    pairwise: Pairwise | None = None
    toxicity: Toxicity | None = None
    adversarial: Adversarial | None = None
    latency: Latency | None = None
    notes: tuple[str, ...] = ()
    """What an importer could not carry over, in words."""

    def to_json(self) -> bytes:
        """Canonical bytes (sorted keys): the report's address is their sha256."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json()).hexdigest()


def created_now() -> datetime:
    return datetime.now(UTC)


class ReportError(ValueError):
    """A report that cannot be read; the message says which and why."""


def parse(data: bytes, where: str) -> EvaluationReport:
    """A report from its JSON bytes: at most ``MAX_REPORT_BYTES``, strict JSON (no repeated
    key, no NaN), the schema above; ``where`` names it in the error."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(
            f"{where} is {len(data):,} bytes; a report is at most {MAX_REPORT_BYTES:,}."
        )
    try:
        document = strict_json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ReportError(f"{where} is not JSON ({error}).") from None
    if not isinstance(document, dict):
        raise ReportError(f"{where} is not an evaluation report (a JSON object).")
    if document.get("schema") != SCHEMA:
        raise ReportError(
            f"{where}: schema {document.get('schema')!r} is not {SCHEMA}: this weightshift reads "
            "evaluation reports of schema 1 only."
        )
    try:
        return EvaluationReport.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors()
        )
        raise ReportError(f"{where} is not a valid evaluation report: {problems}.") from None
