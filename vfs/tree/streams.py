"""Blocking files: event streams, channel ends — anything a reader waits on.

A parked wait never holds its caller hostage and never interrupts one that did not ask:
every SLICE seconds (at most one TICK more) a wait looks at the process that opened the file
and those it forked (FUSE_INTERRUPT never reaches pyfuse3 handlers; vfs.tree.callers): if one has
a signal pending that it neither blocks nor ignores — Ctrl-C, `kill`, `timeout`, SIGKILL — the
request answers EINTR, and the process handles or dies of its signal; otherwise the wait goes
on, so busybox `head`, which does not retry EINTR, simply waits. At the same
moment the wait looks at its readiness once more; data found then is a wake-up that was lost,
counted in the root's `status` (`lost_wakeups`) and logged. O_NONBLOCK gives EAGAIN; poll()
is answered from the same state.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import select
from collections.abc import Awaitable, Callable
from errno import EAGAIN, EINTR, EINVAL
from typing import Protocol

import trio

from backends.errors import VfsError
from backends.events import EventQueue
from backends.notify import Changed
from vfs.tree import callers
from vfs.tree.nodes import Caller, File, OpenFile

log = logging.getLogger("vfs.tree.streams")

SLICE = 0.25
TICK = 0.1  # how often the slices of parked waits are looked at
PROBE_SHARE = 0.25  # of the time, at most, spent reading /proc for parked waits
LONGEST_WAIT = SLICE + TICK  # what a parked wait takes to see a signal or the daemon's shutdown
# A blocking file's st_size, as sysfs gives its attributes: the kernel takes a size of 0 for an
# empty file and answers sendfile() 0 (EOF) without asking us; with a page the request comes.
PAGE = 4096


class Shutdown:
    """Daemon-wide flag: once set (end_waits), waits end at once with EINTR instead of parking
    again. The daemon then waits LONGEST_WAIT before it cancels the request nursery, so every
    blocked reader gets an answer on shutdown.
    """

    active = False


class _Wait:
    __slots__ = ("changed", "deadline", "interrupted", "pid", "process", "ready", "rescue", "seq")

    def __init__(self, changed: Changed, ready: Callable[[], bool], pid: int, deadline: float) -> None:
        self.changed = changed
        self.ready = ready
        self.pid = pid  # the task that opened the file: its process is asked about signals
        self.process: int | None = None  # found at its first look
        self.deadline = deadline
        self.interrupted = False
        self.rescue = False  # woken by its slice, not by a change
        self.seq = changed.seq  # what its waiter last saw of `changed`


class _Slices:
    """The waits parked now, looked at by one system task per trio run (a cancel scope per wait
    cost ~8 µs — a third of what a message cost in our layers). Each tick takes the waits whose
    slice is over from the front of a queue ordered by deadline, reads /proc for their
    processes in a worker thread, and wakes only a wait that has cause: a signal, data that came
    without a wake-up, the shutdown. 10,000 parked readers woken every slice for nothing took
    55 % of a core and held `cat status` up to 270 ms."""

    def __init__(self) -> None:
        self.parked: dict[int, _Wait] = {}
        self.lost_wakeups = 0
        self._keys = itertools.count()
        self._queue: collections.deque[tuple[float, int]] = collections.deque()
        self._run: object = None
        self._busy = trio.Event()

    def park(self, changed: Changed, ready: Callable[[], bool], pid: int) -> tuple[int, _Wait]:
        """Register a wait on `changed` by the opener `pid`: its key for `unpark`, its record."""
        run = trio.lowlevel.current_root_task()
        if run is not self._run:  # a new trio run (tests run many): a watcher for it
            self._run, self._busy = run, trio.Event()
            self.parked.clear()
            self._queue.clear()
            trio.lowlevel.spawn_system_task(self._watch)
        if not self.parked:
            self._busy.set()
        key = next(self._keys)
        deadline = trio.current_time() + SLICE
        wait = self.parked[key] = _Wait(changed, ready, pid, deadline)
        self._queue.append((deadline, key))  # deadlines only grow: the queue stays in order
        return key, wait

    def unpark(self, key: int) -> None:
        del self.parked[key]  # its queue entry is dropped when it comes up

    def _due(self, now: float) -> list[tuple[int, _Wait]]:
        due = []
        while self._queue and self._queue[0][0] <= now:
            _, key = self._queue.popleft()
            wait = self.parked.get(key)
            if wait is not None:
                due.append((key, wait))
        return due

    async def _watch(self) -> None:
        while True:
            if not self.parked:  # nothing to time: sleep until something parks
                self._queue.clear()
                self._busy = trio.Event()
                await self._busy.wait()
            await trio.sleep(TICK)
            due = self._due(trio.current_time())
            if not due:
                continue
            started = trio.current_time()
            try:
                hit = await trio.to_thread.run_sync(_signalled, [w for _, w in due])
            except Exception:
                log.exception("looking for signalled readers failed")
                hit = set()
            now = trio.current_time()
            # The probe may use a quarter of the time: with 10,000 parked processes a slice's
            # reads take ~0.4 s, and looking every 0.25 s kept 70 % of a core busy.
            deadline = now + max(SLICE, (now - started) / PROBE_SHARE)
            for key, wait in due:
                if key not in self.parked:  # ended while /proc was read
                    continue
                wait.deadline = deadline
                self._queue.append((deadline, key))
                try:
                    if wait.process in hit:
                        wait.interrupted = True
                    elif not Shutdown.active:
                        if wait.changed.seq != wait.seq or not wait.ready():
                            continue  # woken already, or nothing for it: it sleeps on
                        wait.rescue = True  # data came and no wake-up did
                    wait.changed.fire()  # its waiter looks again: signal, shutdown, readiness
                except Exception:  # a poll watcher's failure; this task must not end the run
                    log.exception("waking a parked wait failed")


def _signalled(waits: list[_Wait]) -> set[int]:
    """The processes among those of `waits` with a signal for them (worker thread: /proc)."""
    for wait in waits:
        if wait.process is None:
            wait.process = callers.process_of(wait.pid)
    return callers.signalled_processes({w.process or 0 for w in waits})


_slices = _Slices()


def end_waits() -> None:
    """The daemon stops: every parked wait answers EINTR now (its slice may be long under
    load), and any new one at once."""
    Shutdown.active = True
    for wait in list(_slices.parked.values()):
        wait.changed.fire()


def lost_wakeups() -> int:
    return _slices.lost_wakeups


def parked_waits() -> int:
    return len(_slices.parked)


async def wait_until(ready: Callable[[], bool], changed: Changed, nonblock: bool, pid: int = 0) -> None:
    """Return once `ready()`; EAGAIN at once if `nonblock`; EINTR once a task of the opener `pid`
    has a signal for it, or at shutdown."""
    if ready():
        return
    if nonblock:
        raise VfsError(EAGAIN, "nothing ready (O_NONBLOCK)")
    key, wait = _slices.park(changed, ready, pid)
    try:
        while not Shutdown.active:
            wait.seq = changed.seq
            await changed.wait(wait.seq)  # no checkpoint since ready() said no: nothing missed
            if ready():
                if wait.rescue:
                    _slices.lost_wakeups += 1
                    log.warning("a parked wait found its data only at its time slice (a lost wake-up)")
                return
            if wait.interrupted:
                raise VfsError(EINTR, "interrupted by a signal")
            wait.rescue = False
    finally:
        _slices.unpark(key)
    raise VfsError(EINTR, "the daemon is shutting down")


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


class OpenStream(OpenFile):
    # Seekable in name only (offsets are ignored, the data is a queue): `head -n1 file` seeks
    # back after a line and would report ESPIPE on a nonseekable regular file.
    direct_io = True

    def __init__(self, node: File, flags: int, caller: Caller, stream: Stream) -> None:
        super().__init__(node, flags, caller)
        self.stream = stream
        self.nonblock = bool(flags & os.O_NONBLOCK)
        self._poll_notify: Callable[[], None] | None = None
        self.gather = getattr(stream, "gather", False)

    async def read(self, off: int, size: int) -> bytes:
        if off == 0 and size == PAGE and callers.splicing(self.caller.pid):
            # The kernel (before "fuse: use copy_splice_read() for FOPEN_DIRECT_IO splice read")
            # splices these files through its page cache, sized by st_size: it would hand out
            # one short read as a whole page or end the stream there. Refused, busybox & co.
            # fall back to read().
            raise VfsError(EINVAL, "sendfile()/splice() cannot follow a blocking file here; use read()")
        await wait_until(self.stream.readable, self.stream.changed, self.nonblock, self.caller.pid)
        data = self.stream.read_now(size)
        if self.gather:
            data = await self._gather(data, size)
        return data

    async def _gather(self, data: bytes, size: int) -> bytes:
        """A byte stream's read takes what a writer in this daemon puts in once we freed its
        ring: with v2v's 64 KiB rings, returning each ringful made one READ round trip per
        64 KiB (114 MB/s for 1 MiB writes). One scheduling pass each, while it keeps coming."""
        while 0 < len(data) < size:
            await trio.lowlevel.checkpoint()
            try:
                more = self.stream.read_now(size - len(data)) if self.stream.readable() else b""
            except VfsError:
                break  # the next read reports it
            if not more:
                break
            data += more
        return data

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
                    await wait_until(
                        lambda n=left: stream.writable(n), stream.changed, self.nonblock, self.caller.pid
                    )
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
    audience = "private"  # what flows through it is the owner's

    def size(self) -> int:
        return PAGE

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

    async def open(self, flags: int, caller: Caller) -> OpenFile:
        self.check_open(flags)
        stream = self._opener(flags, caller)
        if not hasattr(stream, "readable"):
            stream = await stream  # type: ignore[misc]
        return OpenStream(self, flags, caller, stream)  # type: ignore[arg-type]
