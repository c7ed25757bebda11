"""Render the shadow report for a text-bearing fixture and look at it in headless Chromium.

Writes the fixture's records, runs the report (embedded engine) into OUT/report, then has
Chromium take a screenshot (OUT/shadow-report.png) and dump the DOM it built
(OUT/dom.html), so a test (tests/test_shadow_report_page.py) or a person can check that the
page opens, its plots show, a divergent pair stands side by side and a record's
``<script>`` shows as text.

    .venv/bin/python scripts/shadow_report_screenshot.py OUT [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from weightshift.shadow.page import write
from weightshift.shadow.pipeline import Options, report_from
from weightshift.shadow.synthetic import text_records, write_jsonl_gz

WINDOW = "1280,2400"


def chromium_flags(profile: Path) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an empty or new folder for the results")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--window", default=WINDOW, help=f"WIDTH,HEIGHT (default {WINDOW})")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    records = args.out / "records"
    write_jsonl_gz(
        records / "model=support-assistant/date=2025-06-01/hour=12/fixture.jsonl.gz",
        list(text_records()),
    )
    report = report_from(Options(records=str(records)))
    write(report, args.out / "report")
    page = (args.out / "report" / "report.html").resolve()
    with tempfile.TemporaryDirectory(prefix="weightshift-chromium-") as profile:
        flags = chromium_flags(Path(profile))
        subprocess.run(
            [
                args.chromium,
                *flags,
                f"--screenshot={args.out / 'shadow-report.png'}",
                f"--window-size={args.window}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        dom = subprocess.run(
            [args.chromium, *flags, "--dump-dom", page.as_uri()],
            check=True,
            capture_output=True,
            timeout=120,
        )
    (args.out / "dom.html").write_bytes(dom.stdout)
    print(f"{args.out / 'shadow-report.png'}\n{args.out / 'dom.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
