"""The FUSE face: one pyfuse3 Operations class that only translates requests to node calls.

Every handler is wrapped: a VfsError becomes its errno (and its reason the owning object's
`last_error`); any other exception becomes EIO plus a logged traceback. Nothing a request
does can take the mount down (README: how every file behaves).
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import logging
import os
import reprlib
import time
from collections.abc import Awaitable, Callable, Sequence
from errno import EACCES, EAGAIN, EBADF, EINTR, EINVAL, EISDIR, ENODEV, ENOENT, ENOTDIR, EPERM, EXDEV
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from backends.errors import VfsError
from vfs.fuse.inodes import InodeTable
from vfs.fuse.invalidate import forget_attributes
from vfs.tree.access import AccessBook, key, under
from vfs.tree.nodes import STABLE_TIMEOUT, Caller, Dir, File, Node, OpenFile, Symlink

log = logging.getLogger("vfs.fuse.operations")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def translated(fn: F) -> F:
    """Map VfsError to its errno and anything unexpected to EIO plus a traceback in the log."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        self.requests[name] += 1  # the metrics' vfs_fuse_requests_total
        try:
            return await fn(self, *args)
        except Exception as e:
            raise fuse_error(name, e, args) from None

    return cast(F, wrapper)


def fuse_error(name: str, e: Exception, args: tuple[Any, ...]) -> pyfuse3.FUSEError:
    """What `translated` raises for `e`; the log has a traceback of anything unexpected."""
    if isinstance(e, pyfuse3.FUSEError):
        return e
    if isinstance(e, VfsError):
        return pyfuse3.FUSEError(e.errno)
    log.error("internal error in %s%s", name, reprlib.repr(args[:3]), exc_info=e)  # not 1 MiB of data
    return pyfuse3.FUSEError(5)  # EIO


def path_of(node: Node | None) -> str:
    """The node's path in the tree ("" for the root)."""
    names = []
    while node is not None and node.parent is not None:
        names.append(node.name)
        node = node.parent
    return "/".join(reversed(names))


def caller_of(ctx: pyfuse3.RequestContext | None) -> Caller:
    if ctx is None:
        return Caller(0, 0, 0)
    return Caller(ctx.pid, ctx.uid, ctx.gid)


class DirListing:
    """One opendir: a snapshot ordered by inode number, so the cursor survives changes."""

    def __init__(self, node: Dir) -> None:
        self.node = node
        self.entries: list[tuple[int, str, Node]] | None = None
        self.inos: list[int] = []


