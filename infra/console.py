"""The CLI's two consoles: results on stdout, progress and errors on stderr."""

from rich.console import Console

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
