"""Benchmark the bundle store against a local S3 emulator (moto server on 127.0.0.1).

1. A synthetic bundle of >= 1 GiB (random weight shards) is published in full.
2. A prompt-only release of it is published as the next MINOR version.
3. Hashing throughput of weightshift (one worker, then one per core) is compared with
   `sha256sum` on the same files in the same run.

Targets: the prompt-only release uploads < 0.1 % of the bundle's bytes; hashing is at
least 0.9x `sha256sum` per core and uses both cores across files.
Usage: python scripts/bench_bundle.py [--gib 1.0] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.emulator import artifact_bucket
from weightshift.bundles.hashing import hash_files
from weightshift.bundles.manifest import load_local
from weightshift.bundles.skeleton import init_bundle
from weightshift.bundles.store import BundleStore
from weightshift.bundles.versioning import Version

MiB = 1024 * 1024


def make_bundle(root: Path, total: int, shards: int) -> list[str]:
    init_bundle(root, "bench-model")
    weights = root / "model/weights"
    (weights / "model.safetensors").unlink()
    names = []
    per_shard = total // shards
    for index in range(shards):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        with (weights / name).open("wb") as handle:
            # A valid safetensors shard (validate checks it): one U8 tensor of random bytes.
            header = json.dumps(
                {"weights": {"dtype": "U8", "shape": [per_shard], "data_offsets": [0, per_shard]}}
            ).encode()
            header += b" " * (-len(header) % 8)
            handle.write(len(header).to_bytes(8, "little") + header)
            left = per_shard
            while left:
                chunk = min(left, 64 * MiB)
                handle.write(os.urandom(chunk))
                left -= chunk
        names.append(f"model/weights/{name}")
    return names


T = TypeVar("T")


def timed(action: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--gib", type=float, default=1.0, help="size of the weights (default 1 GiB)"
    )
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="weightshift-bench-"))
    try:
        root = work / "bundle"
        shards = make_bundle(root, int(args.gib * 1024 * MiB), args.shards)
        size = sum((root / s).stat().st_size for s in shards)
        for shard in shards:  # same page-cache state for every contender
            with (root / shard).open("rb") as handle:
                while handle.read(64 * MiB):
                    pass

        _, sum_time = timed(
            lambda: subprocess.run(
                ["sha256sum", *shards], cwd=root, check=True, capture_output=True
            )
        )
        _, one_time = timed(lambda: hash_files(root, shards, workers=1))
        _, all_time = timed(lambda: hash_files(root, shards, workers=cores))
        sum_rate, one_rate, all_rate = (size / t / MiB for t in (sum_time, one_time, all_time))
        print(f"hashing {size / MiB:,.0f} MiB in {len(shards)} files on {cores} cores:")
        print(f"  sha256sum (one core)         {sum_rate:8,.0f} MiB/s")
        print(
            f"  weightshift, 1 worker        {one_rate:8,.0f} MiB/s  "
            f"({one_rate / sum_rate:.2f}x sha256sum per core)"
        )
        print(
            f"  weightshift, {cores} workers       {all_rate:8,.0f} MiB/s  "
            f"({all_rate / one_rate:.2f}x its one-worker rate)"
        )

        with artifact_bucket("weightshift-bench") as emulator:
            os.environ.update(emulator.env())
            store = BundleStore(emulator.bucket, workers=8)
            full, full_time = timed(
                lambda: store.publish(load_local(root), Version(1, 0, 0), allow_placeholders=True)
            )
            bundle_bytes = full.bytes_total
            print(
                f"full publish of {full.id}: {bundle_bytes:,} bytes in {full.blobs_uploaded} blobs"
            )
            print(
                f"  uploaded {full.bytes_uploaded:,} bytes in {full_time:.1f} s "
                f"({full.bytes_uploaded / full_time / MiB:,.0f} MiB/s)"
            )
            (root / "prompt/system.txt").write_text(
                "You are the benchmark assistant. Answer in one line.\n"
            )
            prompt, prompt_time = timed(
                lambda: store.publish(load_local(root), Version(1, 1, 0), allow_placeholders=True)
            )
            share = 100 * prompt.bytes_uploaded / bundle_bytes
            print(f"prompt-only release {prompt.id}:")
            print(
                f"  uploaded {prompt.bytes_uploaded:,} bytes of {bundle_bytes:,} "
                f"({share:.6f} %, target < 0.1 %) "
                f"in {prompt_time:.1f} s; {prompt.blobs_skipped} blobs already present"
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
