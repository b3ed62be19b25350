"""The binding's ceiling: the smallest pyfuse3 filesystem that serves a data file and a key.

    python -m bench.minimal_fs MOUNTPOINT SIZE

`data` is a bytearray of SIZE bytes (direct_io, memoryview slices); `key` holds a short value
(direct_io, rendered per read); `msg` is the least a blocking message file can be: a write
counts a message and keeps it, a read waits until one is counted (one WRITE, one READ and one
wakeup per message; one sender and one receiver, or it mixes them up). No checks, no engine,
nothing else: what Python + pyfuse3 cost.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE
DATA, KEY, MSG = ROOT + 1, ROOT + 2, ROOT + 3
NAMES = [(b"data", DATA), (b"key", KEY), (b"msg", MSG)]
INODES = dict(NAMES)


class Minimal(pyfuse3.Operations):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.key = b"42\n"
        self.msg, self.unread, self.arrived = b"", 0, trio.Event()

    def _attr(self, ino: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.st_mode = (stat.S_IFDIR | 0o755) if ino == ROOT else (stat.S_IFREG | 0o644)
        a.st_size = len(self.data) if ino == DATA else 4096
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        return a

    async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
        return self._attr(inode)

    async def lookup(self, parent: int, name: bytes, ctx: object) -> pyfuse3.EntryAttributes:
        ino = INODES.get(name)
        if parent != ROOT or ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(ino)

    async def opendir(self, inode: int, ctx: object) -> int:
        return inode

    async def readdir(self, fh: int, start: int, token: pyfuse3.ReaddirToken) -> None:
        for i, (name, ino) in enumerate(NAMES[start:], start + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), i):
                break

    async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        if fh == KEY:
            return self.key[off : off + size]
        if fh == MSG:
            while not self.unread:
                await self.arrived.wait()
            self.unread -= 1
            if not self.unread:
                self.arrived = trio.Event()  # a trio Event cannot be cleared
            return self.msg[:size]
        return self.view[off : off + size]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh == KEY:
            self.key = buf
            return len(buf)
        if fh == MSG:
            self.msg, self.unread = buf, self.unread + 1
            self.arrived.set()
            return len(buf)
        self.view[off : off + len(buf)] = buf
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        """Answered, not ENOSYS: ENOSYS makes the kernel stop sending fsync for the whole mount,
        which no file that keeps data could afford, so the fsync row would compare nothing."""

    async def setattr(
        self, inode: int, attr: object, fields: object, fh: object, ctx: object
    ) -> pyfuse3.EntryAttributes:
        return self._attr(inode)


def main() -> None:
    mountpoint, size = sys.argv[1], int(sys.argv[2])
    pyfuse3.init(Minimal(size), mountpoint, {"fsname=minimal", "auto_unmount", "default_permissions"})
    try:
        trio.run(pyfuse3.main, 3, 100)  # the daemon's worker settings (vfs/daemon.py MIN_TASKS)
    finally:
        pyfuse3.close(unmount=False)  # the bench unmounts it first; auto_unmount covers the rest


if __name__ == "__main__":
    main()
