"""A management session: one user-space connection (an open `events` or `call` fd).

Listening sessions get user-side callbacks in a bounded queue; a slow reader loses the
newest events (counted in `dropped`, and announced by a "dropped" line) instead of growing
memory without bound.
"""

from __future__ import annotations

import json
import time
from collections import deque
from errno import ENODEV
from typing import Any

from backends.errors import VfsError
from backends.notify import Changed

QUEUE_MAX = 1024


class Session:
    def __init__(self, sid: int, pid: int, uid: int, listening: bool) -> None:
        self.id = sid
        self.pid = pid
        self.uid = uid
        self.listening = listening
        self.since = time.time()
        self.cookie: Any = None
        self.changed = Changed()
        self.queue: deque[bytes] = deque()
        self.seq = 0
        self.dropped = 0
        self._unreported = 0
        self.closed = False  # by its fd's release
        self.gone = False  # by the handle's destruction

    def deliver(self, event: dict[str, Any]) -> None:
        if len(self.queue) >= QUEUE_MAX:
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

    # ---- the Stream protocol of blocking files ----------------------------------------------

    def readable(self) -> bool:
        return bool(self.queue) or self.gone

    def read_now(self, size: int) -> bytes:
        if not self.queue:
            raise VfsError(ENODEV, "the management handle was destroyed")
        out = bytearray()
        while self.queue and len(out) + len(self.queue[0]) <= size:
            out += self.queue.popleft()
        if not out:  # a line longer than the buffer: hand it over in pieces
            line = self.queue.popleft()
            out += line[:size]
            self.queue.appendleft(line[size:])
        return bytes(out)

    def writable(self) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "uid": self.uid,
            "since": int(self.since),
            "kind": "events" if self.listening else "call",
            "queued": len(self.queue),
            "dropped": self.dropped,
        }
