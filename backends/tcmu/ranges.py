"""Block-range locks: writes to overlapping blocks take turns.

COMPARE AND WRITE and the data file's read-modify-write of partial blocks hold a range across
a read and a write; every other write to those blocks waits — so CAW is atomic against all
writes, not only other CAWs (tcmu-runner's caw_lock is), and partial writes never tear.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from backends.notify import Changed


class RangeLocks:
    def __init__(self) -> None:
        self.held: list[tuple[int, int]] = []
        self.changed = Changed()

    def _overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.held)

    @asynccontextmanager
    async def hold(self, start: int, end: int) -> AsyncIterator[None]:
        """Exclusive use of blocks [start, end)."""
        while self._overlaps(start, end):
            await self.changed.wait(self.changed.seq)
        entry = (start, end)
        self.held.append(entry)
        try:
            yield
        finally:
            self.held.remove(entry)
            self.changed.fire()
