"""Level-triggered change signals shared by cores and the FUSE face.

A one-shot event loses wake-ups for a waiter that was between two waits when it fired; a
counter that waiters compare against does not.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class Changed:
    """A change counter: `fire()` bumps it, `wait(seen)` returns once it differs from `seen`."""

    __slots__ = ("seq", "_event", "_watchers")

    def __init__(self) -> None:
        self.seq = 0
        self._event: trio.Event | None = None
        self._watchers: list[Callable[[], None]] = []

    def fire(self) -> None:
        """Wake every waiter and run (then drop) every one-shot watcher. Trio thread only."""
        self.seq += 1
        if self._event is not None:
            self._event.set()
            self._event = None
        if self._watchers:
            watchers, self._watchers = self._watchers, []
            for watcher in watchers:
                watcher()

    async def wait(self, seen: int) -> None:
        while self.seq == seen:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()

    def watch_once(self, callback: Callable[[], None]) -> None:
        """Run `callback` at the next `fire()` (used for poll handles, which notify once)."""
        self._watchers.append(callback)
