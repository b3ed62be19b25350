"""The handler contract: Python's `struct tcmur_handler` (tcmu-runner.h).

A handler is a class. `name`, `subtype`, `cfg_desc`, `nr_threads`, `open` and `close` are
required; every other callout is optional and left as None when absent — the engine fills in
what it can (WRITE SAME by writes, COMPARE AND WRITE by read+compare+write), and `ops` lists
what a handler really has.

Completion models, as in tcmu-runner:
- `nr_threads > 0`: callouts are synchronous and run on at most `nr_threads` worker threads
  per device; their return value is the command's status.
- `nr_threads == 0`: callouts run on the daemon's event loop and must not block. Returning
  Sts.OK means "queued": the handler later calls `cmd.complete(status)`, from any thread.
  Any other return value fails the command at once.

`open` and `close` run on a worker thread (they may touch disks or the network), unless the
handler sets `open_blocks = False`: then they run on the event loop, which spares restoring
thousands of devices a thread hop each.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from backends.errors import VfsError
from backends.tcmu import images
from backends.tcmu.status import Sts

if TYPE_CHECKING:
    from backends.tcmu.device import Device

INVALID_LOCK_TAG = 0xFFFF


class LockState(IntEnum):
    UNKNOWN = 0
    UNLOCKED = 1
    READ_LOCKING = 2
    READ_LOCKED = 3
    WRITE_LOCKING = 4
    WRITE_LOCKED = 5


class Reconfig(IntEnum):
    """tcmulib_cfg_info types."""

    CFGSTRING = 0
    SIZE = 1
    WRITE_CACHE = 2


@dataclass
class HandlerContext:
    """What the daemon tells handlers: where images may live."""

    image_dirs: list[Path] = field(default_factory=list)


class Command:
    """One SCSI command as a callout sees it (struct tcmur_cmd)."""

    __slots__ = (
        "cdb",
        "iovec",
        "_sense",
        "read_len",
        "status",
        "_event",
        "_token",
        "_loop_thread",
        "timed_out",
    )

    def __init__(self, cdb: bytes, iovec: list[memoryview] | None = None) -> None:
        self.cdb = cdb
        self.iovec = iovec or []
        self._sense: bytearray | None = None
        self.read_len: int | None = None  # a handle_cmd handler may say how much it returned
        self.status: Sts | None = None
        self._event: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread = 0
        self.timed_out = False

    @property
    def sense(self) -> bytearray:
        """For Sts.PASSTHROUGH_ERR: the handler's own sense data (made on first use)."""
        if self._sense is None:
            self._sense = bytearray(96)
        return self._sense

    def complete(self, status: int) -> None:
        """The asynchronous completion (tcmur_cmd_complete); callable from any thread."""
        if self._loop_thread and threading.get_ident() != self._loop_thread:
            trio.from_thread.run_sync(self._finish, status, trio_token=self._token)
        else:
            self._finish(status)

    def _finish(self, status: int) -> None:
        if self.status is not None:
            return  # completed twice: the first one counts
        self.status = Sts.OK if status == 0 else Sts(status)
        if self._event is not None:
            self._event.set()

    async def completion(self) -> Sts:
        if self.status is None:
            self._event = trio.Event()
            await self._event.wait()
        assert self.status is not None
        return self.status

    def arm(self, token: trio.lowlevel.TrioToken, loop_thread: int) -> None:
        """Remember the loop so completions from worker threads find their way back."""
        self._token = token
        self._loop_thread = loop_thread


Callout = Callable[..., Any] | None


