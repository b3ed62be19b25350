"""Per-world storage in the daemon: the core, `storage/` and `worlds/`, slot persistence, and
the `worldstorage` management handle (one instance per slot; a callback per destroyed block)."""

from __future__ import annotations

import logging

from backends.errors import VfsError
from backends.mgmt import ApiSignature, CallbackInfo, Envelope, Location, Param, ParmType
from backends.worldstorage import Block, Slot, WorldStorage
from backends.worldstorage.core import MAX_SIZE
from vfs.context import Context
from vfs.subsystems.mgmt.instances import Instances
from vfs.subsystems.worldstorage import metrics
from vfs.subsystems.worldstorage.tree import storage_dirs

log = logging.getLogger("vfs.worldstorage")

DESTROYED = 16
SIGNATURE = ApiSignature(
    "worldstorage",
    "vfs",
    (1, 0, 0, 0),
    (
        CallbackInfo(
            DESTROYED,
            "destroyed",
            Location.USER,
            synchronous=False,
            params=(
                Param(ParmType.IN, 4, "int", "world"),
                Param(ParmType.IN, 32, "str", "slot"),
                Param(ParmType.IN, 32, "str", "cause"),
                Param(ParmType.IN, MAX_SIZE, "bytes", "contents"),  # hex; empty unless on_exit=event
            ),
        ),
    ),
)


def setup(ctx: Context) -> WorldStorage:
    handle = ctx.mgmt.init(SIGNATURE, max_instances=None)
    instances = Instances(handle)

    def destroyed(block: Block, cause: str) -> None:
        contents = block.contents() if block.slot.on_exit == "event" else b""
        instance = instances.id(block.slot.name)
        ctx.events.publish(
            {
                "event": "block_destroyed",
                "object": f"storage/{block.slot.name}",
                "world": block.world.wid,
                "cause": cause,
            }
        )
        handle.invoke(
            Envelope(instance_id=instance), DESTROYED, block.world.wid, block.slot.name, cause, contents
        )

    def save(slot: Slot) -> None:
        ctx.store.save("slots", slot.name, slot.definition())

    def forget(name: str) -> None:
        ctx.store.delete("slots", name)

    core = WorldStorage(ctx.nursery.start_soon, destroyed, save, forget)

    def create(name: str) -> Slot:
        slot = core.create_slot(name)
        instances.add(name)
        ctx.events.publish({"event": "created", "object": f"storage/{name}"})
        return slot

    def destroy(name: str) -> None:
        core.destroy_slot(name)
        instances.remove(name)
        ctx.events.publish({"event": "removed", "object": f"storage/{name}"})

    for name, saved in ctx.restoring("slots"):
        try:
            slot = create(name)
            slot.set_size(str(saved["size"]))
            slot.set_align(str(saved["align"]))
            slot.set_init(saved["init"])
            slot.set_template(bytes.fromhex(saved.get("template", "")))
            slot.set_on_exit(saved["on_exit"])
            if saved.get("enabled"):
                core.enable(slot)
        except (VfsError, KeyError, ValueError) as e:
            log.error("saved slot %s cannot be restored: %s", name, getattr(e, "reason", e))

    storage, worlds = storage_dirs(core, create, destroy)
    ctx.root.add("storage", storage)
    ctx.metrics.add(lambda: metrics.collect(core))
    ctx.root.add("worlds", worlds)
    ctx.root.counters["worlds"] = lambda: len(core.worlds)
    return core
