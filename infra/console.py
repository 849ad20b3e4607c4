"""The CLI's two consoles: results on stdout, progress and errors on stderr.

Piped or redirected, a console is not cut at 80 columns (Rich's default for a stream that
is no terminal): it is as wide as ``PIPED_WIDTH`` unless ``COLUMNS`` says otherwise, so
``privmesh ... | grep`` sees whole rows. ``print_json`` writes machine output for
``--json``: plain JSON text, no markup, no highlighting, no wrapping. ``progress`` shows
what a slow step is doing on stderr, never on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console

PIPED_WIDTH = 10_000  # wider than any row a command prints: tables keep their natural width


def _width(stream: IO[str]) -> int | None:
    """``None`` (Rich's own choice) on a terminal or when ``COLUMNS`` is set, else wide."""
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: treat as piped
        terminal = False
    return None if terminal or os.environ.get("COLUMNS") else PIPED_WIDTH


console = Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (``--json`` output: stable keys, no markup)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(text: str, *, piped: bool) -> Iterator[None]:
    """Say on stderr that a slow step (``text``) runs: a spinner with the elapsed seconds
    on a terminal, then the step's time; when stderr is piped or redirected, the line
    ``text ...`` as the step starts if ``piped`` (a log shows where a long command is),
    nothing otherwise (a script reading stderr sees only the error line)."""
    start = time.monotonic()
    if not err.is_terminal:
        if piped:
            err.print(f"{text} ...")
        yield
        return
    with err.status(f"{text} ..."):
        yield
    err.print(f"[dim]{text}: {time.monotonic() - start:.1f} s[/]")
