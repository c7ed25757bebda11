"""The stack policy "a candidate gets traffic only with a passing evaluation report for its
exact digest" (policies/evaluated.py): over hand-built graphs, and over the prod stack as
the program synthesizes it (the verdict recorded on the candidate's target group)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    StackValidationArgs,
)

from policies.evaluated import candidate_evaluated
from tests.conftest import PROJECT
from tests.test_evaluation_example import example_report
from weightshift.bundles.catalog import LocalCatalog
from weightshift.gates.verdict import HELD_PREVIOUS_STABLE
from weightshift.preview.policy import stack_args
from weightshift.preview.synth import StageBlocked, apply_overrides, stack_config, synthesize

GREEN = "support-assistant/v1.5.0-d80719af096e"
BLUE = "support-assistant/v1.4.2-424ef6470390"
DIGEST = "d80719af096e7c33003cdd31e6f8427f0e188f771fc347f066fcc6d8b7f32031"
REPORT = "17faf650c25189065c18cfc6c8d8806f5d51b12cd9f337aa46e382440afd7c66"
PASSING = {
    "weightshift:evaluation-decision": "pass",
    "weightshift:evaluation-bundle": GREEN,
    "weightshift:evaluation-digest": DIGEST,
    "weightshift:evaluation-report": REPORT,
}


def resource(kind: str, name: str, props: dict[str, Any]) -> PolicyResource:
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    return PolicyResource(kind, props, f"urn:{kind}::{name}", name, options, None, None, [], {})


def graph(
    green_weight: int, tags: dict[str, str] | None, *, marked: bool = True
) -> StackValidationArgs:
    groups = {
        colour: resource(
            "aws:lb/targetGroup:TargetGroup",
            f"traffic-{colour}",
            {"arn": f"arn:tg/{colour}", **({"tags": tags} if colour == "green" and tags else {})},
        )
        for colour in ("blue", "green")
    }
    listener = resource(
        "aws:lb/listener:Listener",
        "traffic-https",
        {
            "defaultActions": [
                {
                    "type": "forward",
                    "forward": {
                        "targetGroups": [
                            {"arn": "arn:tg/blue", "weight": 1000 - green_weight},
                            {"arn": "arn:tg/green", "weight": green_weight},
                        ]
                    },
                }
            ]
        },
    )
    parts = [listener, *groups.values()]
    for colour, bundle in (("blue", BLUE), ("green", GREEN)):
        namespace = f"support-assistant-prod-{colour}"
        parts.append(
            resource(
                "kubernetes:elbv2.k8s.aws/v1beta1:TargetGroupBinding",
                colour,
                {
                    "metadata": {"namespace": namespace},
                    "spec": {"targetGroupARN": f"arn:tg/{colour}"},
                },
            )
        )
        annotations = {"weightshift.io/bundle": bundle}
        if colour == "green" and marked:
            annotations["weightshift.io/stage"] = "canary 1"
        parts.append(
            resource(
                "kubernetes:apps/v1:Deployment",
                colour,
                {
                    "metadata": {"namespace": namespace, "annotations": annotations},
                    "spec": {
                        "template": {"metadata": {"annotations": {"weightshift.io/bundle": bundle}}}
                    },
                },
            )
        )
    return StackValidationArgs(parts)


def violations(args: StackValidationArgs) -> list[str]:
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    candidate_evaluated(args, report)
    return found


def test_a_passing_verdict_for_the_exact_digest_lets_the_candidate_have_traffic() -> None:
    assert violations(graph(50, PASSING)) == []


def test_stage_0_needs_no_report() -> None:
    assert violations(graph(0, None)) == []


def test_no_report_is_a_violation() -> None:
    (found,) = violations(graph(50, None))
    assert "sends weight 50 to the candidate's target group traffic-green" in found
    assert "no evaluation verdict" in found


def test_a_report_for_another_digest_is_a_violation() -> None:
    other = {**PASSING, "weightshift:evaluation-digest": "0" * 64}
    (found,) = violations(graph(50, other))
    assert "is not the digest of" in found
    another = {**PASSING, "weightshift:evaluation-bundle": "support-assistant/v1.5.1-d80719af096e"}
    (found,) = violations(graph(50, another))
    assert f"but its pods run {GREEN}" in found


@pytest.mark.parametrize("decision", ["blocked", "missing"])
def test_a_blocked_or_missing_verdict_is_a_violation(decision: str) -> None:
    (found,) = violations(graph(250, {**PASSING, "weightshift:evaluation-decision": decision}))
    assert f"its evaluation is {decision}" in found


def test_without_the_candidate_mark_split_traffic_is_refused() -> None:
    (found,) = violations(graph(50, PASSING, marked=False))
    assert "cannot tell which one" in found


# --- the prod stack, as the program synthesizes it -------------------------------------------


def synth(catalog: LocalCatalog | None = None, *overrides: str) -> Any:
    values = apply_overrides(stack_config(PROJECT, "prod"), overrides)
    return synthesize(PROJECT, "prod", values, catalog=catalog)


def test_the_program_records_the_candidates_verdict_on_its_target_group() -> None:
    graph_ = synth(None, "rollout.stage=2")
    tags = graph_.named("traffic-green").inputs["tags"]
    assert tags == {
        "weightshift:evaluation-decision": "pass",
        "weightshift:evaluation-bundle": GREEN,
        "weightshift:evaluation-digest": DIGEST,
        "weightshift:evaluation-report": example_report().sha256,
    }
    assert "tags" not in graph_.named("traffic-blue").inputs
    assert violations(stack_args(graph_)) == []


def test_without_its_report_the_prod_candidate_may_stay_at_stage_0_only(tmp_path: Path) -> None:
    root = tmp_path / "bundles"
    for version in ("v1.4.2", "v1.5.0"):
        shutil.copytree(
            PROJECT / "bundles/support-assistant" / version, root / "support-assistant" / version
        )
    catalog = LocalCatalog(root)
    assert violations(stack_args(synth(catalog, "rollout.stage=0"))) == []
    # The program itself refuses first (a stack policy runs only after every resource is
    # registered); the policy is the second line, shown on hand-built graphs above.
    with pytest.raises(StageBlocked, match="its evaluation is missing"):
        synth(catalog, "rollout.stage=1")


def test_traffic_back_to_the_held_previous_stable_needs_no_new_report() -> None:
    held = {**PASSING, "weightshift:evaluation-report": HELD_PREVIOUS_STABLE}
    assert violations(graph(999, held)) == []
    forged = {**PASSING, "weightshift:evaluation-report": "held"}
    (found,) = violations(graph(999, forged))
    assert "names no report" in found
