"""The rollout plan as a picture: the candidate's share of live requests over time.

One step per stage, as wide as the stage's bake time (hours since stage 1 starts). A stage
without a bake time (stage 0, a last stage that is simply the end state, every blue-green
stage) has no length of its own: it is drawn a nominal width, hatched, and says so. Above
the steps, one card per stage, linked to its step: the share, the bake time, the
candidate's replicas and GPUs, and the gate that must hold before the next stage.

Drawn on matplotlib's Agg canvas (no display, no pyplot state), so it runs in CI and over
SSH; the file's suffix picks PNG or SVG.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import ConnectionPatch, FancyBboxPatch, Patch
from matplotlib.textpath import text_to_path
from matplotlib.ticker import FixedLocator, PercentFormatter

from weightshift.preview.plan import Plan, StageRow
from weightshift.stages import Strategy, stage_of

SUFFIXES = (".png", ".svg")
"""The formats ``draw`` writes, chosen by the file's suffix."""

_INK = {"blue": "#1565c0", "green": "#2e7d32"}
_MIRROR = "#ef6c00"
_GREY = "#757575"
_BLOCKED = "#c62828"
_WIDTH_IN = 14.0
_LEFT_IN, _RIGHT_IN = 0.85, 0.3
_AREA_IN = _WIDTH_IN - _LEFT_IN - _RIGHT_IN
_CARD_GAP_IN = 0.12
_BODY_PT = 8.5
_CARD_INSET_PT = 6
_BLOCKED_LINES = 3
_TICK_STEPS = (1, 2, 3, 6, 12, 24, 48)