class Operations(pyfuse3.Operations):
    """No `flush`: pyfuse3 answers it ENOSYS, and the kernel then stops sending FLUSH — one
    round trip less per close. Nothing here needs it: fsync is separate, values apply at write."""

    supports_dot_lookup = True
    enable_writeback_cache = False  # would merge message writes into one

    def __init__(self, root: Dir, access: AccessBook | None = None) -> None:
        super().__init__()
        self.root = root
        self.inodes = InodeTable(root)
        self.access = access or AccessBook(os.getuid(), os.getgid())
        self.started_ns = time.time_ns()
        self._open_files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirListing] = {}
        self._fh = itertools.count(1)
        self.requests: collections.Counter[str] = collections.Counter()  # by FUSE operation
        self.on_refused: Callable[[str, VfsError], None] | None = None  # (object path, error)

    # ---- errors ------------------------------------------------------------------------------

    def _fail(self, node: Node | None, error: VfsError) -> VfsError:
        """Record a refusal on the owning object for people; log it for operators."""
        if error.errno in (EAGAIN, EINTR):  # a wait that ends, not a refusal
            return error
        owner = node.owner() if node is not None else None
        if owner is not None:
            owner.record(error)
        log.info("refused: %s", error.reason)
        if self.on_refused is not None:
            self.on_refused(path_of(owner), error)
        return error

    async def _on(self, node: Node | None, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as e:
            self._blame(node, e)
            raise

    def _blame(self, node: Node | None, e: Exception) -> None:
        if isinstance(e, VfsError):
            self._fail(node, e)
            return
        owner = node.owner() if node is not None else None
        if owner is not None:  # also record that something broke, beyond the log's traceback
            owner.record(VfsError(5, f"internal error ({type(e).__name__}: {e}); see the daemon log"))

    # ---- attributes --------------------------------------------------------------------------

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inodes.number(node)
        a.generation = node.generation
        a.st_uid, a.st_gid, perm = self.access.resolve(node)
        a.st_mode = node.kind | perm
        a.st_nlink = 2 if isinstance(node, Dir) else 1
        a.st_size = node.size()
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self.started_ns
        a.attr_timeout = node.attr_timeout
        parent = node.parent
        a.entry_timeout = 0 if parent is None or parent.volatile else STABLE_TIMEOUT
        return a

    def _dir(self, ino: int) -> Dir:
        node = self.inodes.get(ino)
        if not isinstance(node, Dir):
            raise VfsError(ENOTDIR, "not a directory")
        if node.detached:
            raise VfsError(ENOENT, "the object was removed")
        return node

    def _open_file(self, fh: int) -> OpenFile:
        opened = self._open_files.get(fh)
        if opened is None:
            raise VfsError(EBADF, "unknown file handle (fh)")
        return opened

    # ---- names -------------------------------------------------------------------------------

    @translated
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> Any:
        parent = self._dir(parent_inode)
        text = os.fsdecode(name)
        if text == ".":
            node: Node | None = parent
        elif text == "..":
            node = parent.parent or parent
        else:
            node = parent.lookup(text, caller_of(ctx))
        if node is None:
            raise pyfuse3.FUSEError(ENOENT)
        self.inodes.remember(node)
        return self.attributes(node)

    @translated
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @translated
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> Any:
        return self.attributes(self.inodes.get(inode))

    @translated
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None, ctx: Any) -> Any:
        node = self.inodes.get(inode)
        if fields.update_mode or fields.update_uid or fields.update_gid:
            try:
                self.access.change(
                    node,
                    caller_of(ctx),
                    attr.st_uid if fields.update_uid else None,
                    attr.st_gid if fields.update_gid else None,
                    attr.st_mode if fields.update_mode else None,
                )
            except VfsError as e:
                raise self._fail(node, e) from None
            if fields.update_uid or fields.update_gid:  # what is below inherits the owner
                for ino, other in self.inodes.items():
                    if other is not node and under(other, node):
                        forget_attributes(ino)
        if fields.update_size:
            if fh is not None:
                await self._on(node, self._open_file(fh).truncate(attr.st_size))
            elif attr.st_size != 0 or not isinstance(node, File):
                raise self._fail(node, VfsError(EINVAL, "this file cannot be resized"))
        # Time updates (touch on an existing file) are accepted and not kept.
        return self.attributes(node)

    @translated
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.inodes.get(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(EINVAL)
        try:
            return os.fsencode(node.target(caller_of(ctx)))
        except VfsError as e:
            raise self._fail(node, e) from None

    # ---- directories -------------------------------------------------------------------------

    @translated
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        fh = next(self._fh)
        self._dirs[fh] = DirListing(self._dir(inode))
        return fh

    @translated
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(EBADF)
        if listing.entries is None or start_id == 0:
            if listing.node.detached:
                raise pyfuse3.FUSEError(ENOENT)
            entries = [(self.inodes.number(n), name, n) for name, n in listing.node.entries()]
            entries.sort(key=lambda e: e[0])
            listing.entries = entries
            listing.inos = [e[0] for e in entries]
        entries = listing.entries
        for i in range(bisect.bisect_right(listing.inos, start_id), len(entries)):  # no copy of the rest
            ino, name, node = entries[i]
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self.attributes(node), ino):
                break
            self.inodes.remember(node)

    @translated
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @translated
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Any:
        parent = self._dir(parent_inode)
        caller = caller_of(ctx)
        node = await self._on(parent, parent.mkdir(os.fsdecode(name), caller))
        self.access.created(node, caller)
        self.inodes.remember(node)
        return self.attributes(node)

    @translated
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir(parent_inode)
        text = os.fsdecode(name)
        await self._on(parent, parent.rmdir(text, caller_of(ctx)))
        self.access.forget(f"{key(parent)}/{text}".lstrip("/"))

    # ---- refused namespace changes (configfs: no stray files) --------------------------------

    def _refuse(self, parent_inode: int, errno: int, reason: str) -> VfsError:
        node = self.inodes.find(parent_inode)
        return self._fail(node, VfsError(errno, reason))

    @translated
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        raise self._refuse(parent_inode, EACCES, f"files cannot be created here ({os.fsdecode(name)})")

    @translated
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        raise self._refuse(parent_inode, EACCES, f"files cannot be created here ({os.fsdecode(name)})")

    @translated
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        raise self._refuse(parent_inode, EPERM, "symlinks cannot be created here")

    @translated
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise self._refuse(new_parent_inode, EPERM, "links cannot be created here")

    @translated
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        raise self._refuse(parent_inode, EPERM, "files belong to their object; rmdir the object instead")

    @translated
    async def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any) -> None:
        raise self._refuse(p_old, EXDEV if p_old != p_new else EPERM, "objects cannot be renamed")

    # ---- files -------------------------------------------------------------------------------

    @translated
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if isinstance(node, Dir):
            raise pyfuse3.FUSEError(EISDIR)
        if not isinstance(node, File):
            raise pyfuse3.FUSEError(EINVAL)
        if node.detached:
            raise self._fail(node, VfsError(ENODEV, "the object was removed"))
        opened: OpenFile = await self._on(node, node.open(flags, caller_of(ctx)))
        if flags & os.O_TRUNC:
            await self._on(node, opened.truncate(0))
        fh = next(self._fh)
        self._open_files[fh] = opened
        return pyfuse3.FileInfo(
            fh=fh, direct_io=opened.direct_io, keep_cache=opened.keep_cache, nonseekable=opened.nonseekable
        )

    # read and write are `translated` written out: the data path's hottest calls, each one
    # coroutine (and for a file done at once, one await) less per request.
    async def read(self, fh: int, off: int, size: int) -> Any:
        self.requests["read"] += 1
        try:
            if (opened := self._open_files.get(fh)) is None:
                opened = self._open_file(fh)  # raises
            data = opened.read_now(off, size)
            return data if data is not None else await opened.read(off, size)
        except Exception as e:
            raise self._data_error("read", e, (fh, off, size)) from None

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self.requests["write"] += 1
        try:
            if (opened := self._open_files.get(fh)) is None:
                opened = self._open_file(fh)  # raises
            done = opened.write_now(off, buf)
            return done if done is not None else cast(int, await opened.write(off, buf))
        except Exception as e:
            raise self._data_error("write", e, (fh, off, buf)) from None

    def _data_error(self, name: str, e: Exception, args: tuple[Any, ...]) -> pyfuse3.FUSEError:
        """For read and write: `_blame` the open file's node (args[0] is its fh), and what
        `translated` would raise."""
        opened = self._open_files.get(args[0])
        if opened is not None:
            self._blame(opened.node, e)
        return fuse_error(name, e, args)

    @translated
    async def fsync(self, fh: int, datasync: bool) -> None:
        opened = self._open_file(fh)
        await self._on(opened.node, opened.fsync(datasync))

    @translated
    async def release(self, fh: int) -> None:
        opened = self._open_files.pop(fh, None)
        # Most handles have nothing to end; the shield below costs a third of a key get's time.
        if opened is not None and type(opened).release is not OpenFile.release:
            # Release must finish even while the daemon shuts down: sessions end here.
            with trio.CancelScope(shield=True):
                await self._on(opened.node, opened.release())

    @translated
    async def poll(self, inode: int, fh: int, poll_handle: Any, ctx: Any) -> int:
        opened = self._open_file(fh)
        notify = poll_handle.notify if poll_handle is not None else None
        return opened.poll(notify)

    @translated
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(self.inodes)
        s.f_namemax = 31
        return s
