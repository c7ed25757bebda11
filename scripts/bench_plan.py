"""Time `weightshift plan` for the prod stack, as a user runs it (a fresh process each time).

Target: well under 5 s. Prints the wall time of each run and the median.
Usage: python scripts/bench_plan.py [--runs N] [--stack prod]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stack", default="prod")
    args = parser.parse_args()
    executable = shutil.which("weightshift") or ""
    command = [executable] if executable else [sys.executable, "-m", "weightshift.cli"]
    times: list[float] = []
    for run in range(1, args.runs + 1):
        start = time.perf_counter()
        result = subprocess.run(
            [*command, "plan", "--stack", args.stack, "--project", str(PROJECT)],
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        times.append(elapsed)
        print(f"run {run}: {elapsed:.2f} s")
    stages = sum(1 for line in result.stdout.splitlines() if line[3:4].isdigit())
    print(
        f"weightshift plan --stack {args.stack}: {stages} stages synthesized; "
        f"median {statistics.median(times):.2f} s, min {min(times):.2f} s, max {max(times):.2f} s "
        f"over {args.runs} runs (target: well under 5 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
