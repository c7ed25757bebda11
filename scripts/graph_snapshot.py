"""Synthesize every strategy, stage and candidate colour of a stack, with and without a
rollback record, and write or compare the graphs and the command line's outputs.

A refactor that must not change behaviour runs it before (``--write DIR``) and after
(``--compare DIR``): every synthesized graph and every ``plan``/``policy check`` output
byte-identical, or the differing cases named. It drives the installed ``weightshift``
command only, so it works whatever the package's insides look like.

Usage:
    python scripts/graph_snapshot.py --write /tmp/before
    python scripts/graph_snapshot.py --compare /tmp/before
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
STAGES = {"canary": range(6), "blue-green": range(2), "shadow": range(2)}
RECORD = {
    "incident": "inc-20261207-0001",
    "candidate": "support-assistant/v1.5.0-d80719af096e",
    "alarm": "support-assistant-prod-green-rollback",
    "reason": "error rate above 0.5 %",
    "stage": 2,
    "at": "2026-12-07T10:00:00Z",
}
OUTPUTS = {
    "plan.txt": ["plan"],
    "plan.json": ["plan", "--json"],
    "plan.md": ["plan", "--markdown"],
    "plan-blue-green.txt": ["plan", "--set", "rollout.strategy=blue-green"],
    "plan-shadow.json": ["plan", "--json", "--set", "rollout.strategy=shadow"],
    "policy.txt": ["policy", "check"],
}


def _command() -> list[str]:
    executable = shutil.which("weightshift", path=str(Path(sys.executable).parent))
    return [executable] if executable else [sys.executable, "-m", "weightshift.cli"]


def _cases(record: Path) -> dict[str, list[str]]:
    cases: dict[str, list[str]] = {}
    for strategy, stages in STAGES.items():
        for stage in stages:
            for candidate in ("green", "blue"):
                for recorded in (False, True):
                    name = f"{strategy}-{stage}-{candidate}{'-record' if recorded else ''}.json"
                    args = [
                        "synth",
                        "--set",
                        f"rollout.strategy={strategy}",
                        "--set",
                        f"rollout.stage={stage}",
                        "--set",
                        f"rollout.candidate={candidate}",
                    ]
                    if recorded:
                        args += ["--rollback-record", str(record)]
                    cases[name] = args
    return cases


def _run(args: list[str]) -> str:
    env = {**os.environ, "COLUMNS": "160", "WEIGHTSHIFT_SERIAL": "1"}
    result = subprocess.run(
        [*_command(), *args, "--project", str(PROJECT)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=PROJECT,
    )
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def collect() -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        record.write_text(json.dumps(RECORD), encoding="utf-8")
        jobs = {**_cases(record), **OUTPUTS}
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            results = dict(zip(jobs, pool.map(_run, jobs.values()), strict=True))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="DIR")
    mode.add_argument("--compare", type=Path, metavar="DIR")
    args = parser.parse_args()
    results = collect()
    if args.write:
        args.write.mkdir(parents=True, exist_ok=True)
        for name, text in results.items():
            (args.write / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(results)} snapshots to {args.write}")
        return 0
    differing = []
    for name, text in sorted(results.items()):
        before = (args.compare / name).read_text(encoding="utf-8")
        if before != text:
            differing.append(name)
            diff = difflib.unified_diff(
                before.splitlines(), text.splitlines(), "before", "after", lineterm="", n=1
            )
            print(f"DIFFERS {name}\n" + "\n".join(list(diff)[:40]))
    graphs = sum(1 for name in results if not name.startswith(("plan", "policy")))
    print(
        f"{len(results) - len(differing)} of {len(results)} identical "
        f"({graphs} synthesized graphs, {len(results) - graphs} command outputs)"
    )
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
