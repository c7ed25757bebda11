"""What the command line prints, in one place: tables, progress, error paragraphs.

Built on rich. Three rules:

- **stdout is the result, stderr is for people.** Tables and ``--json`` documents go to
  stdout; progress, notes and errors go to stderr, so ``--json`` output pipes into ``jq``.
- **Fit the terminal, never break what people copy.** Tables take the terminal's width
  (100 columns when not a terminal, ``COLUMNS`` honoured). Error paragraphs wrap between
  words only: an identifier, ARN, URL, path or bundle id is never split across lines (a
  longer one overflows its line instead), and lines that are already laid out (a YAML
  error's source line and caret, indented lists) are kept as written.
- **Progress is visible everywhere.** On a terminal a live bar (bytes, rate, time left); in
  CI logs, where there is no terminal, a plain line at most every ``PLAIN_EVERY`` seconds and
  at the end, so a long hash or upload never looks like a hang.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.filesize import pick_unit_and_suffix
from rich.progress import (
    BarColumn,
    DownloadColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

PLAIN_WIDTH = 100
"""Width when the output is not a terminal (logs, pipes)."""
PLAIN_EVERY = 10.0
"""Seconds between progress lines when the output is not a terminal."""


def width(stream: TextIO | None = None) -> int:
    """The terminal's width, ``COLUMNS`` if set, else ``PLAIN_WIDTH``."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    stream = stream or sys.stdout
    try:
        if stream.isatty():
            return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        pass
    return PLAIN_WIDTH


def paragraph(message: str, columns: int | None = None, indent: str = "  ") -> str:
    """``message`` wrapped to ``columns`` between words only.

    Each line of ``message`` is its own paragraph. A line that starts with whitespace or a
    caret line (``^``), as a YAML error shows its source, is kept as it is."""
    limit = max(20, (columns or width(sys.stderr)) - 1)
    out: list[str] = []
    for number, line in enumerate(message.splitlines() or [""]):
        if line[:1].isspace() or line.strip().startswith("^") or not line.strip():
            out.append(line.rstrip())
            continue
        out.append(
            textwrap.fill(
                " ".join(line.split()),
                width=limit,
                subsequent_indent=indent,
                initial_indent="" if number == 0 else indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)


def table_text(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    width_: int | None = None,
    no_wrap: Sequence[str] = (),
    max_widths: dict[str, int] | None = None,
) -> str:
    """``rows`` under ``columns`` as text ``width_`` wide (default: the terminal's). Columns
    named in ``no_wrap`` (ids, versions) are never wrapped; the others wrap between words."""
    buffer = io.StringIO()
    out = Console(file=buffer, width=width_ or width(), highlight=False, markup=False, emoji=False)
    grid = Table(
        title=title,
        title_justify="left",
        box=None,
        pad_edge=False,
        header_style="",
        show_edge=False,
    )
    for name in columns:
        grid.add_column(
            name,
            no_wrap=name in no_wrap,
            overflow="fold",
            max_width=(max_widths or {}).get(name),
        )
    for row in rows:
        grid.add_row(*row)
    out.print(grid)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
    stream: TextIO | None = None,
    no_wrap: Sequence[str] = (),
) -> None:
    """Print ``table_text`` to ``stream`` (stdout), fitted to its width."""
    stream = stream or sys.stdout
    print(
        table_text(columns, rows, title=title, width_=width(stream), no_wrap=no_wrap),
        file=stream,
    )


class Progress:
    """Bytes done of a total: a live bar on a terminal, plain periodic lines otherwise.

    ``add`` may be called from many threads. ``close`` ends it (the bar stays on screen);
    after ``close`` nothing more is printed, whatever is still added (an interrupted
    upload's workers may still be finishing)."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.live = _isatty(self.stream)
        self.started = time.monotonic()
        self._printed = self.started
        self._lock = threading.Lock()
        self._closed = False
        self._bar: RichProgress | None = None
        if self.live:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream, width=width(self.stream)),
                transient=False,
            )
            self._task = self._bar.add_task(label, total=self.total)
            self._bar.start()

    def add(self, amount: int) -> None:
        with self._lock:
            if self._closed:
                return
            self.done += amount
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done)
                return
            now = time.monotonic()
            if now - self._printed >= PLAIN_EVERY:
                self._printed = now
                self._line(now)

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.started, 1e-6)
        self.stream.write(
            f"{self.label}: {byte_size(self.done)} of {byte_size(self.total)} "
            f"({100 * self.done / self.total:.0f} %), {byte_size(int(rate))}/s\n"
        )
        self.stream.flush()

    def close(self, *, completed: bool = True) -> None:
        """Stop drawing; ``completed``: print the final figures (not after an interrupt)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._bar is not None:
                self._bar.stop()
            elif completed and self.done:
                self._line(time.monotonic())


def byte_size(count: int) -> str:
    """A byte count for people: 93 bytes, 4.1 KiB, 3.1 GiB."""
    if count < 1024:
        return f"{count:,} byte{'' if count == 1 else 's'}"
    units = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"]
    unit, suffix = pick_unit_and_suffix(count, units, 1024)
    return f"{count / unit:,.1f} {suffix}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
