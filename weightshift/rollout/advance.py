"""``weightshift rollout advance``: the stage gate decides, and the rollout acts on it.

Run on a schedule (``.github/workflows/rollout-advance.yml``), as Flagger and Argo Rollouts
users expect of a canary: each run reads the stack and the gateways' evidence over the
window since the stage started, and

- **promotes** on pass, once the stage has baked (as ``rollout promote`` does);
- **aborts** on fail: the rollback function's own path (listener to the stable colour, the
  rollback record, the page, the incident record), then the decision is recorded beside the
  incident records, its reason naming the failing criteria;
- **waits** while the gate is inconclusive or the stage bakes, saying how much longer;
- does **nothing** where no evidence decides: a rollback record is present (a person
  reviews and acks), the strategy is shadow (the shadow report judges it), the stage is the
  last (finishing is a person's decision), or the candidate has no traffic at this stage
  (the first step to traffic is a person's ``promote``, after ``gates check``);
- **refuses** what no evidence overrides: an alarm in ALARM, an on-call topic nobody
  confirmed, a deployed stage that differs from the stack file.

Each outcome is one line. Running it again is safe: after a promotion the new stage's window
starts at that update, so the next run waits; after an abort the record stops it. Two runs at
once are kept apart by the workflow's concurrency group, and by the Pulumi stack lock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from weightshift.evidence.sequential import Decision
from weightshift.rollout.commands import (
    EvidenceError,
    GateReading,
    Rollout,
    RolloutError,
    describe,
)
from weightshift.stages import Strategy, weights_for


class Action(enum.StrEnum):
    PROMOTED = "promoted"
    ABORTED = "aborted"
    WAITING = "waiting"
    NOTHING = "nothing"
    REFUSED = "refused"
    UNREADABLE = "unreadable"


EXIT_CODES = {
    Action.PROMOTED: 0,
    Action.WAITING: 0,
    Action.NOTHING: 0,
    Action.ABORTED: 1,
    Action.REFUSED: 2,
    Action.UNREADABLE: 3,
}
"""0 acted or nothing to do yet, 1 rolled back, 2 refused (a person must look), 3 the
evidence cannot be read."""


@dataclass(frozen=True)
class Advance:
    """What one run decided and did."""

    action: Action
    line: str
    """One line saying why."""
    stack: str
    stage: int
    next_stage: int | None
    reading: GateReading | None = None
    decision_record: str | None = None
    """The ``s3://`` location of the decision recorded on a failed gate."""
    incident: str | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.action]

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "action": self.action.value,
            "reason": self.line,
            "stage": self.stage,
            "nextStage": self.next_stage,
            "decision": self.reading.decision.value if self.reading else None,
            "gate": self.reading.to_json() if self.reading else None,
            "decisionRecord": self.decision_record,
            "incident": self.incident,
        }


def advance(rollout: Rollout) -> Advance:
    """Decide from the stage gate and act; see the module's docstring."""
    status = rollout.status()
    config = status.config.rollout
    stage, following = config.stage, status.next_stage

    def outcome(action: Action, line: str, **extra: Any) -> Advance:
        return Advance(
            action, f"stack {rollout.stack}: {line}", rollout.stack, stage, following, **extra
        )

    if status.record is not None:
        return outcome(
            Action.NOTHING,
            f"rolled back (incident {status.record.incident}): nothing to advance until the "
            "incident is reviewed and `weightshift rollout ack` clears the record",
        )
    if config.strategy is Strategy.SHADOW:
        return outcome(
            Action.NOTHING,
            "a shadow rollout serves nobody from the candidate: the shadow report judges it, "
            "and a person promotes it",
        )
    if following is None:
        return outcome(
            Action.NOTHING,
            f"stage {stage} is the last stage of {config.strategy.value}: "
            "`weightshift rollout finish` is a person's decision",
        )
    weights = weights_for(config.strategy, stage, config.candidate, config.mirror_percent)
    if weights.reaching(config.candidate) == 0:
        return outcome(
            Action.NOTHING,
            f"stage {stage} gives the candidate no traffic, so no live evidence decides: the "
            "first stage with traffic is a person's `weightshift rollout promote` (after "
            "`weightshift gates check`)",
        )
    blockers = [b for b in status.blockers if " bakes for " not in b]
    if blockers:
        return outcome(Action.REFUSED, f"not advancing stage {stage}: " + "; ".join(blockers))
    try:
        reading = rollout.read_gate(status)
    except EvidenceError as error:
        return outcome(Action.UNREADABLE, f"stage {stage} gate not decided: {error}")
    if reading.decision is Decision.FAIL:
        failing = "; ".join(describe(c) for c in reading.failing())
        # Traffic first: the decision record must not delay or prevent the rollback.
        done = rollout.abort(f"stage {stage} gate failed: {failing}", by_advance=True)
        try:
            location: str | None = rollout.record_decision(
                status, reading, action="aborted", command="advance"
            )
            recorded = f"decision recorded at {location}"
        except RolloutError as error:
            location, recorded = None, f"the decision was not recorded: {error}"
        return outcome(
            Action.ABORTED,
            f"stage {stage} gate failed ({failing}): rolled back to {config.stable.value} "
            f"(incident {done.incident}, {done.action}"
            + (", on-call paged" if done.paged else "")
            + f"); {recorded}",
            reading=reading,
            decision_record=location,
            incident=done.incident,
        )
    if reading.decision is Decision.INCONCLUSIVE:
        return outcome(
            Action.WAITING,
            f"stage {stage} gate inconclusive, waiting: {reading.wait().text()}",
            reading=reading,
        )
    counts = reading.counts[config.candidate]
    promoted = rollout.promote_to(status)
    return outcome(
        Action.PROMOTED,
        f"stage {stage} gate passed ({counts.requests:,.0f} candidate requests since "
        f"{reading.gate.since:%Y-%m-%d %H:%M} UTC): {promoted}",
        reading=reading,
    )
