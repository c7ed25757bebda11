"""Terminal screenshots for the docs: each command runs in a real tmux pane of a fixed size,
the pane is captured with its colours (``tmux capture-pane -e``) and saved as an SVG with
rich. What the docs show is what a terminal of that width shows.

Usage: python scripts/screenshots.py [--width 120] [--out docs/images]
Needs tmux (and the dev extra, for the local S3 emulator). Writes plan-terminal.svg
(``weightshift plan``), plan-narrow.svg (the same at 80 columns) and bundle-session.svg
(``bundle list`` and ``bundle diff`` after two publishes to the local emulator), each also as
a .png (the same text drawn in DejaVu Sans Mono, without colours) to look at anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont
from rich.console import Console
from rich.text import Text

PROJECT = Path(__file__).resolve().parent.parent
WEIGHTSHIFT = Path(sys.executable).parent / "weightshift"
DONE = "__screenshot_done__"


def capture(command: str, columns: int, rows: int = 60, timeout: float = 120) -> str:
    """``command``'s output as a ``columns`` x ``rows`` tmux pane shows it, with colours."""
    session = f"ws-{uuid.uuid4().hex[:8]}"
    shell = f"cd {shlex.quote(str(PROJECT))} && {command}; echo {DONE}; sleep 600"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", str(columns), "-y", str(rows), shell],
        check=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pane = subprocess.run(
                ["tmux", "capture-pane", "-p", "-e", "-t", session],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            if DONE in pane:
                return pane.split(DONE)[0].rstrip() + "\n"
            time.sleep(0.5)
        raise TimeoutError(f"{command!r} did not finish in {timeout:g} s")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)


def save(text: str, columns: int, title: str, path: Path) -> None:
    """``text`` (with ANSI colours) as an SVG terminal (rich) and a PNG beside it."""
    console = Console(record=True, width=columns, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(Text.from_ansi(f"$ {title}\n{text}"), soft_wrap=True)
    console.save_svg(str(path), title=title)
    plain = Text.from_ansi(f"$ {title}\n{text}").plain.splitlines()
    font_file = Path(matplotlib.get_data_path()) / "fonts/ttf/DejaVuSansMono.ttf"
    font = ImageFont.truetype(str(font_file), 15)
    cell_w, cell_h = round(font.getbbox("M")[2]), 19
    image = Image.new("RGB", (cell_w * columns + 24, cell_h * len(plain) + 24), "#1e1e1e")
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(plain):
        draw.text((12, 12 + row * cell_h), line, font=font, fill="#e0e0e0")
    image.save(path.with_suffix(".png"))


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """The quickstart's emulator (scripts/local_s3.py): its ``export`` lines as one string."""
    server = subprocess.Popen(
        [sys.executable, str(PROJECT / "scripts/local_s3.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        exports = []
        for line in server.stdout:
            if line.startswith("export "):
                exports.append(line.strip())
            if line.startswith("export WEIGHTSHIFT_BUCKET"):
                break
        yield "; ".join(exports)
    finally:
        server.terminate()
        server.wait(10)


def bundle_session(exports: str, folder: Path) -> str:
    """Two releases published to the emulator, then the commands the screenshot shows."""
    ws = shlex.quote(str(WEIGHTSHIFT))
    demo = shlex.quote(str(folder / "demo"))
    setup = " && ".join(
        [
            exports,
            f"{ws} bundle init {demo} --name demo-assistant >/dev/null",
            f"{shlex.quote(sys.executable)} scripts/demo_weights.py {demo} >/dev/null",
            f"{ws} bundle publish {demo} --bump auto >/dev/null 2>&1",
            f"echo 'Answer in two sentences at most.' >> {demo}/prompt/system.txt",
            f"sed -i 's/0.7/0.3/' {demo}/config/generation.json",
            f"{ws} bundle publish {demo} --bump auto >/dev/null 2>&1",
            "clear",
        ]
    )
    return (
        f"{setup}; echo '$ weightshift bundle list demo-assistant'; "
        f"{ws} bundle list demo-assistant; "
        "echo '$ weightshift bundle diff demo-assistant/v1.0.0 demo-assistant/v1.1.0'; "
        f"{ws} bundle diff demo-assistant/v1.0.0 demo-assistant/v1.1.0"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--width", type=int, default=120)
    parser.add_argument("--out", type=Path, default=PROJECT / "docs/images")
    args = parser.parse_args()
    if shutil.which("tmux") is None:
        print("screenshots: tmux is not installed", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    shots = [
        ("plan-terminal.svg", "weightshift plan", args.width),
        ("plan-narrow.svg", "weightshift plan", 80),
    ]
    for name, command, columns in shots:
        text = capture(f"{shlex.quote(str(WEIGHTSHIFT))} {command.split(' ', 1)[1]}", columns)
        save(text, columns, command, args.out / name)
        print(f"{args.out / name}: {command} at {columns} columns", file=sys.stderr)
    with local_s3() as exports, tempfile.TemporaryDirectory() as folder:
        text = capture(bundle_session(exports, Path(folder)), args.width)
        name = "bundle-session.svg"
        save(text, args.width, "weightshift bundle ... (local S3 emulator)", args.out / name)
        print(f"{args.out / name}: bundle list and diff at {args.width} columns", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
