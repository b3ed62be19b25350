"""Management handles in the daemon: `mgmt/` over the registry every subsystem and module
registers its handles in, and `vfs`, the daemon's own handle (docs/mgmt.md)."""

from __future__ import annotations

from vfs.context import Context
from vfs.subsystems.mgmt import metrics, settings
from vfs.subsystems.mgmt.tree import mgmt_dir


def setup(ctx: Context) -> None:
    ctx.root.add("mgmt", mgmt_dir(ctx.mgmt))
    ctx.mgmt.on_removed.append(
        lambda name: ctx.events.publish({"event": "removed", "object": f"mgmt/{name}"})
    )
    ctx.metrics.add(lambda: metrics.collect(ctx.mgmt))
    settings.setup(ctx)
