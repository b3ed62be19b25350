"""Blocking files: event streams, channel ends — anything a reader waits on.

Every wait is time-sliced (SPEC §1): after SLICE seconds (at most one TICK more) without
progress the request answers EINTR, which cat/dd/bash/Python retry by themselves. That keeps
readers killable (FUSE_INTERRUPT never reaches pyfuse3 handlers) and keeps parked requests
from starving the one that would wake them. O_NONBLOCK gives EAGAIN; poll() is answered from the same state.
"""

from __future__ import annotations

import itertools
import logging
import os
import select
from collections.abc import Awaitable, Callable
from errno import EAGAIN, EINTR
from typing import Protocol

import trio

from backends.errors import VfsError
from backends.events import EventQueue
from backends.notify import Changed
from vfs.nodes import Caller, File, Handle

log = logging.getLogger("vfs.streams")

SLICE = 0.4
TICK = 0.1  # how often the slices of parked waits are looked at
LONGEST_WAIT = SLICE + TICK


class Shutdown:
    """Daemon-wide flag: once set, waits end at once with EINTR instead of parking again.

    Waits already parked end within LONGEST_WAIT anyway; the daemon waits that long before it
    cancels the request nursery, so every blocked reader gets an answer on shutdown.
    """

    active = False


class _Slices:
    """The slices of the waits parked now, ended by one system task per trio run. A cancel
    scope per wait did the same for ~8 µs — a third of what a message cost in our layers."""

    def __init__(self) -> None:
        self.parked: dict[int, tuple[float, Changed]] = {}
        self._keys = itertools.count()
        self._run: object = None
        self._busy = trio.Event()

    def park(self, changed: Changed) -> tuple[int, float]:
        """Register a wait on `changed`: (its key for `unpark`, its deadline)."""
        run = trio.lowlevel.current_root_task()
        if run is not self._run:  # a new trio run (tests run many): a watcher for it
            self._run, self._busy = run, trio.Event()
            self.parked.clear()
            trio.lowlevel.spawn_system_task(self._watch)
        if not self.parked:
            self._busy.set()
        key = next(self._keys)
        deadline = trio.current_time() + SLICE
        self.parked[key] = (deadline, changed)
        return key, deadline

    def unpark(self, key: int) -> None:
        del self.parked[key]

    async def _watch(self) -> None:
        while True:
            if not self.parked:  # nothing to time: sleep until something parks
                self._busy = trio.Event()
                await self._busy.wait()
            await trio.sleep(TICK)
            now = trio.current_time()
            for deadline, changed in list(self.parked.values()):
                if deadline <= now:
                    try:
                        changed.fire()  # its waiters look again, and see their slice is over
                    except Exception:  # a poll watcher's failure; this task must not end the run
                        log.exception("waking a parked wait failed")


_slices = _Slices()


async def wait_until(ready: Callable[[], bool], changed: Changed, nonblock: bool) -> None:
    """Return once `ready()`; EAGAIN at once if `nonblock`; EINTR after one slice or at shutdown."""
    if ready():
        return
    if nonblock:
        raise VfsError(EAGAIN, "nothing ready (O_NONBLOCK)")
    key, deadline = _slices.park(changed)
    try:
        while not Shutdown.active:
            await changed.wait(changed.seq)  # no checkpoint since ready() said no: nothing missed
            if ready():
                return
            if trio.current_time() >= deadline:
                break
    finally:
        _slices.unpark(key)
    raise VfsError(EINTR, "interrupted: still waiting, retry")


class Stream(Protocol):
    """What a core offers for one open of a blocking file. All calls are non-blocking."""

    changed: Changed  # fired whenever readable/writable may have changed

    def readable(self) -> bool:
        """True when `read_now` would return data or EOF."""
        ...

    def read_now(self, size: int) -> bytes:
        """Up to `size` bytes; b'' means end of file. Only called when `readable()`."""
        ...

    def writable(self, size: int) -> bool:
        """True when `write_now` would take (a first part of) a write of `size` bytes now."""
        ...

    def write_now(self, data: memoryview) -> int:
        """Take as many bytes as fit now (> 0 when `writable()`), or raise VfsError."""
        ...

    def close(self) -> None | Awaitable[None]: ...


