"""Transaction files: write one request, then read its answer on the same fd (Plan 9 ctl style).

Each open is a session of the core (`opener`); close ends it. When a request is refused the
write fails with the errno and the reason is kept as the answer, so `cat <&3` shows why.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from errno import EFBIG
from typing import Protocol

from backends.errors import VfsError
from vfs.tree.nodes import Caller, File, OpenFile, maybe_await
from vfs.tree.values import MAX_VALUE


class Transaction(Protocol):
    async def request(self, data: bytes) -> bytes:
        """Run one request; return the answer or raise VfsError."""
        ...

    def close(self) -> None | Awaitable[None]: ...


class OpenTransaction(OpenFile):
    nonseekable = True

    def __init__(self, node: TxFile, flags: int, caller: Caller, tx: Transaction) -> None:
        super().__init__(node, flags, caller)
        self.tx = tx
        self.answer = b""

    async def write(self, off: int, data: bytes) -> int:
        # The offset is ignored: the fd position moves with each request, each write is whole.
        self.answer = b""
        try:
            if len(data) > MAX_VALUE:  # before any parsing: a longer one may come in pieces
                raise VfsError(EFBIG, f"a request is one write of at most {MAX_VALUE} bytes, not {len(data)}")
            self.answer = await self.tx.request(data)
        except VfsError as e:
            self.answer = (e.reason + "\n").encode()
            raise
        return len(data)

    async def read(self, off: int, size: int) -> bytes:
        chunk, self.answer = self.answer[:size], self.answer[size:]
        return chunk

    async def release(self) -> None:
        await maybe_await(self.tx.close())


class TxFile(File):
    readable = True
    writable = True
    audience = "private"  # a request acts on the object

    def __init__(
        self, opener: Callable[[Caller], Transaction | Awaitable[Transaction]], audience: str | None = None
    ) -> None:
        super().__init__()
        self._opener = opener
        if audience is not None:
            self.audience = audience

    async def open(self, flags: int, caller: Caller) -> OpenFile:
        self.check_open(flags)
        return OpenTransaction(self, flags, caller, await maybe_await(self._opener(caller)))
