"""Slots, worlds and their blocks; worlds die with their tasks (pidfd), not by polling /proc."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from backends.errors import VfsError
from backends.names import check_name
from backends.values import parse_int
from backends.worldstorage.block import Block

log = logging.getLogger("vfs.worldstorage")

MAX_SIZE = 16 << 20
INITS = ("zero", "pattern:<hex>", "template")
ON_EXIT = ("discard", "event")
PIDFD_THREAD = getattr(os, "PIDFD_THREAD", os.O_EXCL)  # a task that is not a thread-group leader

# A constructor fills a fresh block and may refuse (VfsError); a destructor sees the final bytes.
Constructor = Callable[[int, memoryview], None]
Destructor = Callable[[int, bytes], None]


@dataclass
class Slot:
    """A storage slot (a vmk_WorldStorageHandle): staged until enabled, then fixed."""

    name: str
    size: int = 4096
    align: int = 8
    init: str = "zero"
    template: bytes = b""
    on_exit: str = "discard"
    enabled: bool = False
    constructor: Constructor | None = None  # modules may bring their own (run eagerly)
    destructor: Destructor | None = None
    blocks: dict[int, Block] = field(default_factory=dict)  # by world id
    _pattern: bytes = b""

    # ---- staged attributes --------------------------------------------------------------------

    def _staged(self, what: str) -> None:
        if self.enabled:
            raise VfsError(errno.EBUSY, f"{what} is set before enable; slot {self.name} is enabled")

    def set_size(self, text: str) -> None:
        self._staged("size")
        size = parse_int(text, "size")
        if not 1 <= size <= MAX_SIZE:
            raise VfsError(errno.EINVAL, f"size is 1..{MAX_SIZE} bytes, not {size}")
        if len(self.template) > size:
            raise VfsError(errno.EINVAL, f"the template ({len(self.template)} bytes) would not fit in {size}")
        self.size = size

    def set_align(self, text: str) -> None:
        self._staged("align")
        align = parse_int(text, "align")
        if not 1 <= align <= 4096 or align & (align - 1):
            raise VfsError(errno.EINVAL, f"align is a power of two 1..4096, not {align}")
        self.align = align

    def set_init(self, text: str) -> None:
        self._staged("init")
        if text in ("zero", "template"):
            self._pattern = b""
        elif text.startswith("pattern:"):
            try:
                pattern = bytes.fromhex(text[len("pattern:") :])
            except ValueError:
                raise VfsError(
                    errno.EINVAL, f"pattern is hex bytes, e.g. pattern:deadbeef, not {text!r}"
                ) from None
            if not 1 <= len(pattern) <= 4096:
                raise VfsError(errno.EINVAL, "a pattern is 1..4096 bytes")
            self._pattern = pattern
            text = "pattern:" + pattern.hex()
        else:
            raise VfsError(errno.EINVAL, f"init is one of {', '.join(INITS)}, not {text!r}")
        self.init = text

    def set_template(self, data: bytes) -> None:
        self._staged("template")
        if len(data) > self.size:
            raise VfsError(
                errno.EFBIG, f"template of {len(data)} bytes is larger than the slot ({self.size})"
            )
        self.template = bytes(data)

    def set_on_exit(self, text: str) -> None:
        self._staged("on_exit")
        if text not in ON_EXIT:
            raise VfsError(errno.EINVAL, f"on_exit is one of {', '.join(ON_EXIT)}, not {text!r}")
        self.on_exit = text

    # ---- the built-in constructors ------------------------------------------------------------

    def initial(self, off: int, n: int) -> bytes:
        """Bytes [off, off+n) of a freshly constructed block (without building it)."""
        if self._pattern:
            p = self._pattern
            start = off % len(p)
            reps = (start + n) // len(p) + 1
            return (p * reps)[start : start + n]
        if self.init == "template":
            return self.template[off : off + n].ljust(n, b"\0")
        return bytes(n)

    def fill(self, view: memoryview) -> None:
        if self._pattern or self.init == "template":
            view[:] = self.initial(0, self.size)

    def definition(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "align": self.align,
            "init": self.init,
            "template": self.template.hex(),
            "on_exit": self.on_exit,
            "enabled": self.enabled,
        }

    def status(self) -> dict[str, Any]:
        live = [b for b in self.blocks.values() if not b.destroyed]
        return {
            "name": self.name,
            "enabled": self.enabled,
            "size": self.size,
            "align": self.align,
            "init": self.init,
            "on_exit": self.on_exit,
            "worlds": len(live),
            "materialized": sum(1 for b in live if b.materialized),
            "references": sum(b.refs for b in live),
        }


def _pidfd(wid: int) -> int:
    """A descriptor that becomes readable when task `wid` exits (process or thread)."""
    try:
        return os.pidfd_open(wid, 0)
    except OSError as e:
        first = e
    # A thread that is not its group's leader: EINVAL on older kernels, ENOENT on newer ones.
    if first.errno in (errno.EINVAL, errno.ENOENT):
        try:
            return os.pidfd_open(wid, PIDFD_THREAD)
        except OSError:
            pass
    raise VfsError(errno.ENOENT, f"world {wid} is gone ({first.strerror})")


class World:
    """A task the kernel reported (its id is the tid FUSE gives), watched through a pidfd."""

    def __init__(self, wid: int, pidfd: int) -> None:
        self.wid = wid
        self.pidfd = pidfd
        self.alive = True
        self.since = time.time()
        self.blocks: dict[str, Block] = {}
        self._comm = "?"

    @property
    def comm(self) -> str:
        """The task's name now (it may exec), or the last one seen once it is gone."""
        if self.alive:
            try:
                with open(f"/proc/{self.wid}/comm") as f:
                    self._comm = f.read().strip()
            except OSError:
                pass
        return self._comm

    def status(self) -> dict[str, Any]:
        live = [b for b in self.blocks.values() if not b.destroyed]
        return {
            "pid": self.wid,
            "comm": self.comm,
            "state": "alive" if self.alive else "exited",
            "since": int(self.since),
            "blocks": len(live),
            "materialized": sum(1 for b in live if b.materialized),
            "references": sum(b.refs for b in live),
        }


