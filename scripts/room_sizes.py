"""The largest classes and functions of the project, by line count (docstrings included).

Usage: python scripts/room_sizes.py [--top N] [--class-limit 300] [--function-limit 60]
Prints the top N of each and every one over its limit; exits 0 (a report, not a gate).
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
ROOTS = ("weightshift", "components", "policies", "__main__.py")


def rooms() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    classes: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for root in ROOTS:
        path = PROJECT / root
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            tree = ast.parse(file.read_text(encoding="utf-8"))
            rel = file.relative_to(PROJECT)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if isinstance(node, ast.ClassDef):
                    classes.append((size, f"{rel}:{node.lineno} {node.name}"))
                else:
                    functions.append((size, f"{rel}:{node.lineno} {node.name}"))
    return sorted(classes, reverse=True), sorted(functions, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--class-limit", type=int, default=300)
    parser.add_argument("--function-limit", type=int, default=60)
    args = parser.parse_args()
    classes, functions = rooms()
    for title, found, limit in (
        ("classes", classes, args.class_limit),
        ("functions", functions, args.function_limit),
    ):
        over = [room for room in found if room[0] > limit]
        print(f"{title}: {len(over)} over {limit} lines; the largest:")
        for size, where in found[: max(args.top, len(over))]:
            print(f"  {size:5d}  {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
