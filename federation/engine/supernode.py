"""``python -m federation.engine.supernode [flower-supernode options]``.

Flower's own ``flower-supernode`` (every option as documented by Flower), with the
waits of ``federation.engine.tuning`` shortened to ``PRIVMESH_FEDERATION_POLL_SECONDS``.
privmesh runs it with ``--isolation process`` next to a warm ClientApp runner
(``federation.engine.runner``) on each domain's host.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Tune this process, then hand over to Flower's SuperNode."""
    from federation.engine.tuning import tune
    from federation.settings import get_federation_settings

    tune(get_federation_settings().poll_seconds, supernode=True)
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