def check_suffix(path: Path) -> str:
    """The format of ``path`` (``png`` or ``svg``); ValueError for any other suffix."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"cannot draw the chart to {path}: the format follows the file's suffix, which "
            f"must be {' or '.join(SUFFIXES)} (got {suffix or 'no suffix'})."
        )
    return suffix.removeprefix(".")


@dataclass(frozen=True)
class _Span:
    """Where one stage lies on the time axis."""

    row: StageRow
    start: float
    end: float
    baked: bool
    """False: the stage has no bake time and is drawn the nominal width."""

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def _spans(plan: Plan) -> tuple[list[_Span], float]:
    """Each stage's span in hours since stage 1 starts, and the nominal width."""
    strategy = Strategy(plan.strategy)
    hours: list[float | None] = []
    for row in plan.rows:
        duration = stage_of(strategy, row.index).duration
        hours.append(duration.total_seconds() / 3600 if duration else None)
    baked = sum(h for h in hours if h is not None)
    # A tenth of the baked time, so a stage without one is visible but never dominates.
    nominal = float(math.ceil(baked / 10)) if baked else 1.0
    widths = [h if h is not None else nominal for h in hours]
    first = next((i for i, row in enumerate(plan.rows) if row.index == 1), 0)
    start = -sum(widths[:first])
    spans: list[_Span] = []
    for row, width, bake in zip(plan.rows, widths, hours, strict=True):
        spans.append(_Span(row, start, start + width, bake is not None))
        start += width
    return spans, nominal


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _wrap(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` in lines that ``fits``, split between words only: the lines joined by
    spaces give the text back (a word too long for a line overflows it)."""
    lines: list[str] = []
    for word in text.split():
        if lines and fits(f"{lines[-1]} {word}"):
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _card_lines(plan: Plan, span: _Span, fits: Callable[[str], bool]) -> list[str]:
    """The body of a stage's card, in lines that ``fits`` its width."""
    row = span.row
    served = row.weights.percent(plan.candidate)
    mirrored = row.weights.percent("mirror")
    share = f"{served:g} % served" + (f", {mirrored:g} % mirrored" if mirrored else "")
    bake = f"bake {row.duration}" if span.baked else "no bake time"
    lines = [share, bake]
    if row.replicas and not row.blocked:
        count = row.replicas.get(plan.candidate, 0)
        gpus = row.gpus.get(plan.candidate, 0)
        lines.append(f"{plan.candidate}: {_plural(count, 'replica')} / {_plural(gpus, 'GPU')}")
    wrapped = [part for line in lines for part in _wrap(line, fits)]
    if row.blocked:
        reason = _wrap(f"BLOCKED: {row.blocked}", fits)
        if len(reason) > _BLOCKED_LINES:
            reason = [*reason[: _BLOCKED_LINES - 1], f"{reason[_BLOCKED_LINES - 1]} …"]
        wrapped += reason
    return [*wrapped, *_wrap(f"Gate: {row.gate}", fits)]


def _hour_ticks(low: float, high: float) -> list[float]:
    """Whole hours at the smallest step of ``_TICK_STEPS`` giving at most 12 ticks."""
    step = next((s for s in _TICK_STEPS if (high - low) / s <= 12), _TICK_STEPS[-1])
    first = math.ceil(low / step) * step
    return [float(t) for t in range(int(first), int(high) + 1, step)]


def _draw_steps(ax: Axes, plan: Plan, spans: list[_Span], nominal: float) -> None:
    ink = _INK.get(plan.candidate, "black")
    previous: float | None = None
    for span in spans:
        served = span.row.weights.percent(plan.candidate)
        mirrored = span.row.weights.percent("mirror")
        if not span.baked:
            ax.axvspan(
                span.start, span.end, facecolor="none", hatch="///", edgecolor="#cfcfcf", lw=0
            )
            ax.text(
                span.middle,
                25 if served > 50 else 60,
                "no bake time",
                rotation=90,
                ha="center",
                va="center",
                fontsize=8,
                color=_GREY,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5},
            )
        if mirrored:
            ax.fill_between(
                [span.start, span.end], 0, mirrored, color=_MIRROR, alpha=0.25, lw=0, zorder=2
            )
            ax.hlines(mirrored, span.start, span.end, colors=_MIRROR, lw=2, zorder=3)
        ax.fill_between([span.start, span.end], 0, served, color=ink, alpha=0.12, lw=0)
        ax.hlines(
            served,
            span.start,
            span.end,
            colors=ink,
            lw=2.5,
            linestyles="solid" if span.baked else (0, (4, 2)),
            zorder=4,
        )
        if previous is not None:
            ax.vlines(span.start, previous, served, colors=ink, lw=2.5, zorder=4)
            ax.axvline(span.start, color="#e0e0e0", lw=0.8, zorder=0)
        previous = served
    low, high = spans[0].start, spans[-1].end
    ax.set_xlim(low, high)
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_locator(FixedLocator([0, 25, 50, 75, 100]))
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    ax.set_ylabel("share of live requests")
    ax.grid(axis="y", color="#eeeeee", lw=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    if any(span.baked for span in spans):
        ax.xaxis.set_major_locator(FixedLocator(_hour_ticks(low, high)))
        ax.set_xlabel(
            f"hours since stage 1 starts (a stage without a bake time is drawn {nominal:g} h wide)"
        )
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"no stage of {plan.strategy} has a bake time: the widths are nominal")


def _legend(fig: Figure, plan: Plan, spans: list[_Span], nominal: float, bottom: float) -> None:
    ink = _INK.get(plan.candidate, "black")
    handles: list[Line2D | Patch] = [
        Line2D([], [], color=ink, lw=2.5, label=f"served by the candidate ({plan.candidate})")
    ]
    if any(row.weights.mirror for row in plan.rows):
        handles.append(
            Patch(
                facecolor=_MIRROR,
                alpha=0.5,
                label=f"mirrored to {plan.candidate}: answered by the stable colour, "
                "the copy's answer compared, never served",
            )
        )
    handles.append(
        Patch(
            facecolor="white",
            edgecolor="#bdbdbd",
            hatch="///",
            label=f"no bake time (drawn {nominal:g} h wide)"
            if any(span.baked for span in spans)
            else "no bake time",
        )
    )
    fig.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, bottom),
        ncol=len(handles),
        frameon=False,
        fontsize=9,
    )


def _draw_cards(
    cards: Axes, chart: Axes, plan: Plan, stages: list[tuple[_Span, list[str]]]
) -> None:
    """One card per stage across ``cards``, each linked to its stage's place on ``chart``."""
    ink = _INK.get(plan.candidate, "black")
    count = len(stages)
    gap = _CARD_GAP_IN / _AREA_IN
    card = (1 - gap * (count - 1)) / count
    for i, (span, body) in enumerate(stages):
        x = i * (card + gap)
        row = span.row
        edge = _BLOCKED if row.blocked else (ink if row.current else "#bdbdbd")
        cards.add_patch(
            FancyBboxPatch(
                (x, 0),
                card,
                1,
                boxstyle="round,pad=0,rounding_size=0.02",
                transform=cards.transAxes,
                facecolor="#fafafa",
                edgecolor=edge,
                lw=2 if row.current or row.blocked else 1,
            )
        )
        header = f"Stage {row.index}" + (" (configured)" if row.current else "")
        cards.annotate(
            header,
            (x, 1),
            xycoords="axes fraction",
            xytext=(_CARD_INSET_PT, -6),
            textcoords="offset points",
            va="top",
            fontsize=10,
            fontweight="bold",
        )
        cards.annotate(
            "\n".join(body),
            (x, 1),
            xycoords="axes fraction",
            xytext=(_CARD_INSET_PT, -22),
            textcoords="offset points",
            va="top",
            fontsize=_BODY_PT,
            linespacing=1.35,
            color=_BLOCKED if row.blocked else "#212121",
        )
        cards.figure.add_artist(
            ConnectionPatch(
                xyA=(x + card / 2, 0),
                coordsA=cards.transAxes,
                xyB=(span.middle, 1),
                coordsB=chart.get_xaxis_transform(),
                color="#9e9e9e",
                lw=0.8,
                arrowstyle="-|>",
                mutation_scale=8,
            )
        )


def draw(plan: Plan, path: Path) -> None:
    """Draw ``plan`` to ``path``, PNG or SVG by its suffix (ValueError for any other)."""
    fmt = check_suffix(path)
    spans, nominal = _spans(plan)
    count = len(spans)
    card_pt = 72 * (_AREA_IN - _CARD_GAP_IN * (count - 1)) / count
    font = FontProperties(size=_BODY_PT)
    # Measured on the font's outlines, in points; 2 points spare for the renderer's hinting.
    room = card_pt - 2 * _CARD_INSET_PT - 2

    def fits(text: str) -> bool:
        width, _, _ = text_to_path.get_text_width_height_descent(text, font, ismath=False)
        return width <= room

    bodies = [_card_lines(plan, span, fits) for span in spans]
    lines = max(len(body) for body in bodies)
    # Heights in inches, top to bottom: title, cards, leader lines, chart, axis, legend.
    title_in, gap_in, chart_in, axis_in, legend_in = 0.8, 0.55, 3.4, 0.6, 0.4
    cards_in = (22 + lines * _BODY_PT * 1.35 + 8) / 72
    height = title_in + cards_in + gap_in + chart_in + axis_in + legend_in
    fig = Figure(figsize=(_WIDTH_IN, height), dpi=150)
    FigureCanvasAgg(fig)

    def box(bottom_in: float, height_in: float) -> tuple[float, float, float, float]:
        return (_LEFT_IN / _WIDTH_IN, bottom_in / height, _AREA_IN / _WIDTH_IN, height_in / height)

    chart = fig.add_axes(box(legend_in + axis_in, chart_in))
    cards = fig.add_axes(box(legend_in + axis_in + chart_in + gap_in, cards_in))
    cards.set_axis_off()
    fig.text(
        _LEFT_IN / _WIDTH_IN,
        1 - 0.22 / height,
        f"Stack {plan.stack}: {plan.strategy} rollout, candidate {plan.candidate}",
        fontsize=14,
        fontweight="bold",
        va="top",
    )
    fig.text(
        _LEFT_IN / _WIDTH_IN,
        1 - 0.52 / height,
        f"The share of live requests {plan.candidate} serves at each stage; each stage "
        "lasts its bake time, then its gate must hold before `weightshift rollout promote`.",
        fontsize=9.5,
        color=_GREY,
        va="top",
    )
    _draw_steps(chart, plan, spans, nominal)
    _draw_cards(cards, chart, plan, list(zip(spans, bodies, strict=True)))
    _legend(fig, plan, spans, nominal, 0.05 / height)
    # Text stays text in the SVG (searchable, selectable); no date, fixed ids: a
    # redrawn chart of an unchanged plan is the same file.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "weightshift"}):
        fig.savefig(path, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
