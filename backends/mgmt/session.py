"""A management session: one user-space connection (an open `events` or `call` fd).

Listening sessions get user-side callbacks in a bounded queue (backends.events.EventQueue).
"""

from __future__ import annotations

import time
from typing import Any

from backends.events import QUEUE_MAX, EventQueue

__all__ = ["QUEUE_MAX", "Session"]


class Session(EventQueue):
    def __init__(self, sid: int, pid: int, uid: int, listening: bool) -> None:
        super().__init__()
        self.id = sid
        self.pid = pid
        self.uid = uid
        self.listening = listening
        self.since = time.time()
        self.cookie: Any = None
        self.closed = False  # by its fd's release

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "uid": self.uid,
            "since": int(self.since),
            "kind": "events" if self.listening else "call",
            "queued": len(self.queue),
            "dropped": self.dropped,
        }
