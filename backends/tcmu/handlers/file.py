"""The `file` handler: an image file. `file/<path>` (so usually `file//abs/path`).

Only images inside the daemon's image directories are opened, and no symlink is followed
below an image directory (backends.beneath): what is checked is what is opened. A missing
image is created sparse at the device's size. I/O is vectored straight into the
engine's buffers (preadv/pwritev); flush is fdatasync; unmap punches holes; resize truncates.

Completion model: asynchronous (nr_threads = 0), as tcmu's rbd and glfs handlers are. Small
reads and writes (up to INLINE_MAX) complete at once on the event loop — a thread hop costs
more than a page-cache copy — while larger I/O, flushes and unmaps run on the device's own two
worker threads and complete through cmd.complete() from there. An image on tmpfs never waits
for a disk, so there everything completes inline, and reads of the data file reply straight
from a mapping of the image while the daemon holds a lease on it, as writes into pages it
already has are copied into it (`Lending`).
Locks are OFD locks on the image, so a second daemon using the same image is refused; the
holder's tag is stored beside the image (an xattr, or `<image>.vfs-lock`) for every daemon to read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import mmap
import os
import signal
import stat
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import trio

from backends.beneath import check_regular
from backends.errors import VfsError
from backends.tcmu import images
from backends.tcmu.device import Device
from backends.tcmu.handler import INVALID_LOCK_TAG, Command, Handler, LockState, Reconfig
from backends.tcmu.status import Sts

log = logging.getLogger("vfs.tcmu")
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
TAG_XATTR = "user.vfs.lock_tag"
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)


def punch_hole(fd: int, off: int, length: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


INLINE_MAX = 64 << 10
WORKERS = 2
TMPFS_MAGIC = 0x01021994


class State:
    def __init__(self, fd: int, dirfd: int, filename: str, where: tuple[Path, str], name: str) -> None:
        self.fd = fd
        self.dirfd = dirfd  # the image's directory (O_PATH): the lock tag file lives beside it
        self.filename = filename
        self.where = where  # (image dir, path inside it)
        self.locked = False
        self.pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=f"file-{name}")
        self.in_memory = _fs_type(fd) == TMPFS_MAGIC  # nothing on it can block for long
        self.lending = Lending(fd) if self.in_memory else None


# ---- reads from a mapping of the image, under a lease ------------------------------------------

MAPPED_MAX = 4 << 20
CHUNK = 1 << 20
MTIME_STEP = 1.0  # s
LEASE_RETRY = 1.0  # s between tries to lend again once the image was opened elsewhere
MIN_BREAK_TIME = 5  # s of fs.lease-break-time: less leaves a truncation too little time to wait
BREAK_TIME = Path("/proc/sys/fs/lease-break-time")


class Lending:
    """A shared mapping of an image on tmpfs that the data file's reads reply from — the
    minimal file's one copy instead of preadv's two — and its writes are copied into
    (half the time of pwritev there, which looks up and locks the page cache page by page).
    Touching a mapping past a file's end is SIGBUS, so the mapping is only used while the
    daemon holds a write lease on the image: any other open or truncate of it waits (up to
    fs.lease-break-time) until we give the lease back, which the SIGIO of the lease break has
    the loop do at once; I/O then goes through preadv/pwritev, as on any other filesystem, and
    the lease is taken again once nobody else has the image open. Only tmpfs: there a read of
    the mapping cannot meet an I/O error (SIGBUS again), and only where mincore says every
    page is in memory: a hole (or a page swapped out) is faulted in by allocating, SIGBUS
    where tmpfs is full. (A page swapped out between mincore and the copy would be read back
    from swap; only a failing swap device makes that SIGBUS.) Lent and taken back on the loop
    alone (see Handler.lend_read), or with the engine paused."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.view: memoryview | None = None  # the mapping, while the lease is held
        self._map: mmap.mmap | None = None
        self._addr = 0  # where it is mapped, for mincore
        self._pages = ctypes.create_string_buffer((MAPPED_MAX // CHUNK + 2) * CHUNK // mmap.PAGESIZE)
        self._size = 0  # mapped
        self._filled = bytearray()  # per CHUNK of the mapping: 1 once mincore found no hole in it
        self._touched = 0.0  # when the mtime was last set (writes to a mapping do not set it)
        self._next_try = 0.0
        self._lock = threading.RLock()  # reconfig and close take it back from a thread

    def lend(self, off: int, length: int, write: bool = False) -> memoryview | None:
        """The mapping's bytes for a transfer, or None where preadv/pwritev must do it."""
        if length > MAPPED_MAX:
            return None
        view = self.view
        if view is None:
            if time.monotonic() < self._next_try or not self._take():
                return None
            view = self.view
            assert view is not None
        end = off + length
        if end > self._size:
            return None  # past what was mapped (the image has grown since)
        unknown = self._filled.find(0, off // CHUNK, (end - 1) // CHUNK + 1) >= 0
        if unknown and not self._in_memory(off, length):
            return None  # a hole
        if write and (now := time.monotonic()) - self._touched >= MTIME_STEP:
            self._touched = now  # a write to a mapping sets no mtime: as pwritev would, to a second
            os.utime(self.fd)
        return view[off:end]

    def _in_memory(self, off: int, length: int) -> bool:
        """Every page of it is there, for a range `_filled` does not know full (lend looks
        there first, the hot path's test): touching a hole has tmpfs allocate a page in the fault,
        SIGBUS where it is full (preadv gives zeros, pwritev ENOSPC). mincore is asked once
        per CHUNK (a MiB costs it ~13 µs, 10 % of the copy): holes come back only by our own
        punch (`forget`) or from another process, whose open takes the mapping away."""
        first, last = off // CHUNK, (off + length - 1) // CHUNK
        base, page = first * CHUNK, mmap.PAGESIZE
        end = min((last + 1) * CHUNK, self._size)  # whole chunks, but not past the mapping
        if _libc.mincore(self._addr + base, end - base, self._pages) != 0:
            return False
        got = self._pages.raw[: (end - base) // page]
        per = CHUNK // page
        for i in range(first, last + 1):
            if b"\0" not in got[(i - first) * per : (i - first + 1) * per]:
                self._filled[i] = 1
        return b"\0" not in got[(off - base) // page : (off + length - base + page - 1) // page]

    def forget(self, off: int, length: int) -> None:
        """Holes may be punched in these bytes (unmap): ask mincore again there."""
        first, last = off // CHUNK, (off + length - 1) // CHUNK
        self._filled[first : last + 1] = bytes(len(self._filled[first : last + 1]))

    def _take(self) -> bool:
        self._next_try = time.monotonic() + LEASE_RETRY
        if not _watching_breaks():
            return False
        try:
            if int(BREAK_TIME.read_text()) < MIN_BREAK_TIME:
                return False
            fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except (OSError, ValueError):  # EAGAIN: open elsewhere (or by us twice); leases off
            return False
        try:  # the lease is held: the size cannot shrink from here on
            size = os.fstat(self.fd).st_size // mmap.PAGESIZE * mmap.PAGESIZE
            if size == 0:
                raise OSError(errno.EINVAL, "an empty image")
            mapped = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            log.info("not lending a mapping of the image: %s", e)
            fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return False
        with self._lock:
            self._map, self.view = mapped, memoryview(mapped)
            self._addr = ctypes.addressof(ctypes.c_char.from_buffer(mapped))  # (no export kept)
            self._size, self._filled = size, bytearray(-(-size // CHUNK))
            _LENDING.add(self)
        return True

    def breaking(self) -> bool:
        """Another process wants the image: the lease is on its way out."""
        try:
            return fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK
        except OSError:
            return True

    def give_back(self) -> None:
        """Stop lending and release the lease (no view may be in use: see the class)."""
        with self._lock:
            if self.view is None:
                return
            _LENDING.discard(self)
            self.view.release()
            assert self._map is not None
            try:
                self._map.close()
            except BufferError:  # a slice still referenced: unmapped when it goes
                log.warning("a view of the image mapping outlived its read")
            self._map = self.view = None
            self._next_try = time.monotonic() + LEASE_RETRY
            try:
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            except OSError as e:
                log.warning("releasing the image lease: %s", e)


_LENDING: set[Lending] = set()
_token: trio.lowlevel.TrioToken | None = None
_previous: Any = None  # the SIGIO handler before ours


def _watching_breaks() -> bool:
    """SIGIO (a lease break) runs `_breaks` on the loop; False where it cannot (not on the main
    thread, whose loop runs signal handlers) — no lease may be taken then: SIGIO kills."""
    global _token, _previous
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        _token = trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    if signal.getsignal(signal.SIGIO) is not _on_sigio:
        _previous = signal.signal(signal.SIGIO, _on_sigio)
        signal.siginterrupt(signal.SIGIO, False)  # SA_RESTART: other threads' calls go on
    return True


def _on_sigio(signum: int, frame: Any) -> None:
    # Not here and now: this may run between any two bytecodes of the loop, a reply's too.
    try:
        if _token is None:
            raise trio.RunFinishedError
        _token.run_sync_soon(_breaks)
    except trio.RunFinishedError:  # no loop, so no reply in flight
        _breaks()
    if callable(_previous):
        _previous(signum, frame)


def _breaks() -> None:
    for lending in list(_LENDING):
        if lending.breaking():
            log.info("the image was opened elsewhere: reads stop using its mapping")
            lending.give_back()


class FileHandler(Handler):
    name = "File-backed device"
    subtype = "file"
    cfg_desc = "file/<path to an image inside an --image-dir>; created sparse if missing"
    nr_threads = 0  # asynchronous: see the module docstring

    def confine(self, cfgstring: str) -> None:
        self._confined(cfgstring)

    def _confined(self, cfgstring: str) -> tuple[Path, str]:
        """Refuse now what open would refuse (a name outside, a symlink on the way, not a
        regular file), by the same walk; where the image is. A missing one is made at enable."""
        base, inside = self.locate(cfgstring)
        try:
            dirfd, _, fd = images.open_image(base, inside, os.O_PATH)
        except VfsError as e:
            if e.errno == errno.ENOENT:
                return base, inside
            if e.errno == errno.EACCES:
                reason = f"{base}/{inside} is outside the image dirs for all we know: {e.reason}"
                raise VfsError(e.errno, reason) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VfsError(errno.EINVAL, f"{base}/{inside} is not a regular file")
        finally:
            os.close(fd)
            os.close(dirfd)
        return base, inside

    def check_config(self, cfgstring: str) -> str | None:
        try:
            base, inside = self._confined(cfgstring)
        except VfsError as e:
            return e.reason
        if not (base / inside).parent.is_dir():
            return f"directory {(base / inside).parent} does not exist"
        return None

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        base, inside = where = self.locate(dev.config)
        dirfd, filename, fd = images.open_image(base, inside, os.O_RDWR | os.O_CREAT)
        try:
            check_regular(fd, f"{base}/{inside}")
            if os.fstat(fd).st_size < dev.size:
                os.ftruncate(fd, dev.size)  # sparse
        except BaseException:
            os.close(fd)
            os.close(dirfd)
            raise
        dev.private = State(fd, dirfd, filename, where, dev.name)
        return 0

    def close(self, dev: Device) -> None:
        state: State = dev.private
        if state.lending is not None:
            state.lending.give_back()
        state.pool.shutdown(wait=True)
        if state.locked:
            self.unlock(dev)
        os.close(state.fd)
        os.close(state.dirfd)

    @staticmethod
    def _run(work: Callable[[], None], failure: Sts) -> Sts:
        try:
            work()
        except OSError as e:
            log.error("image I/O failed: %s", e)
            return failure
        return Sts.OK

    def _dispatch(
        self, dev: Device, cmd: Command, work: Callable[[], None], failure: Sts, inline: bool
    ) -> int:
        if inline or dev.private.in_memory:
            cmd.complete(self._run(work, failure))
        else:
            dev.private.pool.submit(lambda: cmd.complete(self._run(work, failure)))
        return Sts.OK

    def reconfig(self, dev: Device, kind: Reconfig, value: Any) -> int:
        state: State = dev.private
        if kind is Reconfig.SIZE:
            if state.lending is not None:  # not mapped while it may shrink
                state.lending.give_back()
            os.ftruncate(state.fd, value)
            return 0
        if kind is Reconfig.WRITE_CACHE:
            return 0  # the engine flushes after each write when the cache is off
        try:
            if self.locate(value) != state.where:
                return -errno.EOPNOTSUPP  # another image needs a disable/enable
        except VfsError as e:
            return -e.errno
        return 0

    def read(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        fd = dev.private.fd
        return self._dispatch(
            dev, cmd, lambda: _read(fd, iovec, length, off), Sts.RD_ERR, length <= INLINE_MAX
        )

    def write(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        fd = dev.private.fd
        return self._dispatch(
            dev, cmd, lambda: _write(fd, iovec, length, off), Sts.WR_ERR, length <= INLINE_MAX
        )

    # At once, where read/write would complete inline: the engine's own path for the kernel's
    # ring and the data file, with no Command (see Handler.read_now). A long transfer on a disk
    # goes at once only where the page cache has it all (RWF_NOWAIT); else the threads do it.
    def read_now(self, dev: Device, iovec: list[memoryview], length: int, off: int) -> Sts | None:
        return _now(dev.private, _read, os.preadv, Sts.RD_ERR, iovec, length, off)

    def write_now(self, dev: Device, iovec: list[memoryview], length: int, off: int) -> Sts | None:
        return _now(dev.private, _write, os.pwritev, Sts.WR_ERR, iovec, length, off)

    def lend_read(self, dev: Device, off: int, length: int) -> memoryview | None:
        lending = dev.private.lending
        return None if lending is None else lending.lend(off, length)

    def lend_write(self, dev: Device, off: int, length: int) -> memoryview | None:
        lending = dev.private.lending
        return None if lending is None else lending.lend(off, length, write=True)

    def flush(self, dev: Device, cmd: Command) -> int:
        fd = dev.private.fd
        return self._dispatch(dev, cmd, lambda: os.fdatasync(fd), Sts.WR_ERR, inline=False)

    def flush_now(self, dev: Device) -> Sts | None:
        state: State = dev.private  # on tmpfs, where flush completes inline anyway
        return self._run(lambda: os.fdatasync(state.fd), Sts.WR_ERR) if state.in_memory else None

    def unmap(self, dev: Device, cmd: Command, off: int, length: int) -> int:
        fd = dev.private.fd
        if dev.private.lending is not None:
            dev.private.lending.forget(off, length)  # (before: a hole must never be known full)

        def work() -> None:
            try:
                punch_hole(fd, off, length)
            except OSError as e:
                if e.errno != errno.EOPNOTSUPP:
                    raise
                os.pwrite(fd, bytes(length), off)  # no holes here: write the zeros

        return self._dispatch(dev, cmd, work, Sts.WR_ERR, inline=False)

    # ---- locks: OFD locks exclude other daemons (and other open file descriptions) ----------

    def lock(self, dev: Device, tag: int) -> int:
        state: State = dev.private
        try:
            fcntl.fcntl(state.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return Sts.BUSY
            raise
        state.locked = True
        _store_tag(state, tag)
        return Sts.OK

    def unlock(self, dev: Device) -> int:
        state: State = dev.private
        if state.locked:
            _store_tag(state, INVALID_LOCK_TAG)
            fcntl.fcntl(state.fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK))
            state.locked = False
        return Sts.OK

    def get_lock_tag(self, dev: Device) -> tuple[int, int]:
        state: State = dev.private
        if not state.locked and _holder(state.fd) is None:
            return Sts.OK, INVALID_LOCK_TAG
        return Sts.OK, _load_tag(state)

    def get_lock_state(self, dev: Device) -> LockState:
        state: State = dev.private
        if state.locked:
            return LockState.WRITE_LOCKED
        return LockState.UNLOCKED


def _fs_type(fd: int) -> int:
    """statfs f_type of the filesystem holding `fd` (Python's os.fstatvfs does not give it)."""
    buf = ctypes.create_string_buffer(128)
    if _libc.fstatfs(fd, buf) != 0:
        return 0
    return int(struct.unpack_from("l", buf.raw, 0)[0])


def _read(fd: int, iovec: list[memoryview], length: int, off: int) -> None:
    done = os.preadv(fd, iovec, off)
    while done < length:  # a short read: a signal, or the end of a short image
        n = os.preadv(fd, _skip(iovec, done), off + done)
        if n == 0:  # past the end of a short image: zeros, as tcmu's file handler gives
            for view in _skip(iovec, done):
                view[:] = bytes(len(view))
            break
        done += n


def _write(fd: int, iovec: list[memoryview], length: int, off: int) -> None:
    done = os.pwritev(fd, iovec, off)
    while done < length:
        done += os.pwritev(fd, _skip(iovec, done), off + done)


def _now(
    state: State,
    whole: Callable[[int, list[memoryview], int, int], None],
    transfer: Callable[..., int],
    failure: Sts,
    iovec: list[memoryview],
    length: int,
    off: int,
) -> Sts | None:
    try:
        if length <= INLINE_MAX or state.in_memory:
            whole(state.fd, iovec, length, off)
        elif not _cached(transfer, state.fd, iovec, length, off):
            return None
    except OSError as e:
        log.error("image I/O failed: %s", e)
        return failure
    return Sts.OK


def _cached(transfer: Callable[..., int], fd: int, iovec: list[memoryview], length: int, off: int) -> bool:
    """The whole transfer done without waiting for the disk; False where it would wait (or the
    kernel cannot say): the caller does it again, in full, where waiting is fine."""
    try:
        return transfer(fd, iovec, off, os.RWF_NOWAIT) == length
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise


def _skip(iovec: list[memoryview], n: int) -> list[memoryview]:
    """The iovec without its first n bytes (after a short transfer)."""
    out = []
    for view in iovec:
        if n >= len(view):
            n -= len(view)
            continue
        out.append(view[n:])
        n = 0
    return out


def _flock(kind: int) -> bytes:
    # struct flock: l_type, l_whence (short, short), l_start, l_len (off_t), l_pid (int); l_pid 0 for OFD
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


def _holder(fd: int) -> int | None:
    """F_RDLCK/F_WRLCK if another open file description holds a conflicting lock, else None."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK))
    kind = struct.unpack("hhqqi4x", answer)[0]
    return None if kind == fcntl.F_UNLCK else kind


def _store_tag(state: State, tag: int) -> None:
    """On the image (an xattr through its fd), or in `<image>.vfs-lock` beside it, opened
    without following a symlink (one planted there would have the daemon write anywhere)."""
    value = str(tag).encode()
    try:
        os.setxattr(state.fd, TAG_XATTR, value)
        return
    except OSError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(f"{state.filename}.vfs-lock", flags, 0o600, dir_fd=state.dirfd)
    try:
        os.write(fd, value)
    finally:
        os.close(fd)


def _load_tag(state: State) -> int:
    try:
        return int(os.getxattr(state.fd, TAG_XATTR))
    except (OSError, ValueError):
        pass
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(f"{state.filename}.vfs-lock", flags, dir_fd=state.dirfd)
    except OSError:
        return INVALID_LOCK_TAG
    try:
        return int(os.read(fd, 64))
    except (OSError, ValueError):
        return INVALID_LOCK_TAG
    finally:
        os.close(fd)
