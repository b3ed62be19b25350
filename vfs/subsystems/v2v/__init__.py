"""v2v in the daemon: the channel core, `channels/`, channel persistence, and the `v2v`
management handle (one instance per channel; every endpoint state change is a callback)."""

from __future__ import annotations

import logging
from typing import Any

from backends.errors import VfsError
from backends.mgmt import (
    ApiSignature,
    CallbackInfo,
    Envelope,
    KeyType,
    Location,
    MgmtError,
    Param,
    ParmType,
    Status,
)
from backends.v2v import Channel, End, V2v
from vfs.context import Context
from vfs.subsystems.mgmt.instances import Instances
from vfs.subsystems.v2v import metrics
from vfs.subsystems.v2v.tree import channels_dir

log = logging.getLogger("vfs.v2v")

STATE = 16
SIGNATURE = ApiSignature(
    "v2v",
    "vfs",
    (1, 0, 0, 0),
    (
        CallbackInfo(
            STATE,
            "state",
            Location.USER,
            synchronous=False,
            params=(
                Param(ParmType.IN, 32, "str", "channel"),
                Param(ParmType.IN, 16, "str", "end"),
                Param(ParmType.IN, 16, "str", "state"),
                Param(ParmType.IN, 16, "str", "remote_state"),
            ),
        ),
    ),
)


def setup(ctx: Context) -> V2v:
    handle = ctx.mgmt.init(SIGNATURE, max_instances=None)
    instances = Instances(handle)

    def on_state(ch: Channel, end: End) -> None:
        instance = instances.id(ch.name)
        handle.invoke(
            Envelope(instance_id=instance), STATE, ch.name, end.role, end.state.label, end.remote_state.label
        )

    core = V2v(
        ctx.nursery,
        on_change=lambda ch: ctx.store.save("channels", ch.name, ch.definition()),
        on_forget=lambda name: ctx.store.delete("channels", name),
        on_state=on_state,
        on_event=lambda r: ctx.events.publish({"object": f"channels/{r['channel']}/{r['end']}", **r}),
    )

    def create(name: str) -> Channel:
        ch = core.create(name)
        instances.add(name)
        ctx.events.publish({"event": "created", "object": f"channels/{name}"})
        return ch

    def destroy(name: str) -> None:
        core.destroy(name)
        instances.remove(name)
        ctx.events.publish({"event": "removed", "object": f"channels/{name}"})

    def set_limit(_: Any, value: int) -> None:
        if value < 0:
            raise MgmtError(Status.BAD_PARAM, f"maxChannels is a count, not {value}")
        core.max_channels = value

    handle.add_key(
        KeyType.LONG,
        "maxChannels",
        lambda _: core.max_channels,
        set_limit,
        persistent=True,
        description="how many channels may exist (mkdir beyond it: ENOSPC); existing ones stay",
    )

    for name, saved in ctx.restoring("channels"):
        try:
            ch = create(name)
            ch.set_order("prod_ring_order", str(saved["prod_ring_order"]))
            ch.set_order("cons_ring_order", str(saved["cons_ring_order"]))
            ch.set_transport(saved["transport"])
        except (VfsError, KeyError) as e:
            log.error("saved channel %s cannot be restored: %s", name, getattr(e, "reason", e))

    async def close_all() -> None:
        for ch in list(core.channels.values()):
            for end in ch.ends.values():
                if end.attached:
                    await end.detach()
            ch.transport.close()

    ctx.root.add("channels", channels_dir(core, create, destroy))
    ctx.metrics.add(lambda: metrics.collect(core))
    ctx.root.counters["channels"] = lambda: len(core.channels)
    ctx.on_shutdown.append(close_all)
    return core
