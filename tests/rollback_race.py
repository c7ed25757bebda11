"""Rollback races, each synthesized in a process of its own (``tests/test_rollback.py``).

The engine's order made explicit with Pulumi mocks: the record appears in SSM exactly when
the engine answers the candidate Deployment's registration (with pulumi-kubernetes, once its
pods are ready), or the listener's; every registration and record read is logged in order.

Usage: python -m tests.rollback_race during-the-wait|abort-during-the-wait|no-rollback|
       while-the-listener-updates    (prints one JSON line: error, events, weights)
"""

from __future__ import annotations

import json
import sys
from typing import Any

from tests.conftest import listener_weights, synth
from weightshift.preview import synth as synth_module
from weightshift.preview.synth import SynthError
from weightshift.rollout import record as record_module
from weightshift.rollout.record import RollbackRecord

ROLLED_BACK = RollbackRecord(
    incident="4f1c0a9e3b2d7c65",
    candidate="support-assistant/v1.5.0-d80719af096e",
    alarm="support-assistant-prod-green-rollback",
    reason="errors went to ALARM",
    stage=3,
    at="2026-11-25T09:12:04+00:00",
)
ABORTED = ROLLED_BACK.model_copy(update={"alarm": "manual-abort:oncall", "reason": "manual"})
SCENARIOS = {
    # scenario: (the record written, when which resource registers, the stage)
    "during-the-wait": (ROLLED_BACK, ("kubernetes:apps/v1:Deployment", "green"), 3),
    "abort-during-the-wait": (ABORTED, ("kubernetes:apps/v1:Deployment", "green"), 1),
    "no-rollback": (None, ("kubernetes:apps/v1:Deployment", "green"), 3),
    "while-the-listener-updates": (ROLLED_BACK, ("aws:lb/listener:Listener", "traffic-https"), 3),
}


def run(scenario: str) -> dict[str, Any]:
    writes, (kind, name), stage = SCENARIOS[scenario]
    events: list[str] = []
    stored: list[RollbackRecord | None] = [None]
    new_resource = synth_module.OfflineMocks.new_resource

    def register(mocks: Any, args: Any) -> tuple[str, dict[str, Any]]:
        suffix = " Deployment" if args.typ.endswith(":Deployment") else ""
        events.append(f"register {args.name}{suffix}")
        if (args.typ, args.name) == (kind, name):
            stored[0] = writes
            events.append("record written")
        return new_resource(mocks, args)

    def read(parameter: str, client: Any = None, region: str | None = None) -> Any:
        events.append("record read")
        return stored[0]

    synth_module.OfflineMocks.new_resource = register  # type: ignore[method-assign,assignment]
    record_module.read = read
    try:
        graph = synth(f"rollout.stage={stage}")
    except SynthError as error:
        return {"error": str(error), "events": events, "weights": None}
    return {"error": None, "events": events, "weights": listener_weights(graph)}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
