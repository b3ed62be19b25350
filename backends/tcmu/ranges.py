"""Block-range locks: writes to overlapping blocks take turns.

COMPARE AND WRITE and the data file's read-modify-write of partial blocks hold a range across
a read and a write; every other write to those blocks waits — so CAW is atomic against all
writes, not only other CAWs (tcmu-runner's caw_lock is), and partial writes never tear.
"""

from __future__ import annotations

import threading
from types import TracebackType

from backends.notify import Changed


class RangeLocks:
    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.held: list[tuple[int, int]] = []
        # taken to add a hold: a write done at once on another thread checks `held` under it
        self.lock = lock or threading.Lock()
        self.changed = Changed()

    def _overlaps(self, start: int, end: int) -> bool:
        return any(s < end and start < e for s, e in self.held)

    def hold(self, start: int, end: int) -> Held:
        """Exclusive use of blocks [start, end), as `async with locks.hold(start, end):`."""
        return Held(self, (start, end))


class Held:
    """One hold; a plain class, as every write takes one (cheaper than a generator-based one)."""

    __slots__ = ("locks", "entry")

    def __init__(self, locks: RangeLocks, entry: tuple[int, int]) -> None:
        self.locks = locks
        self.entry = entry

    async def __aenter__(self) -> None:
        locks = self.locks
        while locks.held and locks._overlaps(*self.entry):
            await locks.changed.wait(locks.changed.seq)
        with locks.lock:
            locks.held.append(self.entry)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.locks.held.remove(self.entry)
        self.locks.changed.fire()
