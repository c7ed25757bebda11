"""Ctrl-C during `weightshift bundle publish` and `pull`, as a person presses it: the real
command in its own process against the S3 emulator server, stopped by SIGINT mid-transfer.
It exits 130 with one line saying what was kept, and running it again resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulator import Emulator, artifact_bucket
from tests.test_bundle import checkpoint, make_publishable
from weightshift.bundles.skeleton import init_bundle

NAME = "interrupt-demo"
SLOW = """
import signal, sys, time
# A shell starts a command with Ctrl-C raising KeyboardInterrupt; a test runner's worker may
# not pass that on to its children.
signal.signal(signal.SIGINT, signal.default_int_handler)
import weightshift.console as console
import weightshift.bundles.store as store

console.PLAIN_EVERY = 0.05  # a progress line at almost every step, not every 10 s
fast = store.default_client

def slow(workers=16):
    client = fast(workers)
    for call in ("PutObject", "UploadPart", "GetObject"):
        client.meta.events.register(f"before-send.s3.{call}", lambda **_: time.sleep(0.25))
    return client

store.default_client = slow
from weightshift.cli import main
sys.exit(main(sys.argv[1:]))
"""
_SIZE = r"[\d,.]+ (?:bytes?|KiB|MiB|GiB)"
PROGRESS = re.compile(rf"^(hashing|confirming|uploading|pulling): {_SIZE} of {_SIZE}")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with artifact_bucket("weightshift-interrupt") as running:
        yield running


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interrupt") / "bundle"
    init_bundle(root, NAME)
    make_publishable(
        root,
        {f"model-{i:05d}-of-00004.safetensors": checkpoint(bytes([i]) * 2**20) for i in range(4)},
    )
    return root


def environment(emulator: Emulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **emulator.env(), "WEIGHTSHIFT_BUCKET": emulator.bucket}


def ctrl_c_after_progress(emulator: Emulator, label: str, *args: str) -> tuple[int, list[str]]:
    """Run the command slowed down, press Ctrl-C at its first ``label`` progress line; its
    exit status and every line it wrote to stderr."""
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW, *args, "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(emulator),
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        lines: list[str] = []
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(f"{label}: "):
                process.send_signal(signal.SIGINT)
                break
        lines += process.stderr.read().splitlines()
        return process.wait(), lines
    finally:
        watchdog.cancel()


def run(emulator: Emulator, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args],
        capture_output=True,
        text=True,
        env=environment(emulator),
        timeout=120,
        check=False,
    )


def only_progress_then(lines: list[str], pattern: str) -> re.Match[str]:
    """Progress lines, then exactly one line matching ``pattern``: nothing after it."""
    *progress, last = lines
    assert progress, lines
    assert all(PROGRESS.match(line) for line in progress), lines
    assert "Traceback" not in "\n".join(lines)
    found = re.fullmatch(pattern, last)
    assert found, lines
    return found


def test_ctrl_c_during_publish_keeps_the_uploaded_blobs_and_the_next_run_resumes(
    emulator: Emulator, bundle: Path
) -> None:
    status, lines = ctrl_c_after_progress(
        emulator, "uploading", "bundle", "publish", str(bundle), "--version", "1.0.0"
    )
    assert status == 130
    found = only_progress_then(
        lines,
        rf"interrupted: (\d+) of (\d+) blobs uploaded and kept \(content-addressed\); "
        rf"{NAME}/v1\.0\.0-\w+ was not published\. Run the same command again to resume: only "
        r"what is missing is uploaded\.",
    )
    kept, total = int(found[1]), int(found[2])
    assert 0 < kept < total
    assert json.loads(run(emulator, "bundle", "list", NAME, "--json").stdout) == []

    resumed = run(emulator, "bundle", "publish", str(bundle), "--version", "1.0.0", "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert (result["blobsSkipped"], result["blobsUploaded"]) == (kept, total - kept)
    assert run(emulator, "bundle", "verify", result["id"]).returncode == 0


def test_ctrl_c_during_pull_writes_nothing_to_the_destination_and_the_next_run_resumes(
    emulator: Emulator, bundle: Path, tmp_path: Path
) -> None:
    published = run(emulator, "bundle", "publish", str(bundle), "--bump", "auto", "--json")
    if published.returncode == 2:  # the publish test ran first, in this process
        assert "Nothing changed since" in published.stderr
    ref = f"{NAME}/v1.0.0"
    dest = tmp_path / "pulled"
    status, lines = ctrl_c_after_progress(emulator, "pulling", "bundle", "pull", ref, str(dest))
    assert status == 130
    assert lines[0].startswith(f"{ref} is {ref}-")  # the id resolved, before any progress
    found = only_progress_then(
        lines[1:],
        rf"interrupted: (\d+) of \d+ files downloaded and checked, kept in "
        rf"{re.escape(str(tmp_path))}/\.pulled\.partial-\w+; nothing was written to "
        rf"{re.escape(str(dest))}\. Run the same command again to resume: what was kept is "
        r"hashed again and only the rest is downloaded\.",
    )
    assert int(found[1]) > 0
    assert not dest.exists()

    resumed = run(emulator, "bundle", "pull", ref, str(dest), "--json")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["bytesResumed"] > 0
    assert result["bytesResumed"] + result["bytesDownloaded"] == result["bytes"]
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (dest / path.relative_to(bundle)).read_bytes() == path.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]
