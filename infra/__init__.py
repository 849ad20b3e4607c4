"""Composition root: the ``privmesh`` CLI, the local stack launcher and deployment manifests."""
