"""Ctrl-C during `weightshift synth`, `plan` and `policy check`, as a person presses it: the
real command in its own process group, SIGINT to the group (what a terminal sends) once the
program is registering resources. It exits 130 with one line, no traceback and no asyncio
report, and no worker process is left; `plan` and `policy check` both in forked workers
and in this process (``WEIGHTSHIFT_SERIAL=1``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
BUSY = "registering resources"
WRAPPER = f"""
import os, signal, sys
# A shell starts a command with Ctrl-C raising KeyboardInterrupt; a test runner's worker may
# not pass that on to its children.
signal.signal(signal.SIGINT, signal.default_int_handler)
from weightshift.preview import synth

register = synth.OfflineMocks.new_resource
said = []

def new_resource(self, args):
    # Once per process (the command, or each forked worker): the program is running.
    if not said:
        said.append(True)
        os.write(2, b"{BUSY}\\n")
    return register(self, args)

synth.OfflineMocks.new_resource = new_resource
from weightshift.cli import main
sys.exit(main(sys.argv[1:]))
"""


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux: its threads' children lists)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ctrl_c_when_busy(args: list[str], serial: bool) -> tuple[int, list[str], list[int], float]:
    """Run the command, press Ctrl-C once it registers resources; its exit status, its
    stderr lines after the first busy one, the worker processes it had when interrupted,
    and the seconds from Ctrl-C to its exit."""
    env = {k: v for k, v in os.environ.items() if k != "WEIGHTSHIFT_SERIAL"}
    if serial:
        env["WEIGHTSHIFT_SERIAL"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, *args],
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    watchdog = threading.Timer(180, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if line.rstrip("\n") == BUSY:
                break
        else:
            pytest.fail(f"{args} ended before registering a resource: {process.wait()}")
        workers = children(process.pid)
        pressed = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        try:
            status = process.wait(timeout=20)  # a hang guard, not a time bound
        except subprocess.TimeoutExpired:
            pytest.fail(f"{args}: still running 20 s after Ctrl-C")
        elapsed = time.monotonic() - pressed
        rest = [line for line in process.stderr.read().splitlines() if line != BUSY]
        return status, rest, workers, elapsed
    finally:
        watchdog.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.parametrize(
    ("args", "serial"),
    [
        (["synth"], True),
        (["plan"], False),
        (["plan"], True),
        (["policy", "check"], False),
        (["policy", "check"], True),
    ],
    ids=["synth", "plan-workers", "plan-serial", "policy-check-workers", "policy-check-serial"],
)
def test_ctrl_c_exits_130_with_one_line_and_no_worker_left(args: list[str], serial: bool) -> None:
    if not serial and (os.cpu_count() or 1) < 2:
        pytest.skip("one core: synthesis never forks workers")
    status, lines, workers, elapsed = ctrl_c_when_busy(args, serial)
    print(f"{' '.join(args)} ({'serial' if serial else 'workers'}): exit {elapsed:.2f} s")
    assert status == 130, lines
    assert lines == [f"weightshift {args[0]}: interrupted; nothing more was done."]
    if not serial:
        assert workers, "the command forked no workers"
    assert not [pid for pid in workers if running(pid)]
