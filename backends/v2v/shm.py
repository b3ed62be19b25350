"""ShmTransport: a channel's shared area under the toolstack's directory (`shm:<dir>`), mapped
by each daemon that serves an end.

The listener makes it a sealed memfd (it can never shrink, so no process can pull pages from
under a mapping: a truncated file killed both daemons with SIGBUS) and hands it out on
`<dir>/<name>.sock` (SCM_RIGHTS) while it listens; a connector maps only memory whose seals say
so. Each end has a doorbell FIFO (one byte = "look again"; coalesced, so no polling and no lost
doorbell), and a lock file its daemon holds OFD-locked while the end is in use: the kernel drops
the lock when that process dies, which the other daemon sees at once through a blocked lock
request — xenstore's write-on-close `crashed`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

import trio

from backends.errors import VfsError
from backends.v2v import layout
from backends.v2v.layout import State
from backends.v2v.transport import Transport, peer_of

log = logging.getLogger("vfs.v2v")

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_HANDOVER = struct.Struct("<8sI")  # "VFSMEMFD", the memory's size; the fd rides along
_HANDOVER_WAIT = 0.5  # seconds a connector waits for the listener's daemon to hand it over


class ShmTransport(Transport):
    peers_elsewhere = True

    def __init__(self, wake: Callable[[str, bool], None], directory: str, name: str) -> None:
        super().__init__(wake)
        self.dir = Path(directory)
        self.name = name
        self.spec = f"shm:{directory}"
        self.sock_path = self.dir / f"{name}.sock"
        self._map: mmap.mmap | None = None
        self._memfd: int | None = None  # ours, while we listen: what the socket hands out
        self._server: socket.socket | None = None
        self._seen = 0  # the socket's inode when we fetched what is mapped
        self._use(memoryview(bytearray(layout.PAGE)))  # until mapped: "unready" everywhere
        layout.init_header(self.buf, 0, 0)
        self._bells: dict[str, int] = {}
        self._locks: dict[str, int] = {}
        self._tasks: dict[str, trio.CancelScope] = {}

    # ---- the shared memory ----------------------------------------------------------------------

    def _check_dir(self) -> None:
        if not self.dir.is_dir():
            raise VfsError(errno.ENOENT, f"transport directory {self.dir} does not exist")

    def _map_fd(self, fd: int, size: int) -> None:
        old, self._map = self._map, mmap.mmap(fd, size)
        self._use(memoryview(self._map), unmap=old)

    def state(self, role: str) -> State:
        if not self._locks and self._stale():  # another process listens (or listens anew)
            try:
                self.open_existing()
            except VfsError:
                pass
        return super().state(role)

    def _stale(self) -> bool:
        """Is there a listener's socket we have not fetched the memory from?"""
        try:
            return os.stat(self.sock_path).st_ino != self._seen
        except OSError:
            return False

    def create(self, prod_order: int, cons_order: int) -> None:
        """Fresh sealed memory for every session (v2v grants fresh pages per listen): nothing of
        the last session reaches the next; a daemon still mapping the old one keeps it."""
        self._check_dir()
        self._stop_serving()
        size = layout.total_size(prod_order, cons_order)
        fd = os.memfd_create(f"vfs-v2v-{self.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            self._map_fd(fd, size)
            layout.init_header(self.buf, prod_order, cons_order)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            fresh = self.dir / f".{self.name}.sock.new"
            fresh.unlink(missing_ok=True)
            server.bind(str(fresh))
            os.chmod(fresh, 0o600)
            server.listen(16)
            server.setblocking(False)
            os.rename(fresh, self.sock_path)
        except BaseException:
            os.close(fd)
            raise
        self._memfd, self._server = fd, server
        self._seen = os.stat(self.sock_path).st_ino

    async def _serve(self) -> None:
        """Hand the memory to every connector that asks, while we listen."""
        server, fd = self._server, self._memfd
        assert server is not None and fd is not None
        size = os.fstat(fd).st_size
        while True:
            await trio.lowlevel.wait_readable(server)
            try:
                conn, _ = server.accept()
            except BlockingIOError:
                continue
            except OSError:
                return  # closed under us: a new session or the end
            with conn:
                try:
                    socket.send_fds(conn, [_HANDOVER.pack(b"VFSMEMFD", size)], [fd])
                except OSError as e:
                    log.debug("handing %s's memory over failed: %s", self.name, e)

    def _stop_serving(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            try:
                if os.stat(self.sock_path).st_ino == self._seen:
                    self.sock_path.unlink()
            except OSError:
                pass
        if self._memfd is not None:
            os.close(self._memfd)  # the mapping keeps the memory while it lives
            self._memfd = None

    def open_existing(self) -> tuple[int, int]:
        self._check_dir()
        if self._memfd is not None:  # we listen here ourselves
            orders = layout.read_header(self.buf)
            assert orders is not None
            return orders
        try:
            seen = os.stat(self.sock_path).st_ino
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as conn:
                conn.settimeout(_HANDOVER_WAIT)
                conn.connect(str(self.sock_path))
                msg, fds, _, _ = socket.recv_fds(conn, _HANDOVER.size, 1)
        except (OSError, TimeoutError) as e:
            raise VfsError(errno.ECONNREFUSED, f"no listener on {self.sock_path}: {e}") from None
        if not fds:
            raise VfsError(errno.ECONNREFUSED, f"{self.sock_path} handed over no memory")
        fd = fds[0]
        try:
            if len(msg) != _HANDOVER.size or _HANDOVER.unpack(msg)[0] != b"VFSMEMFD":
                raise VfsError(errno.ECONNREFUSED, f"{self.sock_path} is not a vfs listener")
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            if seals & _SEALS != _SEALS:  # memory that could shrink under us: SIGBUS on a read
                raise VfsError(errno.ECONNREFUSED, f"{self.sock_path} handed over memory that is not sealed")
            size = os.fstat(fd).st_size
            if size < layout.RINGS:
                raise VfsError(errno.ECONNREFUSED, f"{self.sock_path} handed over too little memory")
            self._map_fd(fd, size)
        except OSError as e:
            raise VfsError(errno.ECONNREFUSED, f"{self.sock_path}: {e.strerror}") from None
        finally:
            os.close(fd)
        self._seen = seen
        orders = layout.read_header(self.buf)
        if orders is None or size < layout.total_size(*orders):
            raise VfsError(errno.ECONNREFUSED, f"{self.sock_path} handed over no valid channel header")
        return orders

    # ---- doorbells --------------------------------------------------------------------------------

    def _bell(self, role: str) -> int:
        fd = self._bells.get(role)
        if fd is None:
            path = self.dir / f"{self.name}.{role}.bell"
            try:
                os.mkfifo(path, 0o600)
            except FileExistsError:
                pass
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                raise VfsError(errno.EINVAL, f"{path} exists and is not a FIFO")
            # O_RDWR: never blocks, never sees EOF, whoever else has it open
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            self._bells[role] = fd
        return fd

    def notify(self, role: str) -> None:
        if role in self._tasks:  # served here: no need to go through the FIFO
            self.wake(role, True)
            return
        try:
            os.write(self._bell(role), b"\1")
        except BlockingIOError:
            pass  # the FIFO is full of unread rings: the peer will look anyway
        except OSError as e:
            log.warning("cannot ring %s's doorbell on %s: %s", role, self.name, e.strerror)

    async def _listen_bell(self, role: str) -> None:
        fd = self._bell(role)
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                while os.read(fd, 4096):
                    pass
            except BlockingIOError:
                pass
            self.wake(role, True)  # a doorbell does not say why: look at everything

    # ---- who serves which end: OFD locks the kernel drops with the process ---------------------

    def _lock_path(self, role: str) -> Path:
        return self.dir / f"{self.name}.{role}.lock"

    def claim(self, role: str) -> None:
        self._check_dir()
        if role in self._locks:
            return
        fd = os.open(self._lock_path(role), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise VfsError(
                    errno.EBUSY, f"the {role} of {self.name} is served by another process"
                ) from None
            raise
        self._locks[role] = fd

    def start(self, nursery: trio.Nursery, role: str) -> None:
        if role not in self._tasks:
            scope = trio.CancelScope()
            self._tasks[role] = scope
            serve = role == "listener" and self._server is not None

            async def run() -> None:
                with scope:
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(self._listen_bell, role)
                        if serve:
                            tasks.start_soon(self._serve)

            nursery.start_soon(run)

    def release(self, role: str) -> None:
        fd = self._locks.pop(role, None)
        if fd is not None:
            os.close(fd)  # closing the open file description drops its OFD lock
        scope = self._tasks.pop(role, None)
        if scope is not None:
            scope.cancel()
        if role == "listener":
            self._stop_serving()

    def peer_alive(self, role: str) -> bool:
        """Does some process hold the lock of the peer of `role`?"""
        fd = os.open(self._lock_path(peer_of(role)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
            return struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK
        finally:
            os.close(fd)

    async def watch_peer(self, role: str, on_gone: Callable[[], None]) -> None:
        """Block (in a thread) on the peer's lock: it is granted when the peer lets go or dies."""
        path = self._lock_path(peer_of(role))

        def wait() -> None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK))
            finally:
                os.close(fd)  # and with it the lock we were granted

        await trio.to_thread.run_sync(wait, abandon_on_cancel=True)
        on_gone()

    def close(self) -> None:
        for role in list(self._locks):
            self.release(role)
        self._stop_serving()
        for fd in self._bells.values():
            os.close(fd)
        self._bells.clear()


def _flock(kind: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)
