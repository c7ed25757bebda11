"""Shared fixtures: the project folder and its production stack config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from weightshift.synth import Graph, apply_overrides, stack_config, synthesize

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def project() -> Path:
    return PROJECT


@pytest.fixture
def prod_values() -> dict[str, Any]:
    return stack_config(PROJECT, "prod")


def synth(*overrides: str) -> Graph:
    """The prod stack synthesized offline with ``--set`` style overrides."""
    return synthesize(PROJECT, "prod", apply_overrides(stack_config(PROJECT, "prod"), overrides))


def listener_weights(graph: Graph) -> dict[str, int]:
    """Target (blue, green, mirror) -> weight in the HTTPS listener's default forward action."""
    (action,) = graph.named("traffic-https").inputs["defaultActions"]
    assert action["type"] == "forward"
    by_arn = {group["arn"]: group["weight"] for group in action["forward"]["targetGroups"]}
    return {target: by_arn[arn] for target, arn in graph.outputs["targetGroupArns"].items()}
