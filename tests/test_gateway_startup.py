"""What stops the gateway at start, before it logs "serving": an upstream that is not a URL,
a ``--bundle-id`` that does not name the folder, a port in use (real processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any

from tests.gateway_harness import PROJECT, free_port

EXAMPLE = PROJECT / "bundles/support-assistant/v1.5.0"
BUNDLE_ID = "support-assistant/v1.5.0-d80719af096e"


def start(*extra: str, upstream: str = "http://127.0.0.1:9", listen: str | None = None) -> Any:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "weightshift.cli",
            "gateway",
            "--bundle",
            str(EXAMPLE),
            "--upstream",
            upstream,
            "--colour",
            "green",
            "--metrics",
            "off",
            "--listen",
            listen or f"127.0.0.1:{free_port()}",
            *extra,
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ),
    )


def test_an_upstream_that_is_not_a_url_stops_the_gateway_naming_the_option_and_the_fix() -> None:
    for wrong in ("notaurl", "ftp://127.0.0.1:8080", "http://127.0.0.1:99999", "http://"):
        process = start("--bundle-id", BUNDLE_ID, upstream=wrong)
        assert process.returncode == 2, (wrong, process.stderr)
        said = " ".join(process.stderr.split())
        assert f"--upstream {wrong!r}" in said
        assert "http://127.0.0.1:8080" in said
        assert "serving" not in said
        assert "Traceback" not in said


def test_a_bundle_id_that_does_not_name_the_folder_stops_the_gateway_naming_both() -> None:
    process = start("--bundle-id", "support-assistant/v1.5.0-0123456789ab")
    assert process.returncode == 2, process.stderr
    said = " ".join(process.stderr.split())
    assert "support-assistant/v1.5.0-0123456789ab" in said
    assert BUNDLE_ID in said  # the id the folder's digest gives
    assert "serving" not in said
    assert "Traceback" not in said


def test_a_port_in_use_is_one_paragraph_and_exit_2_before_serving() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start("--bundle-id", BUNDLE_ID, listen=f"127.0.0.1:{port}")
    assert process.returncode == 2, process.stderr
    said = " ".join(process.stderr.split())
    assert f"--listen 127.0.0.1:{port}" in said
    assert "serving" not in said
    assert "Traceback" not in said
