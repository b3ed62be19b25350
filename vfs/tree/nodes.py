"""The node model's base: what every node in the tree is, and the OpenFile an open returns.

A node kind is a small class; the Operations class in `vfs/fuse/operations.py` only
translates FUSE requests into calls on these. Cores never see nodes; nodes hold references to core objects.
"""

from __future__ import annotations

import os
import select
import stat
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from errno import EACCES, EBADF, EINVAL, EPERM
from typing import TYPE_CHECKING, Any, TypeVar

from backends.errors import VfsError

if TYPE_CHECKING:
    from vfs.tree.objects import ObjectDir

# How long the kernel may cache a name or attributes that can only change through the kernel
# itself; names that can change out of band use 0 (README: nothing is cached stale).
STABLE_TIMEOUT = 300.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request, as the kernel reports it (pid 0: not visible to the daemon)."""

    pid: int
    uid: int
    gid: int


async def maybe_await(value: T | Awaitable[T]) -> T:
    """Cores may offer plain or async functions; the face accepts both."""
    if isinstance(value, Awaitable):
        return await value
    return value


class Node:
    """Anything with an inode. `perm` is the permission bits before owners and modes set by
    chmod (vfs/tree/access.py); subclasses set the file type."""

    kind = stat.S_IFREG
    perm = 0o444
    attr_timeout = STABLE_TIMEOUT
    # Set on the node whose subtree belongs to a process (a world): (uid, gid) of it, or None
    # once the process is gone.
    owned_by: Callable[[], tuple[int, int] | None] | None = None

    def __init__(self) -> None:
        self.ino = 0
        self.generation = 0  # the root's is 0: the kernel makes its inode itself
        self.parent: Dir | None = None
        self.name = ""  # in its parent; set on adoption
        self.detached = False

    def size(self) -> int:
        return 0

    @property
    def mode(self) -> int:
        return self.kind | self.perm

    def owner(self) -> ObjectDir | None:
        """The object directory whose `last_error` records this node's failures."""
        from vfs.tree.objects import ObjectDir

        node: Node | None = self if isinstance(self, Dir) else self.parent
        while node is not None and not isinstance(node, ObjectDir):
            node = node.parent
        return node

    def detach(self) -> None:
        """The object behind this node is gone: later lookups below it give ENOENT."""
        self.detached = True


class OpenFile:
    """One open file. Every operation refuses by default; node kinds override what they do."""

    direct_io = True
    nonseekable = False
    keep_cache = False

    def __init__(self, node: Node, flags: int, caller: Caller) -> None:
        self.node = node
        self.flags = flags
        self.caller = caller

    async def read(self, off: int, size: int) -> bytes | memoryview:
        raise VfsError(EBADF, "this file cannot be read")

    # read_now / write_now: the same, done at once with no coroutine where the file can (the
    # data path's common case); None where `read` / `write` must do it.
    def read_now(self, off: int, size: int) -> bytes | memoryview | None:
        return None

    def write_now(self, off: int, data: bytes) -> int | None:
        return None

    async def write(self, off: int, data: bytes) -> int:
        raise VfsError(EBADF, "this file cannot be written")

    async def truncate(self, size: int) -> None:
        """O_TRUNC or ftruncate. Value files accept truncation to 0 as a no-op (shell `>`)."""
        if size != 0:
            raise VfsError(EINVAL, "this file cannot be resized")

    async def fsync(self, datasync: bool) -> None:
        pass

    async def release(self) -> None:
        pass

    def poll(self, notify: Callable[[], None] | None) -> int:
        """Readiness mask; with `notify`, arrange one call to it when readiness may change."""
        return select.POLLIN | select.POLLOUT


class File(Node):
    """A file; `open` returns a OpenFile. `readable`/`writable` decide both mode and open checks.

    `audience` sets who may use it before any chmod: "public" — read by all, written by the
    owner (a setting, a status); "private" — the owner only (data, events, a channel end);
    "personal" — everyone, because each caller reaches only its own (a slot's `self`)."""

    readable = True
    writable = False
    audience = "public"

    @property
    def capable(self) -> int:
        """The bits this file can honour at all, for every class of user."""
        return (0o444 if self.readable else 0) | (0o222 if self.writable else 0)

    @property  # type: ignore[override]
    def perm(self) -> int:  # noqa: D102
        if self.audience == "personal":
            return self.capable
        public = (0o444 if self.readable else 0) | (0o200 if self.writable else 0)
        return public & 0o600 if self.audience == "private" else public

    def check_open(self, flags: int) -> None:
        acc = flags & os.O_ACCMODE
        # Root passes default_permissions regardless of mode bits, so enforce them here too.
        if acc in (os.O_RDONLY, os.O_RDWR) and not self.readable:
            raise VfsError(EACCES, "this file is write-only")
        if acc in (os.O_WRONLY, os.O_RDWR) and not self.writable:
            raise VfsError(EACCES, "this file is read-only")

    @abstractmethod
    async def open(self, flags: int, caller: Caller) -> OpenFile:
        """Check access (`check_open`) and return a new OpenFile for this open."""


