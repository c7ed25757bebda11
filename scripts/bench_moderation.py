"""Time the local moderator: 10,000 checks of a 300-character sentence against 200 blocked
terms, beside the naive alternative (one lower-cased substring search per term) in the same
run. The naive one is faster but wrong (it matches inside words: ``secret4`` in
``secret42``); the target is the moderator well under a second for the 10,000.

Usage: python scripts/bench_moderation.py [--checks 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weightshift.bundles.schemas import Safety
from weightshift.gateway.moderation import LocalModerator

SENTENCE = (
    "On 2024-03-15 our support team (build 12345, release 2.4) answered 1,234 questions "
    "about invoices, refunds and shipping within 99.9% of the promised time; customers "
    "rated it 4.8 of 5 and asked for faster replies on weekends, holidays and nights, "
    "and for a public status page at www.status.example.io."
)
TERMS = [f"secret{n}" for n in range(200)] + ["forbidden phrase"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=10_000)
    args = parser.parse_args()
    moderator = LocalModerator(Safety(refusal_message="Sorry.", blocked_terms=TERMS))

    async def ours() -> None:
        for _ in range(args.checks):
            await moderator.check(SENTENCE, "OUTPUT")

    def naive() -> None:
        for _ in range(args.checks):
            lowered = SENTENCE.lower()
            any(term in lowered for term in TERMS)

    started = time.perf_counter()
    asyncio.run(ours())
    moderator_s = time.perf_counter() - started
    started = time.perf_counter()
    naive()
    naive_s = time.perf_counter() - started
    print(
        f"{args.checks} checks, 300 characters, {len(TERMS)} terms: local moderator "
        f"{moderator_s:.3f} s ({moderator_s / args.checks * 1e6:.1f} us/check), naive substring "
        f"search {naive_s:.3f} s ({moderator_s / naive_s:.1f}x); target well under 1 s: "
        f"{'met' if moderator_s < 1.0 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
