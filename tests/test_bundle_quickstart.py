"""docs/quickstart.md, run as written: its emulator script as its own process, then every
command of its ``sh`` blocks in a shell, in order, in a fresh folder. A command the page says
exits 1 must exit 1; every other one must succeed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT

PAGE = PROJECT / "docs/quickstart.md"
INSTALL = "python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[dev]'"
EMULATOR = ".venv/bin/python scripts/local_s3.py"


def commands() -> list[str]:
    """Every line of the page's ``sh`` blocks."""
    blocks = re.findall(r"```sh\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


@pytest.fixture
def exports() -> Iterator[dict[str, str]]:
    """The emulator started as the page starts it, and what it printed."""
    process = subprocess.Popen(
        ["bash", "-c", EMULATOR.replace(".venv/bin/python", sys.executable)],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        found: dict[str, str] = {}
        for line in process.stdout:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                found[name] = value
            if line.startswith("# Leave this running"):
                break
        watchdog.cancel()
        yield found
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_page_installs_the_dev_extra_and_starts_the_emulator_with_one_command() -> None:
    assert commands()[:2] == [INSTALL, EMULATOR]


def test_the_page_prints_what_the_emulator_prints(exports: dict[str, str]) -> None:
    shown = re.findall(r"^export (\w+)=", PAGE.read_text(encoding="utf-8"), re.MULTILINE)
    assert shown == list(exports)


def test_the_quickstart_runs_as_written(exports: dict[str, str], tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(exports)
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    for line in commands()[2:]:
        runnable = line.replace(".venv/bin/", f"{bin_dir}/").replace(
            "scripts/", f"{PROJECT}/scripts/"
        )
        done = subprocess.run(
            ["bash", "-c", runnable],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        expected = 1 if "# exits 1" in line else 0
        assert done.returncode == expected, (line, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, line
        runs.append((line, done))

    first, prompt_only = [done for line, done in runs if " bundle publish " in line]
    assert first.stdout.startswith("demo-assistant/v1.0.0-")
    assert prompt_only.stdout.startswith("demo-assistant/v1.1.0-")
    # The prompt goes up, in plain words; the weights are reused, and no meter shows
    # "uploading: 0.0 of 0.0 MiB" for 93 bytes.
    assert re.search(
        r"^weights, tokenizer, .* reused from demo-assistant/v1\.0\.0-[0-9a-f]{12}: 9 files, "
        r"8\.0 MiB; uploaded 1 file, 93 bytes \(system-prompt\)$",
        prompt_only.stderr,
        re.MULTILINE,
    ), prompt_only.stderr
    assert "uploading:" not in prompt_only.stderr
    assert (tmp_path / "pulled/.weightshift/bundle.json").is_file()
