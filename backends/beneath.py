"""Open a file inside a directory without following any symlink on the way, so that what is
checked is what is opened: a path resolved first and opened later can be swapped for a symlink
to anything in between (a race that let a device write outside its image directory).

openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV) where
the kernel has it (5.6+); otherwise a walk component by component with O_NOFOLLOW.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat

from backends.errors import VfsError

_SYS_OPENAT2 = 437  # the same number on every architecture (added after the syscall table merge)
_RESOLVE = 0x01 | 0x02 | 0x04 | 0x08  # NO_XDEV, NO_MAGICLINKS, NO_SYMLINKS, BENEATH
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_openat2_missing = False


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def components(relative: str) -> list[str]:
    """The names of a relative path; '..', '.' and empty names are refused, not resolved."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise VfsError(errno.EACCES, f"{relative!r} must be a plain path inside the directory (no '..')")
    return parts


def _walk(dirfd: int, parts: list[str], flags: int, mode: int) -> int:
    fd = os.dup(dirfd)
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
            if os.fstat(fd).st_dev != os.fstat(dirfd).st_dev:
                raise OSError(errno.EXDEV, "crosses a mount")
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)


def open_beneath(dirfd: int, relative: str, flags: int, mode: int = 0o600) -> int:
    """An fd for `relative` under the directory `dirfd`, or VfsError saying why not (EACCES for
    a symlink, a '..' or a mount crossed on the way)."""
    global _openat2_missing
    parts = components(relative)
    try:
        if not _openat2_missing:
            how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, _RESOLVE)
            name = os.fsencode(relative)
            fd = _libc.syscall(_SYS_OPENAT2, dirfd, name, ctypes.byref(how), ctypes.sizeof(how))
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err not in (errno.ENOSYS, errno.EPERM):  # EPERM: a seccomp filter that refuses it
                raise OSError(err, os.strerror(err))
            _openat2_missing = True
        return _walk(dirfd, parts, flags, mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            raise VfsError(
                errno.EACCES, f"{relative}: a symlink or another filesystem on the way ({e.strerror})"
            ) from None
        raise VfsError(e.errno or errno.EIO, f"{relative}: {e.strerror}") from None


def check_regular(fd: int, what: str) -> os.stat_result:
    """The opened file must be a regular file with one name: a hard link could be a file from
    outside the directory (made by whoever can write in it)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise VfsError(errno.EINVAL, f"{what} is not a regular file")
    if st.st_nlink > 1:
        raise VfsError(errno.EACCES, f"{what} has {st.st_nlink} hard links; one of them may be outside")
    return st
