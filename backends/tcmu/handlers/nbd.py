"""The `nbd` handler: any NBD server as a backstore, through libnbd (Debian's python3-libnbd).

`nbd/unix:<socket>` for a server on a Unix socket, which must lie inside an `--image-dir` (the
daemon is usually root: a socket's mode is its only lock, so the same rule as for images);
`nbd/nbd://host[:port][/export]` for one over TCP (reaching a port gives the daemon nothing a
local user could not do). So every nbdkit plugin and qemu-nbd or qemu-storage-daemon export
becomes a device.

Completion model: asynchronous (nr_threads = 0). Each command becomes libnbd aio calls made on
the event loop, one per iovec entry, reading into and writing from the engine's buffers
themselves (handed over as memoryviews: libnbd 1.14's nbd.Buffer path leaks a reference to
the buffer it wraps, 4 KiB a 4 KiB read); a task per device waits on the socket and
hands it to libnbd, whose completion callbacks then finish the commands on the loop. Many
commands are in flight at once, answered in any order, as NBD allows.

With the device's write cache on (WCE, the default where the server can flush), a write is a
write-back cache's: answered once a copy of it is with libnbd, not when the server replies, as
`file` answers once the page cache has it. NBD orders nothing in flight, so a request that
overlaps such a write waits for the server's reply to it (and what came after a waiting one
waits behind it); a flush waits for all, and a write the server then failed fails the next
flush (EIO on fsync, the reason logged). FUSE takes the inode lock for every O_DIRECT write
(libfuse 3.14 cannot ask for parallel ones), so without this a 4 KiB write waited a whole
round trip to the server with nothing else moving. UNMAP is NBD's WRITE
ZEROES with holes allowed: unmapped blocks read zeros, which the engine promises and a bare
TRIM does not. A server that goes away is a conn_lost event; the device reconnects every
second until it answers, its commands BUSY meanwhile.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
import urllib.parse
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from backends.errors import VfsError
from backends.tcmu import images
from backends.tcmu.device import Device
from backends.tcmu.handler import Command, Handler, HandlerContext, Reconfig
from backends.tcmu.handlers.binding import Binding
from backends.tcmu.status import Sts

nbd = Binding("nbd", "python3-libnbd")  # a Debian package, not on PyPI

log = logging.getLogger("vfs.tcmu")
# LIBNBD_AIO_DIRECTION_READ and _WRITE, libnbd's stable ABI: named here, not read from the
# binding, so that registering the handler does not load libnbd.
READ, WRITE = 1, 2
# A Unix socket's send buffer (net.core.wmem_default, 208 KiB) holds a fifth of a 1 MiB write:
# each request took five fill-and-drain rounds, a wake-up on both sides each. With room for
# whole requests 1 MiB writes went 15-70 % faster to qemu-storage-daemon (qcow), 24-41 % to
# nbdkit. net.core.wmem_max caps what may be asked (its default is that same 208 KiB), so a
# root daemon forces it (a bound of its own, for its own server). TCP tunes its own: left alone.
UNIX_SNDBUF = 4 << 20
SO_SNDBUFFORCE = 32  # asm-generic/socket.h: Python's socket module does not name it
# Bytes of writes answered early (see the module docstring) whose server reply is still to come:
# their copies are held meanwhile; past this a write waits for its reply, as with WCE off.
EARLY_LIMIT = 8 << 20
EVERYTHING = (0, 1 << 64)  # the span a flush waits on
DRAIN_TIMEOUT = 10.0  # seconds a close waits for the replies to early writes


class Link:
    """One libnbd connection and the task on the event loop that moves its bytes."""

    def __init__(self, handle: nbd.NBD, dev: Device) -> None:
        self.h = handle
        self.dev = dev
        self.fd = handle.aio_get_fd()
        _widen(self.fd)
        self.size = handle.get_size()
        self.can_flush = handle.can_flush()
        self.can_zero = handle.can_zero()
        self.closing = False
        self.scope: trio.CancelScope | None = None  # the pump's wait on the socket
        self.replies_only = False  # ... and it waits to read, not to write
        self.stopped = trio.Event()
        self.reported = False  # conn_lost raised for this connection
        self.server: Any = None  # what serves the export, where the handler runs it (qcow)
        # The write-back cache (module docstring): spans of early-answered writes at the server,
        # the bytes answered and not yet replied to, the requests waiting their turn (in order),
        # and how many early writes the server failed that no flush has reported yet.
        self.sent: dict[int, tuple[int, int]] = {}
        self.early_bytes = 0
        self.held: deque[tuple[tuple[int, int], Command, Callable[[], int]]] = deque()
        self.early_failed = 0
        self._keys = itertools.count()
        # libnbd must not be called from its own callbacks (it holds the handle's lock there):
        # what a reply lets start is started once the call that ran the callback has returned.
        self.release_due = False

    async def pump(self) -> None:
        """Wait on the socket in whichever direction libnbd needs; completions run in here."""
        try:
            while not self.closing:
                direction = self.h.aio_get_direction()
                if not direction:  # dead: libnbd has failed what was in flight
                    break
                ready = 0
                with trio.CancelScope() as self.scope:
                    self.replies_only = direction == READ
                    ready = await self._wait(direction)
                self.scope = None
                if ready & READ:
                    self.h.aio_notify_read()
                elif ready & WRITE:
                    self.h.aio_notify_write()
                if self.release_due:
                    self._release()
        except nbd.Error as e:
            if not self.closing:
                log.error("device %s: NBD connection failed: %s", self.dev.name, e)
        except Exception:  # a system task's exception would end the daemon: this device only
            log.exception("device %s: NBD connection failed", self.dev.name)
        finally:
            self.stopped.set()
            if self.release_due:  # the dead handle fails what still waited
                self._release()
        self.lost()

    def lost(self) -> None:
        """The server went away (or said it is going): reconnect, once per connection."""
        if not self.closing and not self.reported:
            self.reported = True
            self.dev.notify_conn_lost()

    async def _wait(self, direction: int) -> int:
        """READ or WRITE once the socket is ready for it (READ if both)."""
        if direction == READ:
            await trio.lowlevel.wait_readable(self.fd)
            return READ
        if direction == WRITE:
            await trio.lowlevel.wait_writable(self.fd)
            return WRITE
        ready = 0

        async def wait(fn: Callable[[int], Any], bit: int, scope: trio.CancelScope) -> None:
            nonlocal ready
            await fn(self.fd)
            ready |= bit
            scope.cancel()

        async with trio.open_nursery() as nursery:  # both: a full pipe each way must not stall
            nursery.start_soon(wait, trio.lowlevel.wait_readable, READ, nursery.cancel_scope)
            nursery.start_soon(wait, trio.lowlevel.wait_writable, WRITE, nursery.cancel_scope)
        return ready

    def kick(self) -> None:
        """After a submission: if libnbd could not send it all, the pump must wait to write too."""
        if self.release_due:  # a callback ran inside the submission
            self._release()
        if self.replies_only and self.scope is not None and self.h.aio_get_direction() & WRITE:
            self.scope.cancel()

    def stop(self) -> None:
        self.closing = True
        if self.scope is not None:
            self.scope.cancel()

    def in_order(self, span: tuple[int, int], cmd: Command, start: Callable[[], int]) -> int:
        """`start()` now, or (returning OK: the command is taken) once no early write at the
        server overlaps `span` and the requests waiting before this one have started."""
        if self.held or (self.sent and self._overlaps(span)):  # (a read's hot path: no scan)
            self.held.append((span, cmd, start))
            return Sts.OK
        return start()

    def queue(
        self, span: tuple[int, int], cmd: Command, failure: Sts, calls: list[Callable[..., Any]]
    ) -> int:
        """`submit` in its turn (see in_order)."""
        return self.in_order(span, cmd, lambda: self.submit(cmd, failure, calls))

    def _overlaps(self, span: tuple[int, int]) -> bool:
        lo, hi = span
        return any(s < hi and lo < e for s, e in self.sent.values())

    def write_early(self, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        """Answer the write now and send a copy of it (module docstring)."""
        copy = memoryview(b"".join(iovec))  # one copy, however many entries
        self.early_bytes += length
        span = (off, off + length)

        def start() -> int:
            key = next(self._keys)
            self.sent[key] = span

            def done(err: Any) -> int:
                why = f"{errno.errorcode.get(err.value, err.value)} from the server" if err.value else ""
                self._replied(key, why)
                self.release_due = True
                return 1

            try:
                self.h.aio_pwrite(copy, off, completion=done)
            except nbd.Error as e:  # (what waits behind it is started by the caller's loop)
                self._replied(key, str(e))
            self.kick()
            return Sts.OK

        self.in_order(span, cmd, start)
        cmd.complete(Sts.OK)
        return Sts.OK

    def _replied(self, key: int, failure: str) -> None:
        """An early write is done with (`failure`: why it did not reach the server, or "")."""
        lo, hi = self.sent.pop(key)
        self.early_bytes -= hi - lo
        if failure:
            self.failed_early(failure)

    def failed_early(self, why: str) -> None:
        """An answered write did not reach the server: the next flush must fail."""
        log.error("device %s: a write already answered failed (%s): the next flush fails", self.dev.name, why)
        self.early_failed += 1
        if self.dev.engine is not None:
            self.dev.engine.dirty = True  # so that the next flush comes to the handler

    def _release(self) -> None:
        """Start the waiting requests that may go now, in their order."""
        self.release_due = False
        held = self.held
        while held and not self._overlaps(held[0][0]):
            _, cmd, start = held.popleft()
            sts = start()
            if sts is not Sts.OK:
                cmd.complete(sts)

    def submit(self, cmd: Command, failure: Sts, calls: list[Callable[[Callable[..., int]], Any]]) -> int:
        """Start `calls` (each given the completion callback); the command completes when all
        have: OK, `failure` if any failed, BUSY (the initiator retries) if the server is stopping."""
        pending = len(calls)
        status = Sts.OK

        def done(err: Any) -> int:
            nonlocal pending, status
            pending -= 1
            if err.value:
                log.debug("device %s: NBD server answered %s", self.dev.name, errno.errorcode.get(err.value))
                if err.value == errno.ESHUTDOWN:  # nbdkit's answer while it stops
                    status = Sts.BUSY
                    self.lost()
                elif status is Sts.OK:
                    status = failure
            if pending == 0:
                cmd.complete(status)
            return 1  # retire it: nothing asks for it later

        for i, call in enumerate(calls):
            try:
                call(done)
            except nbd.Error as e:
                log.error("device %s: NBD request refused: %s", self.dev.name, e)
                if i == 0:
                    return failure
                status = failure
                pending -= len(calls) - i
                if pending == 0:
                    cmd.complete(failure)
                break
        self.kick()
        return Sts.OK


def connect(dev: Device, target: str, image_dirs: list[Any]) -> nbd.NBD:
    """A connected handle for a cfgstring's handler part (see the module docstring)."""
    h = nbd.NBD()
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        if not path.startswith("/"):
            raise VfsError(errno.EINVAL, f"nbd/unix: needs an absolute socket path, not {path!r}")
        base, inside = images.locate(path, image_dirs, dev.config)
        fd = images.open_path(base, inside)
        try:
            h.connect_unix(f"/proc/self/fd/{fd}")  # the very socket found beneath the image dir
        finally:
            os.close(fd)
    else:
        h.connect_uri(target)
    return h


