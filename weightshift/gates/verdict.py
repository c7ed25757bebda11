"""The candidate's evaluation verdict as the program states it: target group tags, the
refusal when the candidate would get traffic without a pass. Apart from ``check.py`` (which
decides it) so that what imports only these, the offline synthesis and the policy pack,
does not import numpy: numpy starts threads on import, and a process with threads must not
fork the plan's workers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """The candidate's evaluation, as the program records it on its target group."""

    decision: str
    """``pass``, ``blocked`` or ``missing`` (no report for the candidate's digest)."""
    bundle: str
    digest: str
    report: str | None
    """The sha256 of the report decided on (its address in the store)."""
    reason: str

    TAG_PREFIX = "weightshift:evaluation-"

    def tags(self) -> dict[str, str]:
        """Target group tags: values AWS accepts (letters, digits, ``_ . : / = + - @``)."""
        return {
            f"{self.TAG_PREFIX}decision": self.decision,
            f"{self.TAG_PREFIX}bundle": self.bundle,
            f"{self.TAG_PREFIX}digest": self.digest,
            f"{self.TAG_PREFIX}report": self.report or "none",
        }


HELD_PREVIOUS_STABLE = "held-previous-stable"
"""The verdict's report where the candidate is the version ``rollout finish`` holds warm."""

BLOCKED_BY_EVALUATION = "the candidate's evaluation blocks its traffic: "
"""Begins the program's error when the candidate would get traffic without a passing report
(``__main__.py``); ``weightshift plan`` shows such a stage as blocked, with the reason."""


def traffic_refusal(verdict: Verdict, percent: float) -> str:
    """Why the candidate may not serve ``percent`` % of requests under ``verdict``."""
    return (
        f"{BLOCKED_BY_EVALUATION}{verdict.bundle} would serve {percent:g} % of requests, but "
        f"its evaluation is {verdict.decision}: {verdict.reason.rstrip('.')}. Publish a passing "
        "report for its exact digest (`weightshift eval publish`, then `weightshift gates "
        "check`), or set the stage back to 0."
    )
