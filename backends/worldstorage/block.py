"""One world's block in one slot: `size` bytes at the slot's alignment, allocated when first
written. Until then reads are served from the constructor's recipe (zeros, a repeated
pattern, the template), so a lazily built block looks exactly like an eagerly built one."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from backends.worldstorage.core import Slot, World


def aligned(size: int, align: int) -> tuple[bytearray, memoryview]:
    """A zeroed buffer of `size` bytes whose first byte sits at a multiple of `align`."""
    raw = bytearray(size + align - 1)
    address = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    offset = -address % align
    return raw, memoryview(raw)[offset : offset + size]


class Block:
    __slots__ = ("world", "slot", "_raw", "view", "refs", "destroyed")

    def __init__(self, world: World, slot: Slot) -> None:
        self.world = world
        self.slot = slot
        self._raw: bytearray | None = None
        self.view: memoryview | None = None
        self.refs = 0  # LookUp references not yet released
        self.destroyed = False

    @property
    def size(self) -> int:
        return self.slot.size

    @property
    def materialized(self) -> bool:
        return self.view is not None

    def materialize(self, construct: Callable[[memoryview], None] | None = None) -> memoryview:
        if self.view is None:
            self._raw, self.view = aligned(self.slot.size, self.slot.align)
            (construct or self.slot.fill)(self.view)
        return self.view

    def read(self, off: int, n: int) -> bytes | memoryview:
        if self.view is not None:
            return self.view[off : off + n]
        return self.slot.initial(off, n)

    def write(self, off: int, data: bytes | memoryview) -> int:
        view = self.materialize()
        view[off : off + len(data)] = data
        return len(data)

    def contents(self) -> bytes:
        return bytes(self.read(0, self.slot.size))

    def free(self) -> None:
        if self.view is not None:
            self.view.release()
        self._raw = self.view = None
        self.destroyed = True