class QueueStream:
    """An event queue as the Stream of one open; `on_close` (unsubscribe, end a session) runs at
    release. Every `events` file is one of these."""

    def __init__(self, queue: EventQueue, on_close: Callable[[], Awaitable[None] | None]) -> None:
        self.queue = queue
        self.changed = queue.changed
        self.readable = queue.readable
        self.read_now = queue.read_now
        self.writable = queue.writable
        self.write_now = queue.write_now
        self._on_close = on_close

    def close(self) -> Awaitable[None] | None:
        return self._on_close()


class StreamHandle(Handle):
    # Seekable in name only (offsets are ignored, the data is a queue): `head -n1 file` seeks
    # back after a line and would report ESPIPE on a nonseekable regular file.
    direct_io = True

    def __init__(self, node: File, flags: int, caller: Caller, stream: Stream) -> None:
        super().__init__(node, flags, caller)
        self.stream = stream
        self.nonblock = bool(flags & os.O_NONBLOCK)
        self._poll_notify: Callable[[], None] | None = None

    async def read(self, off: int, size: int) -> bytes:
        await wait_until(self.stream.readable, self.stream.changed, self.nonblock)
        return self.stream.read_now(size)

    async def write(self, off: int, data: bytes) -> int:
        """All bytes, waiting slice by slice while the peer makes room; a stall after some
        progress returns the count taken (a short write, as pipes do)."""
        done = 0
        view = memoryview(data)
        stream = self.stream
        try:
            while done < len(data):
                left = len(data) - done
                if not stream.writable(left):  # a writer seldom waits: no coroutine for that
                    await wait_until(lambda n=left: stream.writable(n), stream.changed, self.nonblock)
                done += stream.write_now(view[done:])
        except VfsError as e:
            if done and e.errno in (EAGAIN, EINTR):
                return done
            raise
        return done

    async def release(self) -> None:
        result = self.stream.close()
        if result is not None:
            await result

    def poll(self, notify: Callable[[], None] | None) -> int:
        mask = (select.POLLIN if self.stream.readable() else 0) | (
            select.POLLOUT if self.stream.writable(1) else 0
        )
        # pyfuse3 does not say which events the poller asked for: a mask with only POLLOUT
        # still needs a wake-up for POLLIN (a connected channel end is always writable).
        if notify is not None and mask != select.POLLIN | select.POLLOUT:
            if self._poll_notify is None:
                self.stream.changed.watch_once(self._poll_wake)
            self._poll_notify = notify  # the kernel's newest handle; one watcher per open
        return mask

    def _poll_wake(self) -> None:
        notify, self._poll_notify = self._poll_notify, None
        if notify is not None:
            notify()


class StreamFile(File):
    """A blocking file: each open gets its own Stream from `opener` (a session, an endpoint)."""

    attr_timeout = 0.0

    def __init__(
        self,
        opener: Callable[[int, Caller], Stream | Awaitable[Stream]],
        readable: bool = True,
        writable: bool = False,
    ) -> None:
        super().__init__()
        self._opener = opener
        self._readable = readable
        self._writable = writable

    @property
    def readable(self) -> bool:  # type: ignore[override]
        return self._readable

    @property
    def writable(self) -> bool:  # type: ignore[override]
        return self._writable

    async def open(self, flags: int, caller: Caller) -> Handle:
        self.check_open(flags)
        stream = self._opener(flags, caller)
        if not hasattr(stream, "readable"):
            stream = await stream  # type: ignore[misc]
        return StreamHandle(self, flags, caller, stream)  # type: ignore[arg-type]
