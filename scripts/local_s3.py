"""A local S3 emulator to try the bundle commands without an AWS account (docs/quickstart.md).

Runs moto's S3 server on a free port of 127.0.0.1 with one artifact bucket made as the
ArtifactStore component makes it: versioned, Object Lock with a COMPLIANCE default retention,
SSE-KMS with a bucket key (``tests/emulator.py``, which the tests use too). Prints the
environment that points weightshift (any AWS SDK) at it, as shell lines to paste. Everything
lives in memory: Ctrl-C stops the server and forgets every object.

Usage: .venv/bin/python scripts/local_s3.py [--bucket weightshift-local] [--days 1]
Needs the dev extra: pip install -e '.[dev]'.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.emulator import artifact_bucket


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bucket", default="weightshift-local", help="default weightshift-local")
    parser.add_argument(
        "--days", type=int, default=1, help="Object Lock default retention in days (default 1)"
    )
    args = parser.parse_args()
    try:
        with artifact_bucket(args.bucket, args.days) as emulator:
            print(
                f"# S3 emulator on {emulator.endpoint}: bucket {args.bucket} (versioning, Object "
                f"Lock COMPLIANCE {args.days} day(s), SSE-KMS). Paste into the shell that runs "
                "weightshift:"
            )
            for name, value in {**emulator.env(), "WEIGHTSHIFT_BUCKET": args.bucket}.items():
                print(f"export {name}={value}")
            print("# Leave this running; Ctrl-C stops it and forgets every object.", flush=True)
            threading.Event().wait()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
