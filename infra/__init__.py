"""Composition root: the ``privmesh`` CLI, the local stack launcher and deployment manifests."""

import warnings

# kafka-python reads its protocol schemas with importlib.resources' deprecated helpers at
# import: noise on every command's stderr, and a non-JSON line in every worker log.
warnings.filterwarnings("ignore", message="(read_text|open_text) is deprecated")
