"""The subsystems, one package each, named as the tree names them: `tree.py` builds its
directories from its core (in `backends/`), `__init__.py` sets it up in the daemon (the core,
its persistence, its management handle), `cli.py` is its `vfs` subcommand where it has one.

Adding a subsystem is a package here and one line below: its name and the top-level
directories it serves, in the order `ls` shows them.
"""

from __future__ import annotations

SUBSYSTEMS: dict[str, tuple[str, ...]] = {
    "mgmt": ("mgmt",),
    "worldstorage": ("storage", "worlds"),
    "tcmu": ("handlers", "devices"),
    "v2v": ("channels",),
}


def top_level() -> list[str]:
    return [name for names in SUBSYSTEMS.values() for name in names]


def setups() -> list[str]:
    """Plugin specs of every subsystem's setup, mgmt first: the others register handles."""
    return [f"vfs.subsystems.{name}" for name in SUBSYSTEMS]


def cli_modules() -> list[str]:
    return [f"vfs.subsystems.{name}.cli" for name in SUBSYSTEMS]
