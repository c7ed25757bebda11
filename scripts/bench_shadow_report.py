"""Benchmark: ``weightshift shadow report`` over a million pairs on the embedded engine.

Writes PAIRS synthetic pair records (hashes and figures, no text: 500 a file, as the
gateways batch them) into a temporary folder, then runs, each in a child process so its
peak memory is its own:

1. the report, as a user runs it: ``weightshift shadow report --records DIR --json``;
2. the naive alternative on a subset: every line through ``decode_batch`` (``PairRecord``
   validation, as ``read_pairs`` does) and the same counts in a Python loop, extrapolated
   to PAIRS.

Prints wall time, CPU time and peak RSS of each, with the machine's cores and load (the
machine may be shared: the load says how much). Target: under 30 s and 1 GiB on 2 cores.

    .venv/bin/python scripts/bench_shadow_report.py [--pairs 1000000] [--subset 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from weightshift.shadow.synthetic import write_random

NAIVE = """
import sys, time
from pathlib import Path
from weightshift.gateway.shadow import decode_batch
files = sorted(Path(sys.argv[1]).rglob("*.jsonl.gz"))
limit = int(sys.argv[2])
pairs = same = refused = latency = 0
seen = []
for path in files:
    for record in decode_batch(path.read_bytes(), str(path)):
        pairs += 1
        same += record.stable.output_hash == record.candidate.output_hash
        refused += record.candidate.refusal
        if record.stable.latency_ms is not None:
            seen.append(record.stable.latency_ms)
    if pairs >= limit:
        break
seen.sort()
print(pairs, same, refused, seen[len(seen) // 2])
"""


def child(command: list[str]) -> dict[str, float]:
    """Run ``command``; its wall and CPU seconds and peak RSS (MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{command[0]} failed ({result.returncode})")
    return {
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: the report runs first.
        "peak_rss_mib": after.ru_maxrss / 1024,
        "stdout": result.stdout,  # type: ignore[dict-item]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=50_000, help="pairs for the naive loop")
    parser.add_argument("--workdir", type=Path, help="where the temporary folder goes")
    args = parser.parse_args(argv)
    weightshift = Path(sys.executable).with_name("weightshift")
    with tempfile.TemporaryDirectory(prefix="bench-shadow-", dir=args.workdir) as scratch:
        folder = Path(scratch) / "records"
        started = time.perf_counter()
        files = write_random(folder, args.pairs)
        size = sum(path.stat().st_size for path in files)
        print(
            f"wrote {args.pairs:,} pairs in {len(files):,} files ({size / 2**20:.0f} MiB gzip) "
            f"in {time.perf_counter() - started:.1f} s"
        )
        load_before = os.getloadavg()
        report = child([str(weightshift), "shadow", "report", "--records", str(folder), "--json"])
        load_after = os.getloadavg()
        figures = json.loads(str(report.pop("stdout")))
        assert figures["records"]["pairs"] == args.pairs, figures["records"]
        naive = child([sys.executable, "-c", NAIVE, str(folder), str(args.subset)])
        naive.pop("stdout")
        naive.pop("peak_rss_mib")  # the largest child so far: the report's, not its own
        scale = args.pairs / args.subset
    cores = os.cpu_count()
    print(
        f"machine: {cores} cores; load average before {load_before[0]:.2f}, "
        f"after {load_after[0]:.2f}"
    )
    print(
        f"embedded engine, {args.pairs:,} pairs: {report['wall_s']:.1f} s wall, "
        f"{report['cpu_s']:.1f} s CPU, peak RSS {report['peak_rss_mib']:.0f} MiB"
    )
    print(
        f"naive read_pairs loop, {args.subset:,} pairs: {naive['wall_s']:.1f} s wall "
        f"(x{scale:.0f} = {naive['wall_s'] * scale:.0f} s for {args.pairs:,}), "
        f"{naive['cpu_s']:.1f} s CPU"
    )
    print(
        json.dumps(
            {
                "pairs": args.pairs,
                "cores": cores,
                "load_before": load_before[0],
                "load_after": load_after[0],
                "embedded": report,
                "naive_subset": {**naive, "pairs": args.subset},
                "naive_extrapolated_s": naive["wall_s"] * scale,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
