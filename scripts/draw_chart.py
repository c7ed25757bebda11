"""Draw a stack's rollout plan as the chart in the docs (the PNG and an SVG beside it).

Synthesizes every stage offline, as `weightshift plan` does, then writes the chart to
``--out`` and the other format next to it.
Usage: python scripts/draw_chart.py [--stack prod] [--out docs/images/rollout-canary.png]
       [--set rollout.strategy=shadow ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightshift.preview.chart import SUFFIXES, check_suffix, draw
from weightshift.preview.plan import build_plan

PROJECT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stack", default="prod")
    parser.add_argument("--out", type=Path, default=PROJECT / "docs/images/rollout-canary.png")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config override"
    )
    args = parser.parse_args()
    try:
        check_suffix(args.out)
    except ValueError as error:
        parser.error(str(error))
    plan = build_plan(PROJECT, args.stack, args.set)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for suffix in SUFFIXES:
        path = args.out.with_suffix(suffix)
        draw(plan, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
