"""The command line's progress bar: one line on stderr, redrawn in place, drawn only
when stderr is a terminal (a log or a pipe gets the final report alone)."""

from __future__ import annotations

import sys

BAR_WIDTH = 30


def on_terminal() -> bool:
    return sys.stderr.isatty()


def draw(label: str, done: int, total: int | None, suffix: str = "") -> None:
    """``label [####......] done/total suffix``; ``total`` None: not known yet."""
    if not on_terminal():
        return
    filled = min(BAR_WIDTH, BAR_WIDTH * done // max(total or done, 1))
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                     f"{done}/{total if total is not None else '?'}{suffix}")
    sys.stderr.flush()


def finish() -> None:
    """End the bar's line."""
    if on_terminal():
        sys.stderr.write("\n")
