"""The `ram` handler: a device in memory. `ram/` — nothing after the slash.

Memory is a private anonymous mapping: untouched blocks cost nothing, UNMAP gives whole pages
back (MADV_DONTNEED; they read as zeros again) and a resize is an mremap — no copy, no
untouched page allocated by it, and no descriptor per device. The engine reads and writes it
through `lend` (no command per transfer); the other callouts complete inline (nr_threads = 0).
"""

from __future__ import annotations

import mmap
from typing import Any

from backends.tcmu.device import Device
from backends.tcmu.handler import Command, Handler, Reconfig
from backends.tcmu.status import Sts

PAGE = mmap.PAGESIZE


class Memory:
    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.map)

    def resize(self, size: int) -> None:
        """Grow or shrink in place (the engine is paused: no slice of the view is out)."""
        self.view.release()
        self.map.resize(size)
        self.view = memoryview(self.map)

    def close(self) -> None:
        self.view.release()
        self.map.close()


class RamHandler(Handler):
    name = "RAM-backed device"
    subtype = "ram"
    cfg_desc = "ram/ — contents live in memory and are lost when the daemon stops"
    nr_threads = 0
    open_blocks = False  # an anonymous mapping: nothing to wait for

    def check_config(self, cfgstring: str) -> str | None:
        if self.handler_part(cfgstring):
            return "ram takes no argument: use ram/"
        return None

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        dev.private = Memory(dev.size)
        dev.solid_state = True
        return 0

    def close(self, dev: Device) -> None:
        dev.private.close()

    def reconfig(self, dev: Device, kind: Reconfig, value: Any) -> int:
        if kind is Reconfig.SIZE:
            dev.private.resize(value)
            return 0
        if kind is Reconfig.WRITE_CACHE:
            return 0  # memory has no cache to speak of
        return -95  # EOPNOTSUPP: a cfgstring change means nothing here

    def lend(self, dev: Device, off: int, length: int) -> memoryview:
        # In place of read and write: the engine copies in and out, the data file replies from it.
        return dev.private.view[off : off + length]

    def flush(self, dev: Device, cmd: Command) -> int:
        cmd.complete(Sts.OK)
        return Sts.OK

    def flush_now(self, dev: Device) -> Sts:
        return Sts.OK  # memory: no cache to empty, so no command for an fsync of `data`

    def unmap(self, dev: Device, cmd: Command, off: int, length: int) -> int:
        mem = dev.private.map
        end = off + length
        first = -(-off // PAGE) * PAGE  # whole pages go back to the kernel, edges are zeroed
        last = end // PAGE * PAGE
        if first < last:
            mem.madvise(mmap.MADV_DONTNEED, first, last - first)
            mem[off:first] = bytes(first - off)
            mem[last:end] = bytes(end - last)
        else:
            mem[off:end] = bytes(length)
        cmd.complete(Sts.OK)
        return Sts.OK
