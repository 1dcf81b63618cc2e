"""Output for people in a terminal: colour when it is one, tables, times and clipped text.

Colour follows ``--color``: ``auto`` (the default) colours only a terminal, and not when
``NO_COLOR`` is set (no-color.org); ``always`` and ``never`` decide regardless.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

#: ANSI styles by name.
_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
#: The style of each instance or node status.
STATUS_STYLES = {
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
    "running": "yellow",
    "pending": "dim",
    "skipped": "dim",
}


def add_color_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--color``."""
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto (a terminal, unless NO_COLOR is set), always or never",
    )


def use_color(args: argparse.Namespace, stream: TextIO) -> bool:
    """Whether to colour what goes to ``stream``."""
    choice = getattr(args, "color", "auto")
    if choice != "auto":
        return bool(choice == "always")
    return stream.isatty() and not os.environ.get("NO_COLOR")


def paint(text: str, style: str | None, color: bool) -> str:
    """``text`` in ``style`` (a name of _STYLES) when ``color``; as it is otherwise."""
    if not color or style is None or not text:
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"


def width(stream: TextIO) -> int:
    """The terminal's width in columns (80 when it is not one)."""
    if not stream.isatty():
        return 80
    return shutil.get_terminal_size((80, 24)).columns


def clip(text: str | None, limit: int) -> str:
    """One line of at most ``limit`` characters: whitespace runs become one space, and what
    does not fit becomes '…'."""
    if text is None:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: max(limit - 1, 0)] + "…"


def duration(seconds: float) -> str:
    """``seconds`` for people: 0.8s, 12.4s, 3m05s, 2h07m, 3d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def timestamp(moment: datetime | None) -> str:
    """A time as the session's time zone gives it, to the second; '-' for none."""
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    styles: Sequence[Sequence[str | None]],
    color: bool,
) -> str:
    """Columns aligned on their widest cell; the last column is not padded."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str], cell_styles: Sequence[str | None]) -> str:
        out = []
        for i, (cell, style) in enumerate(zip(cells, cell_styles, strict=True)):
            padded = cell if i == len(cells) - 1 else cell.ljust(widths[i])
            out.append(paint(padded, style, color))
        return "  ".join(out).rstrip()

    lines = [line(header, ["bold"] * len(header))]
    lines += [line(r, s) for r, s in zip(rows, styles, strict=True)]
    return "\n".join(lines)
