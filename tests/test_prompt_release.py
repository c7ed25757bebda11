"""A prompt-only release, end to end with real processes: publish a bundle, publish a new
system prompt as a MINOR release, pull each as the pod's init container does, serve each with
the gateway, and see the model receive the prompt of the version that is served.

The bucket is moto's server (Object Lock, SSE-KMS) on loopback; `weightshift bundle publish`
and `weightshift bundle pull --serving-layout` run as the CLI; the gateway and the model server
are processes too."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.emulator import Emulator, artifact_bucket
from tests.gateway_harness import PROJECT, Upstream, gateway, request

EXAMPLE = PROJECT / "bundles/support-assistant/v1.4.2"
NEW_PROMPT = (
    "You are the support assistant for Example Corp. Cite the help centre article you used.\n"
)


def cli(emulator: Emulator, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "weightshift.cli", *args, "--bucket", emulator.bucket, "--json"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **emulator.env()},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_prompt_only_release_reaches_the_model_through_the_gateway(
    tmp_path: Path, model: Upstream
) -> None:
    source = tmp_path / "bundle"
    shutil.copytree(EXAMPLE, source)
    with artifact_bucket() as emulator:
        # The example's weights are init's placeholders: publishable for tests only.
        first = cli(
            emulator, "bundle", "publish", str(source), "--version", "1.4.2", "--allow-placeholders"
        )
        (source / "prompt/system.txt").write_text(NEW_PROMPT)
        second = cli(
            emulator, "bundle", "publish", str(source), "--bump", "auto", "--allow-placeholders"
        )
        # MINOR: a prompt changes behaviour; one blob (the prompt) and the manifest written.
        assert second["id"].startswith("support-assistant/v1.5.0-")
        assert (second["blobsUploaded"], second["bytesUploaded"]) == (1, len(NEW_PROMPT))
        pulled = {}
        for release in (first, second):
            dest = tmp_path / "pods" / release["id"].replace("/", "_") / "current"
            cli(emulator, "bundle", "pull", release["id"], str(dest), "--serving-layout")
            pulled[release["id"]] = dest
    old, new = pulled[first["id"]], pulled[second["id"]]
    # The weights the server loads are the same bytes: only the prompt moved.
    weights = sorted(p.relative_to(old) for p in (old / "model/weights").rglob("*") if p.is_file())
    assert weights
    assert [digest(old / w) for w in weights] == [digest(new / w) for w in weights]

    for release, root, prompt in (
        (first, old, (EXAMPLE / "prompt/system.txt").read_text().strip()),
        (second, new, NEW_PROMPT.strip()),
    ):
        model.clear()
        # No --bundle-id: the gateway names itself by what `bundle pull` recorded.
        with gateway(root, model.url, extra=["--metrics", "off"]) as served:
            status, headers, body = request(
                f"{served.url}/v1/chat/completions",
                {
                    "model": "support-assistant",
                    "messages": [{"role": "user", "content": "Where is my invoice?"}],
                },
            )
        assert status == 200, body
        assert headers["x-weightshift-version"] == release["id"]
        (seen,) = model.received()
        assert seen["body"]["messages"][0] == {"role": "system", "content": prompt}
        assert seen["body"]["messages"][-1] == {"role": "user", "content": "Where is my invoice?"}