class Handler(ABC):
    """Subclass and set what your backstore does. Instances are shared by all their devices;
    per-device state belongs in `dev.private`."""

    name: ClassVar[str] = ""
    subtype: ClassVar[str] = ""
    cfg_desc: ClassVar[str] = ""
    nr_threads: ClassVar[int] = 0
    open_blocks: ClassVar[bool] = True  # False: open/close only touch memory

    OPTIONAL: ClassVar[tuple[str, ...]] = (
        "check_config",
        "reconfig",
        "handle_cmd",
        "read",
        "write",
        "flush",
        "unmap",
        "writesame",
        "caw",
        "lend",
        "lend_read",
        "lend_write",
        "read_now",
        "write_now",
        "flush_now",
        "report_event",
        "lock",
        "unlock",
        "get_lock_tag",
        "get_lock_state",
        "init",
        "destroy",
    )

    # check_config(cfgstring) -> None if fine, else the reason (str)
    check_config: Callable[[str], str | None] | None = None
    # reconfig(dev, Reconfig, value) -> 0 or -errno
    reconfig: Callable[[Device, Reconfig, Any], int] | None = None
    handle_cmd: Callout = None  # (dev, cmd) -> Sts
    read: Callout = None  # (dev, cmd, iovec, length, offset) -> Sts; fill every byte of iovec
    write: Callout = None  # (dev, cmd, iovec, length, offset) -> Sts
    flush: Callout = None  # (dev, cmd) -> Sts
    unmap: Callout = None  # (dev, cmd, offset, length) -> Sts
    writesame: Callout = None  # (dev, cmd, offset, length, iovec) -> Sts
    caw: Callout = None  # (dev, cmd, offset, length, iovec) -> Sts; iovec = compare half + write half
    # lend(dev, offset, length) -> memoryview: for contents that are memory (ram), the bytes
    # themselves. The engine then copies into and out of them itself, without building a
    # command, and the data file's reads reply to the kernel straight from them — the only
    # copy (in tcmu-runner the kernel's data area is the buffer). So lend only where a write
    # is nothing but a copy. Called on the loop or the kernel ring's thread, never mid-reconfig.
    lend: Callable[[Device, int, int], memoryview] | None = None
    # lend_read(dev, offset, length) -> memoryview, or None where not now: the bytes a read of
    # the data file replies with, without a copy, for contents that are mapped memory but
    # whose writes are I/O (file on tmpfs). Called on the loop only, never mid-reconfig; the
    # view is used before the loop's next checkpoint, so taking the memory back on the loop is
    # safe.
    lend_read: Callable[[Device, int, int], memoryview | None] | None = None
    # lend_write(dev, offset, length) -> memoryview, or None where not now: the same for a
    # write of the data file, where copying into the view is all the write is (pages the
    # mapping has already). Called as lend_read is.
    lend_write: Callable[[Device, int, int], memoryview | None] | None = None
    # read_now / write_now (dev, iovec, length, offset) -> Sts, or None where this one cannot
    # be done at once (too long to block for): the same I/O as read/write, done on the calling
    # thread and finished on return, with no Command. The engine calls them from the loop and
    # the kernel ring's own thread, possibly at once, never mid-reconfig, and falls back to
    # read/write on None. For I/O that ends as soon as the page cache or memory answers
    # (tcmu-runner's inline completions).
    read_now: Callable[[Device, list[memoryview], int, int], Sts | None] | None = None
    write_now: Callable[[Device, list[memoryview], int, int], Sts | None] | None = None
    # flush_now(dev) -> Sts, or None where not at once: `flush` done on the loop with no
    # Command, beside `flush` (which SYNCHRONIZE CACHE needs), where emptying the cache ends at
    # once: nothing to empty (ram), or an image on tmpfs. Called on the loop, never mid-reconfig.
    flush_now: Callable[[Device], Sts | None] | None = None
    report_event: Callable[[Device], int] | None = None
    lock: Callable[[Device, int], int] | None = None  # (dev, tag) -> Sts
    unlock: Callable[[Device], int] | None = None
    get_lock_tag: Callable[[Device], tuple[int, int]] | None = None  # -> (Sts, tag)
    get_lock_state: Callable[[Device], LockState] | None = None
    init: Callable[[], int | None] | None = None
    destroy: Callable[[], None] | None = None

    def __init__(self, context: HandlerContext) -> None:
        self.context = context

    @abstractmethod
    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        """Open the backstore for `dev` (dev.config, dev.size, dev.block_size); 0 or -errno.
        May adjust dev.block_size, dev.num_lbas, dev.max_xfer_len, unmap limits, write cache."""

    @abstractmethod
    def close(self, dev: Device) -> None:
        """Release what open took."""

    def confine(self, cfgstring: str) -> None:  # noqa: B027  (optional; most reach nothing outside)
        """Raise VfsError (EACCES, EINVAL) for a cfgstring naming what this daemon must not
        reach, or that cannot be one; called when `config` is written, not only at enable."""

    def refusal(self, cfgstring: str) -> str | None:
        """Why `confine` refuses the cfgstring, or None: a check_config can start from it."""
        try:
            self.confine(cfgstring)
        except VfsError as e:
            return e.reason
        return None

    def locate(self, cfgstring: str) -> tuple[Path, str]:
        """For handlers whose cfgstring is `<subtype>/<absolute path>`: (image dir, path inside
        it), or VfsError saying why the path is not allowed (backends.tcmu.images)."""
        return images.locate(self.handler_part(cfgstring), self.context.image_dirs, cfgstring)

    @classmethod
    def ops(cls) -> list[str]:
        """The optional callouts this handler implements."""
        return [name for name in cls.OPTIONAL if getattr(cls, name, None) is not None]

    def passthrough_only(self) -> bool:
        return self.handle_cmd is not None and self.read is None and self.write is None and self.flush is None

    @staticmethod
    def handler_part(cfgstring: str) -> str:
        """What follows `<subtype>/` in a cfgstring."""
        return cfgstring.split("/", 1)[1] if "/" in cfgstring else ""
