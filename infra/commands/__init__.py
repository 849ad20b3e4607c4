"""Sub-commands of the ``privmesh`` CLI, one module per concern."""
