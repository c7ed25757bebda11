"""The rollout's sections: the two colours, the rollout itself (strategy, stage, candidate,
thresholds, capacity, the held old colour) and the automated rollback.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AwareDatetime, Field, ValidationInfo, field_validator, model_validator

from weightshift.bundles.versioning import BundleId
from weightshift.config.fields import Flag, Float, Int, LogRetentionDays, Section
from weightshift.stages import DEFAULT_MIRROR_PERCENT, Colour, Strategy, schedule


class ColourConfig(Section):
    """One inference stack. ``version`` None means the colour is not deployed."""

    version: str | None = None
    """A published bundle id; empty (``""``) or absent: the colour is not deployed."""
    replicas: Int = Field(default=2, ge=0, le=200)

    @field_validator("version", mode="before")
    @classmethod
    def _bundle_id(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        if isinstance(value, str):
            BundleId.parse(value)
        return value

    @property
    def bundle(self) -> BundleId | None:
        return BundleId.parse(self.version) if self.version else None


GateAction = Literal["block", "warn"]
"""What a pre-deployment gate that does not pass does: ``block`` (``gates check`` exits 1,
the candidate gets no traffic) or ``warn`` (printed, nothing stops)."""


class GateActions(Section):
    """The action of each pre-deployment gate (``weightshift gates check``). Defaults follow
    the seed: toxicity, win rate and the adversarial suite block; latency p99 warns."""

    toxicity: GateAction = "block"
    win_rate: GateAction = "block"
    latency: GateAction = "warn"
    adversarial: GateAction = "block"


class Thresholds(Section):
    """Gate and rollback thresholds. Defaults follow the seed's evaluation gates."""

    latency_p99_seconds: Float = Field(default=10.0, gt=0, le=600)
    """Rollback when the candidate's p99 time to first token (streamed answers, measured by
    its gateways, over one fast period) exceeds this. Whole (non-streamed) answers are not
    judged by it: their time grows with their length, not with the model's health."""
    error_rate_percent: Float = Field(default=1.0, gt=0, le=100)
    min_quality_score: Float = Field(default=0.8, ge=0, le=1)
    max_safety_violation_percent: Float = Field(default=0.5, ge=0, le=100)
    max_toxicity: Float = Field(default=0.05, ge=0, le=1)
    min_win_rate: Float = Field(default=0.5, ge=0, le=1)
    max_latency_regression_percent: Float = Field(default=20.0, ge=0, le=1000)
    min_adversarial_pass_rate: Float = Field(default=1.0, ge=0, le=1)
    gate_actions: GateActions = GateActions()
    """``gateActions``: block or warn, per pre-deployment gate (toxicity, winRate, latency,
    adversarial)."""


class CapacityConfig(Section):
    """How many replicas the candidate runs at each stage (``weightshift/rollout/capacity.py``)."""

    sizing: Literal["proportional", "throughput"] = "proportional"
    """proportional: the candidate's share of the colour's full replica count (the stable
    colour is sized for the service's peak, so its count is the load); throughput: its share
    of ``peakRequestsPerSecond`` over ``replicaRequestsPerSecond``."""
    headroom_percent: Float = Field(default=25.0, ge=0, le=400)
    """Extra capacity over the candidate's share: a new version may serve fewer requests
    per replica than the old one."""
    floor: Int = Field(default=1, ge=1, le=200)
    """Fewest candidate replicas at any stage (so the test route answers at stage 0)."""
    peak_requests_per_second: Float | None = Field(default=None, gt=0)
    """throughput sizing: the service's peak load, all colours together."""
    replica_requests_per_second: Float | None = Field(default=None, gt=0)
    """throughput sizing: what one replica serves at its latency target."""
    hold_hours: Float = Field(default=24.0, ge=0, le=720)
    """After ``rollout finish``: how long the old stable colour stays warm, the window in
    which a late regression is still rolled back at once."""
    hold_replicas: Int | None = Field(default=None, ge=0, le=200)
    """...and at what size; default its full size (anything less cannot take all traffic
    back at once)."""

    @model_validator(mode="after")
    def _sizing_inputs(self) -> CapacityConfig:
        numbers = (self.peak_requests_per_second, self.replica_requests_per_second)
        if self.sizing == "throughput" and None in numbers:
            raise ValueError(
                "sizing throughput needs peakRequestsPerSecond and replicaRequestsPerSecond "
                "(the service's peak load and one replica's throughput), or use sizing "
                "proportional"
            )
        if self.sizing == "proportional" and numbers != (None, None):
            raise ValueError(
                "peakRequestsPerSecond and replicaRequestsPerSecond size only sizing "
                "throughput: remove them, or set sizing: throughput"
            )
        return self

    @property
    def peak_replicas(self) -> float | None:
        """throughput sizing: the replicas that carry the peak (None: proportional)."""
        if self.peak_requests_per_second is None or self.replica_requests_per_second is None:
            return None
        return self.peak_requests_per_second / self.replica_requests_per_second


