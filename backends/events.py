"""A bounded JSON Lines queue for one reader of an event stream (README: blocking files).

Each line has an increasing per-stream `seq` and an `event`. A reader that falls `limit`
events behind loses the newest ones: they are counted in `dropped` and announced by one
{"event": "dropped", "count": N} line once there is room — memory never grows unbounded.
"""

from __future__ import annotations

import json
from collections import deque
from errno import ENODEV
from typing import Any

from backends.errors import VfsError
from backends.notify import Changed

QUEUE_MAX = 1024


class EventQueue:
    def __init__(self, limit: int = QUEUE_MAX) -> None:
        self.limit = limit
        self.changed = Changed()
        self.queue: deque[bytes] = deque()
        self.seq = 0
        self.dropped = 0
        self._unreported = 0
        self.gone = False  # the source was destroyed: readers get ENODEV once drained

    def deliver(self, event: dict[str, Any]) -> None:
        if len(self.queue) >= self.limit:
            self.dropped += 1
            self._unreported += 1
            return
        if self._unreported:
            self._push({"event": "dropped", "count": self._unreported})
            self._unreported = 0
        self._push(event)

    def _push(self, event: dict[str, Any]) -> None:
        self.seq += 1
        self.queue.append(json.dumps({"seq": self.seq, **event}, separators=(",", ":")).encode() + b"\n")
        self.changed.fire()

    def end(self) -> None:
        self.gone = True
        self.changed.fire()

    # ---- the Stream protocol of blocking files ----------------------------------------------

    def readable(self) -> bool:
        return bool(self.queue) or self.gone

    def read_now(self, size: int) -> bytes:
        if not self.queue:
            raise VfsError(ENODEV, "the source of these events was destroyed")
        out = bytearray()
        while self.queue and len(out) + len(self.queue[0]) <= size:
            out += self.queue.popleft()
        if not out:  # a line longer than the buffer: hand it over in pieces
            line = self.queue.popleft()
            out += line[:size]
            self.queue.appendleft(line[size:])
        return bytes(out)

    def writable(self, size: int = 1) -> bool:
        return False

    def write_now(self, data: memoryview) -> int:
        raise VfsError(ENODEV, "event streams are read-only")


class Hub:
    """One stream for many sources: every subscribed queue gets what is published (the tree's
    root `events`, each v2v end's and each TCMU device's). The subscribers are an ordered set
    in a dict, 64 bytes empty where a set is 216: a channel's two ends hold one each.
    Publishing with nobody subscribed costs an emptiness check."""

    __slots__ = ("subscribers",)

    def __init__(self) -> None:
        self.subscribers: dict[EventQueue, None] = {}

    def publish(self, record: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            queue.deliver(record)

    def subscribe(self) -> EventQueue:
        queue = EventQueue()
        self.subscribers[queue] = None
        return queue

    def unsubscribe(self, queue: EventQueue) -> None:
        self.subscribers.pop(queue, None)

    def end(self) -> None:
        """The source is gone: each reader gets ENODEV once it has read what is queued."""
        for queue in list(self.subscribers):
            queue.end()
