"""Large data files: a device's contents, a world's block — read and written at any offset.

The backend does the I/O; this node only clamps to the size: reads stop there (short read,
then 0) and writes that start past it get ENOSPC, as on a block device.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from errno import ENOSPC
from typing import Any, Protocol

from backends.errors import VfsError
from vfs.tree.nodes import Caller, File, OpenFile


class Block(Protocol):
    """What a core offers for one open of a data file. It may also have `read_now(off, size)`
    and `write_now(off, data)`: the same done at once, with no coroutine, or None where `read`
    / `write` must do it."""

    def size(self) -> int: ...

    async def read(self, off: int, size: int) -> bytes | memoryview: ...

    async def write(self, off: int, data: bytes) -> int: ...

    async def flush(self) -> None:
        """Make every completed write durable (fsync)."""
        ...

    def close(self) -> None: ...


async def _nothing() -> bytes:
    return b""


class OpenData(OpenFile):
    direct_io = True

    def __init__(self, node: DataFile, flags: int, caller: Caller, block: Block) -> None:
        super().__init__(node, flags, caller)
        self.block = block
        self._read_now = getattr(block, "read_now", None)
        self._write_now = getattr(block, "write_now", None)

    # read and write hand back the block's own coroutine rather than awaiting it: one frame
    # less on every request that cannot be done at once.
    def read_now(self, off: int, size: int) -> bytes | memoryview | None:
        if self._read_now is None:
            return None
        if (left := self.block.size() - off) < size:  # (not min(): a call less per request)
            size = left
        return self._read_now(off, size) if size > 0 else b""

    def read(self, off: int, size: int) -> Coroutine[Any, Any, bytes | memoryview]:
        size = min(size, self.block.size() - off)
        return self.block.read(off, size) if size > 0 else _nothing()

    def write_now(self, off: int, data: bytes) -> int | None:
        return None if self._write_now is None else self._write_now(off, self._clamped(off, data))

    def write(self, off: int, data: bytes) -> Coroutine[Any, Any, int]:
        return self.block.write(off, self._clamped(off, data))

    def _clamped(self, off: int, data: bytes) -> bytes:
        room = self.block.size() - off
        if room <= 0:
            raise VfsError(ENOSPC, f"write at {off} is past the end ({self.block.size()} bytes)")
        return data if len(data) <= room else data[:room]

    async def truncate(self, size: int) -> None:
        # `dd of=data` and shell `>` truncate first; the size of a device is set elsewhere.
        pass

    async def fsync(self, datasync: bool) -> None:
        await self.block.flush()

    async def release(self) -> None:
        self.block.close()


class DataFile(File):
    attr_timeout = 0.0  # size changes out of band (resize)
    audience = "private"

    def __init__(
        self,
        opener: Callable[[int, Caller], Block | Awaitable[Block]],
        size: Callable[[], int],
        writable: bool = True,
        audience: str | None = None,
    ) -> None:
        super().__init__()
        self._opener = opener
        self._size = size
        self._writable = writable
        if audience is not None:
            self.audience = audience

    @property
    def writable(self) -> bool:  # type: ignore[override]
        return self._writable

    def size(self) -> int:
        return self._size()

    async def open(self, flags: int, caller: Caller) -> OpenFile:
        self.check_open(flags)
        block = self._opener(flags, caller)
        if isinstance(block, Awaitable):
            block = await block
        return OpenData(self, flags, caller, block)