class Hold(Section):
    """Written by ``weightshift rollout finish``: the old stable colour's version, kept warm
    until ``until`` (then the next ``pulumi up`` scales it to zero)."""

    version: str
    until: AwareDatetime
    """When ``weightshift rollout release`` may release it."""
    released: Flag = False
    """Set by ``rollout release``: the held colour runs no pods."""

    @field_validator("version")
    @classmethod
    def _bundle_id(cls, value: str) -> str:
        BundleId.parse(value)
        return value


class ShadowGate(Section):
    """The divergence gate (``weightshift/gates/shadow.py``): may a shadow rollout move from
    mirroring (shadow stage 1) to canary stage 1? Each figure of the shadow report is
    decided on its interval: pass when the whole interval is on the good side of its limit,
    fail when the whole interval is on the bad side, inconclusive otherwise."""

    min_pairs: Int = Field(default=10_000, ge=1, le=1_000_000_000)
    """Fewest mirrored pairs the gate decides on (the seed's sample size for latency)."""
    min_exact_match: Float | None = Field(default=None, ge=0, le=1)
    """Floor on the share of pairs whose answers are byte-identical. Off by default: a new
    model version rarely answers word for word; set it for a change that should not alter
    answers (a new serving image, a re-quantized copy of the same weights)."""
    max_refusal_delta: Float = Field(default=0.01, ge=0, le=1)
    """Ceiling on the candidate's refusal rate minus the stable colour's, on the same
    requests (0.01: one percentage point more refusals)."""
    max_block_delta: Float = Field(default=0.005, ge=0, le=1)
    """Ceiling on the candidate's guardrail block rate minus the stable colour's."""
    max_p99_ratio: Float = Field(default=1.2, gt=0, le=100)
    """Ceiling on the candidate's p99 answer latency over the stable colour's."""
    min_judge_win_rate: Float = Field(default=0.45, ge=0, le=1)
    """Floor on the judge's win rate of the candidate (ties half), where text is sampled and
    a judge ran (otherwise not applicable). Below 0.5: an equal candidate scores 0.5, and a
    floor of 0.5 could never pass it."""
    max_candidate_error_rate: Float = Field(default=0.01, ge=0, le=1)
    """Ceiling on the share of mirrored copies the candidate answered with an error."""