class Symlink(Node):
    kind = stat.S_IFLNK
    perm = 0o777
    attr_timeout = 0.0

    def __init__(self, target: Callable[[Caller], str]) -> None:
        super().__init__()
        self._target = target

    def target(self, caller: Caller) -> str:
        return self._target(caller)


class Dir(Node):
    """A directory. `volatile` dirs have entries that change out of band (kernel must not cache)."""

    kind = stat.S_IFDIR
    perm = 0o755
    volatile = False

    @abstractmethod
    def entries(self) -> Iterator[tuple[str, Node]]:
        """(name, node) for every entry, listed now."""

    def lookup(self, name: str, caller: Caller) -> Node | None:
        return dict(self.entries()).get(name)

    async def mkdir(self, name: str, caller: Caller) -> Node:
        raise VfsError(EPERM, "objects cannot be created here")

    async def rmdir(self, name: str, caller: Caller) -> None:
        raise VfsError(EPERM, "this directory cannot be removed")

    def adopt(self, child: Node, name: str) -> Node:
        child.parent = self
        child.name = name
        return child


class StaticDir(Dir):
    """A directory whose entries the daemon adds and removes itself."""

    def __init__(self, children: Mapping[str, Node] | None = None) -> None:
        super().__init__()
        self.children: dict[str, Node] = {}
        for name, node in (children or {}).items():
            self.add(name, node)

    def add(self, name: str, node: Node) -> Node:
        self.children[name] = self.adopt(node, name)
        return node

    def remove(self, name: str) -> None:
        node = self.children.pop(name, None)
        if node is not None:
            node.detach()

    def entries(self) -> Iterator[tuple[str, Node]]:
        return iter(list(self.children.items()))

    def lookup(self, name: str, caller: Caller) -> Node | None:
        return self.children.get(name)

    def detach(self) -> None:
        super().detach()
        for child in self.children.values():
            child.detach()


class MappedDir(Dir):
    """A volatile directory mirroring a core's mapping of name → object.

    Nodes are made on demand by `make` and kept while the core keeps the same object under
    that name, so inode numbers stay stable; when the object goes, its node is detached.
    """

    volatile = True

    def __init__(
        self,
        source: Callable[[], Mapping[str, Any]],
        make: Callable[[str, Any], Node],
        fixed: Mapping[str, Node] | None = None,
        cache_names: bool = False,
    ) -> None:
        super().__init__()
        # The kernel may keep names only where no entry vanishes unannounced: the directory
        # only grows while it lives (a handle's keys), or its core calls drop() for removals.
        self.volatile = not cache_names
        self._source = source
        self._make = make
        self._nodes: dict[str, tuple[Any, Node]] = {}
        self.host: Dir = self  # the directory the kernel sees as these nodes' parent
        self.fixed = {name: self.adopt(node, name) for name, node in (fixed or {}).items()}

    def adopt(self, child: Node, name: str) -> Node:
        child.parent = self.host
        child.name = name
        return child

    def _node(self, name: str, obj: Any) -> Node:
        cached = self._nodes.get(name)
        if cached is not None and cached[0] is obj:
            return cached[1]
        if cached is not None:
            cached[1].detach()
        node = self.adopt(self._make(name, obj), name)
        self._nodes[name] = (obj, node)
        return node

    def lookup(self, name: str, caller: Caller) -> Node | None:
        if name in self.fixed:
            return self.fixed[name]
        obj = self._source().get(name)
        if obj is None:
            self._forget(name)
            return None
        return self._node(name, obj)

    def entries(self) -> Iterator[tuple[str, Node]]:
        source = self._source()
        for name in [n for n in self._nodes if n not in source]:
            self._forget(name)
        mapped = [(name, self._node(name, obj)) for name, obj in list(source.items())]
        return iter([*self.fixed.items(), *mapped])

    def _forget(self, name: str) -> None:
        cached = self._nodes.pop(name, None)
        if cached is not None:
            cached[1].detach()

    def drop(self, name: str) -> None:
        """The core removed `name`: detach its node and make the kernel forget the name."""
        from vfs.fuse.invalidate import forget_name

        self._forget(name)
        forget_name(self.host.ino, name)

    def detach(self) -> None:
        super().detach()
        for _, node in self._nodes.values():
            node.detach()