class WorldStorage:
    """All slots and worlds of one daemon.

    `spawn(fn, *args)` starts background tasks (death watchers); `on_destroyed(block, cause)`
    hears every destroyed block (the face turns it into a management callback);
    `on_change(slot)`/`on_forget(name)` persist slot definitions.
    """

    def __init__(
        self,
        spawn: Callable[..., None],
        on_destroyed: Callable[[Block, str], None] | None = None,
        on_change: Callable[[Slot], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
    ) -> None:
        self.spawn = spawn
        self.on_destroyed = on_destroyed or (lambda block, cause: None)
        self.on_change = on_change or (lambda slot: None)
        self.on_forget = on_forget or (lambda name: None)
        self.slots: dict[str, Slot] = {}
        self.worlds: dict[int, World] = {}  # alive ones
        self.exited = 0

    # ---- slots --------------------------------------------------------------------------------

    def create_slot(self, name: str, **props: Any) -> Slot:
        check_name(name, "slot name")
        if name in self.slots:
            raise VfsError(errno.EEXIST, f"slot {name} exists")
        slot = Slot(name, **props)
        self.slots[name] = slot
        self.on_change(slot)
        return slot

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            raise VfsError(errno.ENOENT, f"no slot {name}")
        return slot

    def changed(self, slot: Slot) -> None:
        self.on_change(slot)

    def enable(self, slot: Slot) -> None:
        """vmk_WorldStorageCreate: construct a block for every existing world, or none at all."""
        if slot.enabled:
            return
        if slot.init == "template" and not slot.template:
            raise VfsError(errno.EINVAL, "init=template needs a template: write it before enable")
        built: list[Block] = []
        try:
            for world in self.worlds.values():
                built.append(self._construct(world, slot))
        except VfsError as e:
            for block in built:
                self._destroy(block, "construction failed")
            raise VfsError(e.errno, f"constructor failed for world {world.wid}: {e.reason}") from None
        slot.enabled = True
        self.on_change(slot)

    def _construct(self, world: World, slot: Slot) -> Block:
        block = Block(world, slot)
        if slot.constructor is not None:  # a module's constructor: run now, it may fail
            constructor = slot.constructor
            block.materialize(lambda view: constructor(world.wid, view))
        slot.blocks[world.wid] = block
        world.blocks[slot.name] = block
        return block

    def destroy_slot(self, name: str) -> None:
        """vmk_WorldStorageDestroy: the destructor runs for every world's block."""
        slot = self.slot(name)
        held = [b.world.wid for b in slot.blocks.values() if b.refs]
        if held:
            raise VfsError(
                errno.EBUSY, f"slot {name}: blocks of world(s) {', '.join(map(str, held))} are held open"
            )
        for block in list(slot.blocks.values()):
            self._destroy(block, "slot destroyed")
        del self.slots[name]
        self.on_forget(name)

    # ---- worlds -------------------------------------------------------------------------------

    def world(self, wid: int) -> World:
        """The caller's world, created (with a block in every enabled slot) on first use."""
        if wid <= 0:
            raise VfsError(errno.EACCES, "the calling task is not visible to the daemon (pid 0)")
        world = self.worlds.get(wid)
        if world is not None and self._reap_if_dead(world):
            world = None
        if world is None:
            world = self._new_world(wid)
        return world

    def _new_world(self, wid: int) -> World:
        fd = _pidfd(wid)
        world = World(wid, fd)
        built: list[Block] = []
        try:
            for slot in self.slots.values():
                if slot.enabled:
                    built.append(self._construct(world, slot))
        except VfsError as e:
            for block in built:
                self._destroy(block, "construction failed")
            os.close(fd)
            raise VfsError(e.errno, f"world {wid} cannot be created: {e.reason}") from None
        self.worlds[wid] = world
        self.spawn(self._watch, world)
        return world

    async def _watch(self, world: World) -> None:
        try:
            await trio.lowlevel.wait_readable(world.pidfd)
        except (trio.ClosedResourceError, OSError):
            return
        self.exit_world(world)

    def _reap_if_dead(self, world: World) -> bool:
        """Catch a death the watcher has not handled yet (so a reused pid is a new world)."""
        import select

        if world.alive and select.select([world.pidfd], [], [], 0)[0]:
            self.exit_world(world)
        return not world.alive

    def exit_world(self, world: World) -> None:
        """The task is gone: its blocks go as soon as no other world holds them."""
        if not world.alive:
            return
        world.alive = False
        self.exited += 1
        if self.worlds.get(world.wid) is world:
            del self.worlds[world.wid]
        trio.lowlevel.notify_closing(world.pidfd)
        os.close(world.pidfd)
        for block in list(world.blocks.values()):
            if block.refs == 0:
                self._destroy(block, "world exited")

    # ---- lookups ------------------------------------------------------------------------------

    def lookup_local(self, wid: int, slot_name: str) -> Block:
        """LookUpLocal: the calling world's block; no reference to release."""
        slot = self._enabled(slot_name)
        world = self.world(wid)
        return world.blocks[slot.name]

    def lookup(self, wid: int, slot_name: str) -> Block:
        """LookUp: another world's block, with a reference that `release` gives back."""
        slot = self._enabled(slot_name)
        world = self.worlds.get(wid)
        if world is None or self._reap_if_dead(world):
            raise VfsError(errno.ENOENT, f"no world {wid}")
        block = world.blocks[slot.name]
        block.refs += 1
        return block

    def release(self, block: Block) -> None:
        block.refs -= 1
        if block.refs == 0 and not block.world.alive and not block.destroyed:
            self._destroy(block, "world exited")

    def _enabled(self, name: str) -> Slot:
        slot = self.slot(name)
        if not slot.enabled:
            raise VfsError(errno.ENOENT, f"slot {name} is not enabled yet (echo 1 > enable)")
        return slot

    def _destroy(self, block: Block, cause: str) -> None:
        slot, world = block.slot, block.world
        if block.destroyed:
            return
        try:
            if slot.destructor is not None:
                slot.destructor(world.wid, block.contents())
            self.on_destroyed(block, cause)
        except Exception:
            log.exception("destructor of slot %s for world %d failed", slot.name, world.wid)
        block.free()
        if slot.blocks.get(world.wid) is block:
            del slot.blocks[world.wid]
        if world.blocks.get(slot.name) is block:
            del world.blocks[slot.name]

    def status(self) -> dict[str, Any]:
        return {"slots": len(self.slots), "worlds": len(self.worlds), "exited": self.exited}