class RolloutConfig(Section):
    strategy: Strategy
    stage: Int = Field(ge=0)
    candidate: Colour
    stickiness_seconds: Int = Field(default=0, ge=0, le=604_800)
    """0 turns stickiness off; otherwise 1 s to 7 days (the ALB's range)."""
    mirror_percent: Float = Field(default=DEFAULT_MIRROR_PERCENT, gt=0, le=100)
    """Shadow only: share of live requests copied to the candidate."""
    shadow_record_days: Int = Field(default=30, ge=1, le=3653)
    """Shadow only: how long the mirrored pairs are kept (the shadow bucket's lifecycle)."""
    shadow_keep_text: Flag = False
    """Deprecated alias of ``shadowTextSample: 1``, refused beside ``shadowTextSample``."""
    shadow_text_sample: Float | None = Field(default=None, ge=0, le=1)
    """The share of mirrored pairs that keep their prompt and answers (under their own
    prefix, encrypted with the stack's key), chosen by a hash of the request id so every
    gateway agrees; the others keep hashes only. They may hold personal data: decide with
    whoever owns that data. Default 0."""
    shadow_sample: Float = Field(default=0.0, ge=0, le=0.5)
    """Canary stages between 0 and 100 %: the share of the stable colour's own requests it
    also mirrors to the candidate (shadow-period monitoring). 0: none; at most 0.5 (above
    that the mirror's bounded queue drops copies, biased to the short requests, and the
    rollback function can no longer tell the stages apart by weight). Stickiness is off while
    requests are mirrored (a sticky client would be mirrored always or never)."""
    shadow_gate: ShadowGate = ShadowGate()
    """``shadowGate``: the divergence gate from shadow stage 1 to canary stage 1."""
    thresholds: Thresholds = Thresholds()
    capacity: CapacityConfig = CapacityConfig()
    hold: Hold | None = None
    """Set by ``rollout finish``; applies while the candidate colour still runs
    ``hold.version`` at stage 0."""

    @field_validator("stage")
    @classmethod
    def _stage_exists(cls, value: int, info: ValidationInfo) -> int:
        strategy = info.data.get("strategy")
        if strategy is None:
            return value
        last = len(schedule(strategy)) - 1
        if value > last:
            raise ValueError(f"not a stage of strategy {strategy.value}; allowed 0 to {last}")
        return value

    @model_validator(mode="after")
    def _one_text_setting(self) -> RolloutConfig:
        if self.shadow_keep_text and self.shadow_text_sample is not None:
            raise ValueError(
                "shadowKeepText and shadowTextSample both set: shadowKeepText is the old "
                "name of shadowTextSample: 1; remove shadowKeepText"
            )
        return self

    @property
    def stable(self) -> Colour:
        return self.candidate.other

    @property
    def text_sample(self) -> float:
        """The share of pairs that keep their text (``shadowKeepText: true`` is 1)."""
        if self.shadow_text_sample is not None:
            return self.shadow_text_sample
        return 1.0 if self.shadow_keep_text else 0.0

    @property
    def mirror_sample(self) -> float:
        """``shadowSample`` where the strategy mirrors at canary stages (canary only)."""
        return self.shadow_sample if self.strategy is Strategy.CANARY else 0.0


class RollbackConfig(Section):
    """Automated rollback of the candidate: alarm timing and who is paged."""

    period_seconds: Literal[60] = 60
    """ALB metrics have one-minute resolution: the ALB's alarms evaluate one-minute periods."""
    fast_period_seconds: Literal[10, 20, 30] = 10
    """The gateway's metrics are high resolution: its alarms evaluate periods this short
    (and the gateway sends its metrics this often)."""
    min_requests: Int = Field(default=10, ge=1, le=1_000_000)
    """A rate (errors, slow first tokens, blocked answers) is judged only over at least this
    many requests in its period: a fast period (high traffic) or a minute (low traffic)."""
    min_errors: Int = Field(default=3, ge=1, le=1_000_000)
    """...and only with at least this many of them: one stray error never rolls back."""
    min_feedback: Int = Field(default=10, ge=1, le=1_000_000)
    """The quality score (user feedback) is judged only over minutes with at least this many
    scores: two unhappy users are not a bad model."""
    heartbeat_periods: Int = Field(default=3, ge=2, le=30)
    """Fast periods without a single gateway heartbeat before rollback (every candidate
    pod's gateway reports every period, zeros included, from stage 0 on). At least 2: one
    late or lost datapoint must not roll back."""
    dead_man_minutes: Int = Field(default=5, ge=1, le=60)
    """The dead man's switch's window: it counts the requests the load balancer sent the
    candidate and the answers the candidate gave over this many minutes."""
    dead_man_requests: Int = Field(default=5, ge=1, le=10_000)
    """Roll back when at least this many requests reached the candidate within the window
    and not one was answered (see ``weightshift/rollout/dead_man.py``)."""
    quality_minutes: Int = Field(default=3, ge=1, le=60)
    """Minutes of low quality score (2 of them breaching) before rollback."""
    on_call: tuple[str, ...] = ()
    """Email addresses or HTTPS endpoints subscribed to the on-call topic."""
    log_retention_days: LogRetentionDays = 365
    reserved_concurrency: Int = Field(default=5, ge=1, le=100)

    @field_validator("on_call")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for endpoint in value:
            if not (
                re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]{2,}", endpoint)
                or endpoint.startswith("https://")
            ):
                raise ValueError(f"{endpoint!r}: an email address or an https:// endpoint")
        return value
