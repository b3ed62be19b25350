"""The face of per-world storage: `storage/<slot>/...` and `worlds/<wid>/...` (docs/storage.md)."""

from __future__ import annotations

from collections.abc import Callable
from errno import EACCES, EINVAL, ENODEV
from typing import Any

from backends.errors import VfsError
from backends.values import parse_bool
from backends.worldstorage import Block, Slot, World, WorldStorage
from vfs.tree.callers import owner_of
from vfs.tree.data import DataFile
from vfs.tree.nodes import Caller, MappedDir, Node, Symlink
from vfs.tree.objects import Collection, ObjectDir
from vfs.tree.values import BytesFile, ValueFile


class BlockFile:
    """One open of a block: the DataFile backend. A block destroyed under it gives ENODEV."""

    def __init__(self, block: Block, on_close: Callable[[], None] | None = None) -> None:
        self.block = block
        self._on_close = on_close

    def size(self) -> int:
        return self.block.size

    def _check(self) -> None:
        if self.block.destroyed:
            raise VfsError(
                ENODEV, f"the block of world {self.block.world.wid} in {self.block.slot.name} is gone"
            )

    def read_now(self, off: int, size: int) -> bytes | memoryview:  # memory: always at once
        self._check()
        return self.block.read(off, size)

    async def read(self, off: int, size: int) -> bytes | memoryview:
        return self.read_now(off, size)

    def write_now(self, off: int, data: bytes) -> int:
        self._check()
        return self.block.write(off, data)

    async def write(self, off: int, data: bytes) -> int:
        return self.write_now(off, data)

    async def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()


def slot_dir(core: WorldStorage, slot: Slot) -> Node:
    def staged(setter: Callable[[str], None]) -> Callable[[str], None]:
        def set_(text: str) -> None:
            setter(text)
            core.changed(slot)

        return set_

    def set_template(data: bytes) -> None:
        slot.set_template(data)
        core.changed(slot)

    def set_enable(text: str) -> None:
        if parse_bool(text, "enable"):
            core.enable(slot)
        elif slot.enabled:
            raise VfsError(EINVAL, f"an enabled slot stays enabled; rmdir storage/{slot.name} destroys it")

    def worlds() -> str:
        return "\n".join(str(w) for w, b in sorted(slot.blocks.items()) if b.world.alive)

    def open_self(flags: int, caller: Caller) -> BlockFile:
        return BlockFile(core.lookup_local(caller.pid, slot.name))

    return ObjectDir(
        slot.status,
        {
            "size": ValueFile(lambda: str(slot.size), staged(slot.set_size)),
            "align": ValueFile(lambda: str(slot.align), staged(slot.set_align)),
            "init": ValueFile(lambda: slot.init, staged(slot.set_init)),
            "template": BytesFile(lambda: slot.template, set_template),
            "on_exit": ValueFile(lambda: slot.on_exit, staged(slot.set_on_exit)),
            "enable": ValueFile(lambda: "1" if slot.enabled else "0", set_enable),
            "worlds": ValueFile(worlds),
            "self": DataFile(open_self, lambda: slot.size, audience="personal"),  # each its own block
        },
    )


def world_dir(core: WorldStorage, world: World) -> Node:
    def block_file(slot_name: str, block: Block) -> Node:
        def open_block(flags: int, caller: Caller) -> BlockFile:
            ref = core.lookup(world.wid, slot_name)
            return BlockFile(ref, lambda: core.release(ref))

        return DataFile(open_block, lambda: block.size)

    live_blocks = MappedDir(lambda: {n: b for n, b in world.blocks.items() if not b.destroyed}, block_file)
    node = ObjectDir(world.status, dynamic=live_blocks)
    node.owned_by = lambda: owner_of(world.wid)  # /proc's rule: the process's user, or root
    node.attr_timeout = 0.0  # a task may change its user (setuid) at any time
    return node


def self_link(caller: Caller) -> str:
    if caller.pid <= 0:
        raise VfsError(EACCES, "the calling task is not visible to the daemon (pid 0)")
    return str(caller.pid)


def storage_dirs(
    core: WorldStorage, create: Callable[[str], Any], destroy: Callable[[str], Any]
) -> tuple[Node, Node]:
    """(storage/, worlds/): mkdir/rmdir slots in the first, live worlds in the second."""
    storage = Collection(
        lambda: core.slots,
        lambda name, slot: slot_dir(core, slot),
        create=create,
        destroy=destroy,
        cache_names=True,  # these objects go only by rmdir, which the kernel itself sees
    )
    worlds = MappedDir(
        lambda: {str(wid): w for wid, w in core.worlds.items()},
        lambda name, world: world_dir(core, world),
        fixed={"self": Symlink(self_link)},
    )
    return storage, worlds