def check_target(target: str) -> str | None:
    """Why a handler part names no NBD server vfs may use, or None."""
    if target.startswith("unix:"):
        return None if target[len("unix:") :].startswith("/") else "nbd/unix: needs an absolute socket path"
    url = urllib.parse.urlsplit(target)
    if url.scheme != "nbd" or not url.hostname:
        return f"nbd takes nbd/unix:/path/to/socket or nbd/nbd://host[:port][/export], not {target!r}"
    if url.query:
        return "nbd:// URIs take no query here (a socket is nbd/unix:/path)"
    return None


class NbdHandler(Handler):
    name = "NBD server"
    subtype = "nbd"
    cfg_desc = "nbd/unix:<socket inside an --image-dir> or nbd/nbd://host[:port][/export]"
    nr_threads = 0  # asynchronous: see the module docstring

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        # early writes the server failed on a device's last connection, for its next one
        self.unreported: dict[str, int] = {}

    def check_config(self, cfgstring: str) -> str | None:
        return check_target(self.handler_part(cfgstring)) or self.refusal(cfgstring)

    def confine(self, cfgstring: str) -> None:
        target = self.handler_part(cfgstring)
        if target.startswith("unix:/"):
            images.locate(target[len("unix:") :], self.context.image_dirs, cfgstring)

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        reason = check_target(self.handler_part(dev.config))
        if reason:
            raise VfsError(errno.EINVAL, reason)
        try:
            handle = connect(dev, self.handler_part(dev.config), self.context.image_dirs)
        except nbd.Error as e:
            raise VfsError(_code(e), f"cannot reach the NBD server: {e.string}") from None
        self.attach(dev, handle, reopen)
        return 0

    def attach(self, dev: Device, handle: nbd.NBD, reopen: bool) -> None:
        """Check the export fits the device, then start serving it (on a worker thread); a
        reopen's connection carries the failures of the last one's early writes."""
        # Reads land in the engine's buffers, which a failed read never hands on: zeroing each
        # one first (libnbd's default) cost ~45 us a MiB for nothing.
        handle.set_pread_initialize(False)
        link = Link(handle, dev)
        minimum = handle.get_block_size(nbd.SIZE_MINIMUM)
        if handle.is_read_only():
            raise VfsError(errno.EROFS, "the NBD export is read-only")
        if link.size < dev.size:
            raise VfsError(errno.EINVAL, f"the NBD export has {link.size} bytes, fewer than size {dev.size}")
        if minimum > dev.block_size:
            raise VfsError(
                errno.EINVAL, f"the NBD export's blocks are {minimum} bytes, larger than block_size"
            )
        dev.write_cache = dev.write_cache and link.can_flush  # nothing to flush: write-through
        failed = self.unreported.pop(dev.name, 0)
        link.early_failed = failed if reopen else 0
        dev.private = link
        trio.from_thread.run_sync(trio.lowlevel.spawn_system_task, link.pump)

    def close(self, dev: Device) -> None:
        link: Link = dev.private

        async def stop() -> None:
            with trio.move_on_after(DRAIN_TIMEOUT):  # the replies to writes answered early
                while link.early_bytes and not link.stopped.is_set():
                    await trio.sleep(0.005)  # (a close is rare: no event for it)
            link.stop()
            await link.stopped.wait()
            if link.early_bytes:
                link.failed_early(
                    f"no reply to {link.early_bytes} bytes within {DRAIN_TIMEOUT:g} s of a close"
                )
            # waiting on those: the initiator retries (an early write among them was answered
            # already, and a command's first answer is the one that counts)
            for _, cmd, _ in link.held:
                cmd.complete(Sts.BUSY)

        trio.from_thread.run(stop)
        try:
            link.h.shutdown()  # tells the server we are done (NBD_CMD_DISC)
        except nbd.Error:
            pass  # already gone
        if link.early_failed:  # for the next connection's first flush, if a reopen makes one
            self.unreported[dev.name] = link.early_failed
        dev.private = None  # the last reference: libnbd closes the socket now

    def reconfig(self, dev: Device, kind: Reconfig, value: Any) -> int:
        link: Link = dev.private
        if kind is Reconfig.SIZE:
            if value > link.size:
                log.error("device %s: the NBD export has %d bytes; %d do not fit", dev.name, link.size, value)
                return -errno.EFBIG
            return 0
        if kind is Reconfig.WRITE_CACHE:
            return 0
        return -errno.EOPNOTSUPP  # another server needs a disable/enable

    def read(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        link: Link = dev.private
        return link.queue((off, off + length), cmd, Sts.RD_ERR, _spread(link.h.aio_pread, iovec, off))

    def write(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        link: Link = dev.private
        if dev.write_cache and link.early_bytes + length <= EARLY_LIMIT:
            return link.write_early(cmd, iovec, length, off)
        return link.queue((off, off + length), cmd, Sts.WR_ERR, _spread(link.h.aio_pwrite, iovec, off))

    def flush(self, dev: Device, cmd: Command) -> int:
        link: Link = dev.private
        if not link.can_flush:
            cmd.complete(Sts.OK)  # the server writes through (and no write was answered early)
            return Sts.OK

        def start() -> int:
            if link.early_failed:  # reported once, as a disk reports a failed write-back
                link.early_failed = 0
                return Sts.WR_ERR
            return link.submit(cmd, Sts.WR_ERR, [lambda done: link.h.aio_flush(completion=done)])

        return link.in_order(EVERYTHING, cmd, start)

    def unmap(self, dev: Device, cmd: Command, off: int, length: int) -> int:
        link: Link = dev.private
        if link.can_zero:  # holes allowed: the server may deallocate them
            calls = [lambda done: link.h.aio_zero(length, off, completion=done)]
        else:
            calls = _spread(link.h.aio_pwrite, [memoryview(bytearray(length))], off)
        return link.queue((off, off + length), cmd, Sts.WR_ERR, calls)


def _widen(fd: int) -> None:
    """Room in a Unix socket's send buffer for whole requests (see UNIX_SNDBUF)."""
    sock = socket.socket(fileno=os.dup(fd))  # a dup: libnbd owns (and closes) the fd
    try:
        if sock.family == socket.AF_UNIX:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, UNIX_SNDBUF)  # CAP_NET_ADMIN
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SNDBUF)  # up to wmem_max
    finally:
        sock.close()


def _spread(fn: Callable[..., Any], iovec: list[memoryview], off: int) -> list[Callable[[Any], Any]]:
    """One aio call per iovec entry, each at its own offset, on the entry's own bytes."""
    calls = []
    for view in iovec:
        if len(view):
            calls.append(lambda done, v=view, o=off: fn(v, o, completion=done))
            off += len(view)
    return calls


def _code(e: nbd.Error) -> int:
    """The errno of a libnbd error (EIO where it names none)."""
    return e.args[1] if len(e.args) > 1 and e.args[1] else errno.EIO
