"""Fill a new bundle's placeholders for a trial run (docs/quickstart.md): not a model.

`weightshift bundle init` writes a placeholder checkpoint and an all-zero serving image digest,
which `bundle validate` reports and `bundle publish` refuses. For trying the bundle commands
without a model at hand, this writes a small checkpoint of random numbers in its place (a valid
safetensors file, as `validate` checks it) and pins the example catalog's serving image.

Usage: .venv/bin/python scripts/demo_weights.py DIR [--mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightshift.bundles.content import safetensors_bytes

SERVING_IMAGE = (
    "vllm/vllm-openai@sha256:3c0ae4bd21a5fba2a4ab4bcbc7b5e9f0cd1e1bd9d5c8a2bf84f1b6d0a9e7c431"
)
"""The image bundles/support-assistant pins (the offline catalog's example)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a bundle folder `weightshift bundle init` wrote")
    parser.add_argument("--mib", type=int, default=8, help="checkpoint size in MiB (default 8)")
    args = parser.parse_args()
    metadata_path = args.dir / "metadata.json"
    if not metadata_path.is_file():
        print(f"demo_weights: {metadata_path} does not exist: run `weightshift bundle init` first.")
        return 2
    columns = 1024
    rows = max(1, args.mib * 1024 * 1024 // (2 * columns))
    tensor = ("F16", [rows, columns], os.urandom(rows * columns * 2))
    weights = args.dir / "model/weights"
    for old in weights.glob("*.safetensors"):
        old.unlink()
    (weights / "model.safetensors").write_bytes(
        safetensors_bytes({"lm_head.weight": tensor}, {"format": "pt"})
    )
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata["dependencies"]["serving_image"] = SERVING_IMAGE
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    print(f"{weights / 'model.safetensors'}: {rows} x {columns} random F16 values; {SERVING_IMAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
