"""`weightshift bundle ...` end to end, as a user runs it, against a local S3 emulator server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator, artifact_bucket


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with artifact_bucket() as running:
        yield running


def ws(emulator: Emulator, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(emulator.env())
    return subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_init_publish_list_show_verify_pull_diff(emulator: Emulator, tmp_path: Path) -> None:
    bucket = ["--bucket", emulator.bucket]
    bundle = tmp_path / "bundle"
    assert "Replace before publishing" in ok(
        ws(emulator, "bundle", "init", str(bundle), "--name", "triage-bot")
    )
    assert "valid bundle of triage-bot" in ok(ws(emulator, "bundle", "validate", str(bundle)))

    first = json.loads(
        ok(ws(emulator, "bundle", "publish", str(bundle), "--version", "0.1.0", "--json", *bucket))
    )
    assert first["id"].startswith("triage-bot/v0.1.0-")
    assert first["blobsSkipped"] == 0
    assert first["bytesUploaded"] == first["bytesTotal"]

    (bundle / "prompt/system.txt").write_text("You triage support tickets. Be brief.\n")
    refused = ws(emulator, "bundle", "publish", str(bundle), "--version", "0.1.1", *bucket)
    assert refused.returncode == 2
    assert "needs at least MINOR" in " ".join(refused.stderr.split())
    assert "Traceback" not in refused.stderr

    dry = json.loads(
        ok(
            ws(
                emulator,
                "bundle",
                "publish",
                str(bundle),
                "--bump",
                "auto",
                "--dry-run",
                "--json",
                *bucket,
            )
        )
    )
    assert dry["requiredBump"] == "MINOR"
    assert dry["blobsToUpload"] == 1
    second_id = ok(
        ws(emulator, "bundle", "publish", str(bundle), "--bump", "auto", *bucket)
    ).strip()
    assert second_id.startswith("triage-bot/v0.2.0-")
    assert second_id == dry["id"]

    listing = ok(ws(emulator, "bundle", "list", "triage-bot", *bucket))
    assert [line.split()[0] for line in listing.splitlines()] == [first["id"], second_id]

    shown = json.loads(ok(ws(emulator, "bundle", "show", second_id, "--json", *bucket)))
    assert shown["metadata"]["name"] == "triage-bot"
    assert "prompt/system.txt" in [f["path"] for f in shown["files"]]

    assert ok(ws(emulator, "bundle", "verify", second_id, *bucket)).strip().endswith(": OK")

    dest = tmp_path / "pulled"
    ok(ws(emulator, "bundle", "pull", second_id, str(dest), *bucket))
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (dest / path.relative_to(bundle)).read_bytes() == path.read_bytes()

    diff = ok(ws(emulator, "bundle", "diff", first["id"], second_id, *bucket))
    assert "~ system-prompt: prompt/system.txt" in diff
    assert "required bump: MINOR" in diff


def test_bad_input_is_one_paragraph_and_exit_2(emulator: Emulator, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.json").write_text("{")
    result = ws(
        emulator, "bundle", "publish", str(bad), "--version", "1.0.0", "--bucket", emulator.bucket
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "metadata.json: not valid JSON" in message
    assert "model/weights/: missing or empty" in message
    assert "nothing was written" in message
    assert "Traceback" not in result.stderr
    no_bucket = ws(emulator, "bundle", "list", "x")
    assert no_bucket.returncode == 2
    assert "pass --bucket NAME or set WEIGHTSHIFT_BUCKET" in no_bucket.stderr
    malformed = ws(emulator, "bundle", "verify", "triage-bot/1.0", "--bucket", emulator.bucket)
    assert malformed.returncode == 2
    assert "is not a bundle id" in malformed.stderr
