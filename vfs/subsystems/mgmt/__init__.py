"""Management handles in the daemon: `mgmt/` over the registry every subsystem and module
registers its handles in, and `vfs`, the daemon's own handle (docs/mgmt.md)."""

from __future__ import annotations

from typing import Any

from vfs.context import Context
from vfs.subsystems.mgmt import metrics, settings
from vfs.subsystems.mgmt.tree import mgmt_dir


def setup(ctx: Context) -> None:
    ctx.root.add("mgmt", mgmt_dir(ctx.mgmt))
    ctx.mgmt.on_added.append(lambda name: ctx.events.publish({"event": "created", "object": f"mgmt/{name}"}))
    ctx.mgmt.on_removed.append(
        lambda name: ctx.events.publish({"event": "removed", "object": f"mgmt/{name}"})
    )

    def on_session(handle: str, event: str, session: Any) -> None:
        kind = "events" if session.listening else "call"
        record = {"event": event, "object": f"mgmt/{handle}", "session": session.id, "kind": kind}
        ctx.events.publish({**record, "pid": session.pid, "uid": session.uid})

    ctx.mgmt.on_session.append(on_session)
    ctx.metrics.add(lambda: metrics.collect(ctx.mgmt))
    settings.setup(ctx)
