"""The rollout chart: PNG and SVG of the prod stack's plan for each strategy."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.conftest import PROJECT
from weightshift.preview.chart import draw
from weightshift.preview.plan import Plan, build_plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SVG_TEXT = "{http://www.w3.org/2000/svg}text"


@pytest.fixture(scope="module")
def canary() -> Plan:
    return build_plan(PROJECT, "prod")


@pytest.fixture(scope="module")
def blue_green() -> Plan:
    return build_plan(PROJECT, "prod", ["rollout.strategy=blue-green"])


@pytest.fixture(scope="module")
def shadow() -> Plan:
    return build_plan(PROJECT, "prod", ["rollout.strategy=shadow"])


def svg_text(path: Path) -> str:
    """Every text of the SVG in drawing order, one space between them: what a reader sees,
    with a wrapped card's lines joined back."""
    root = ElementTree.parse(path).getroot()
    return " ".join(
        " ".join("".join(element.itertext()).split()) for element in root.iter(SVG_TEXT)
    )


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize("name", ["canary", "blue_green", "shadow"])
def test_png_of_each_strategy(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    plan: Plan = request.getfixturevalue(name)
    path = tmp_path / "rollout.png"
    draw(plan, path)
    width, height = png_size(path)
    assert width == 2100  # 14 in at 150 dpi: readable on a page, not a poster
    assert 900 <= height <= 1400
    assert 30_000 < path.stat().st_size < 2_000_000


@pytest.mark.parametrize("name", ["canary", "blue_green", "shadow"])
def test_svg_shows_every_stage_gate_and_the_title(
    name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    plan: Plan = request.getfixturevalue(name)
    path = tmp_path / "rollout.svg"
    draw(plan, path)
    text = svg_text(path)
    assert f"Stack prod: {plan.strategy} rollout, candidate green" in text
    for row in plan.rows:
        assert f"Stage {row.index}" in text
        assert f"Gate: {row.gate}" in text


def test_canary_cards_show_share_bake_time_and_the_candidates_capacity(
    canary: Plan, tmp_path: Path
) -> None:
    path = tmp_path / "canary.svg"
    draw(canary, path)
    text = svg_text(path)
    bakes = {1: "bake 1 h", 2: "bake 4 h", 3: "bake 24 h", 4: "bake 48 h"}
    for row, share in zip(canary.rows, (0, 1, 5, 25, 50, 100), strict=True):
        replicas, gpus = row.replicas["green"], row.gpus["green"]
        header = f"Stage {row.index}" + (" (configured)" if row.current else "")
        # Stage 0 and the last stage have no bake time: drawn the nominal width, and said so.
        assert (
            f"{header} {share} % served {bakes.get(row.index, 'no bake time')} "
            f"green: {replicas} replica{'' if replicas == 1 else 's'} / {gpus} GPUs"
        ) in text
    assert "hours since stage 1 starts (a stage without a bake time is drawn 8 h wide)" in text
    assert "mirrored" not in text


def test_shadow_shows_the_mirrored_share(shadow: Plan, tmp_path: Path) -> None:
    path = tmp_path / "shadow.svg"
    draw(shadow, path)
    text = svg_text(path)
    assert "Stage 1 0 % served, 10 % mirrored bake 24 h" in text
    assert "mirrored to green: answered by the stable colour" in text


def test_blue_green_says_its_widths_are_nominal(blue_green: Plan, tmp_path: Path) -> None:
    path = tmp_path / "blue-green.svg"
    draw(blue_green, path)
    assert "no stage of blue-green has a bake time: the widths are nominal" in svg_text(path)


def test_a_long_gate_is_wrapped_whole_and_a_blocked_stage_says_why(
    canary: Plan, tmp_path: Path
) -> None:
    gate = " ".join(["Error rate and latency within the stage's thresholds"] * 6)
    rows = [dataclasses.replace(row) for row in canary.rows]
    rows[2] = dataclasses.replace(rows[2], gate=gate, blocked="no bundle for green")
    plan = dataclasses.replace(canary, rows=rows)
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    draw(canary, short)
    draw(plan, long)
    # The cards grow to hold the gate; nothing is cut.
    assert png_size(long)[1] > png_size(short)[1]
    svg = tmp_path / "long.svg"
    draw(plan, svg)
    text = svg_text(svg)
    assert f"Gate: {gate}" in text
    assert "BLOCKED: no bundle for green" in text


@pytest.mark.parametrize("name", ["rollout.pdf", "rollout", "rollout.png.txt"])
def test_another_suffix_is_refused_and_nothing_written(
    canary: Plan, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ValueError, match=r"must be \.png or \.svg"):
        draw(canary, tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_the_suffix_is_case_insensitive(canary: Plan, tmp_path: Path) -> None:
    path = tmp_path / "ROLLOUT.PNG"
    draw(canary, path)
    png_size(path)
