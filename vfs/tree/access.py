"""Who may use what: owners and modes of the tree's nodes (docs/operations.md, "Who may use what").

The kernel checks every access against the uid, gid and mode a getattr returns (the mount has
`default_permissions`); this module decides those three. A node takes its owner from the
nearest node above it (or itself) that has one: a grant made by mkdir (the creator) or by
chown/chmod, persisted by tree path — or, under `worlds/<pid>/`, the process itself, as
/proc does. What a file may do at all (read-only, write-only) caps every chmod.
"""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass
from errno import EPERM
from typing import Any, Protocol

from backends.errors import VfsError
from vfs.tree.nodes import Caller, Dir, File, Node

DIR_BITS = 0o1777  # sticky kept: a shared collection where only owners remove (/tmp's rule)


class GrantStore(Protocol):
    def save(self, kind: str, name: str, data: Any) -> None: ...

    def delete(self, kind: str, name: str) -> None: ...

    def load_all(self, kind: str) -> dict[str, Any]: ...


@dataclass(slots=True)
class Grant:
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None  # chmod'ed bits of this node only; None: its kind's default


def capable(node: Node) -> int:
    """The permission bits a node can honour: a read-only file stays read-only whatever chmod says."""
    return node.capable if isinstance(node, File) else DIR_BITS


def key(node: Node) -> str:
    """The node's path below the root, which names its grant (`devices/d0/data`)."""
    names: list[str] = []
    while node.parent is not None:
        names.append(node.name)
        node = node.parent
    return "/".join(reversed(names))


class AccessBook:
    """Every grant, by path; `uid`/`gid` own whatever has none above it (the daemon's user)."""

    KIND = "access"

    def __init__(self, uid: int, gid: int, store: GrantStore | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self._store = store
        self._grants: dict[str, Grant] = {}
        self._keys: list[str] = []  # sorted, for removing an object's subtree in one slice
        for name, saved in (store.load_all(self.KIND) if store else {}).items():
            if isinstance(saved, dict):
                fields = {f: saved.get(f) for f in ("uid", "gid", "mode")}
                if all(v is None or isinstance(v, int) for v in fields.values()):
                    self._put(name.replace("+", "/"), Grant(**fields))

    def resolve(self, node: Node) -> tuple[int, int, int]:
        """(uid, gid, permission bits) the kernel is told for `node`: one walk to the root."""
        perm = node.perm
        chain: list[Node] = []
        here: Node | None = node
        while here is not None:
            if here.owned_by is not None:  # a process's subtree: no grants below it
                uid, gid = here.owned_by() or (self.uid, self.gid)  # a task gone: only root may look
                return uid, gid, perm
            chain.append(here)
            here = here.parent
        if not self._grants:
            return self.uid, self.gid, perm
        names = [n.name for n in chain[:-1]]  # the root has none
        grants = [self._grants.get("/".join(reversed(names[i:]))) for i in range(len(names))]
        if grants and grants[0] is not None and grants[0].mode is not None:
            perm = grants[0].mode & capable(node)
        uid = next((g.uid for g in grants if g is not None and g.uid is not None), self.uid)
        gid = next((g.gid for g in grants if g is not None and g.gid is not None), self.gid)
        return uid, gid, perm

    def created(self, node: Node, caller: Caller) -> None:
        """`caller` made `node` by mkdir: it owns it. Whatever an earlier object of that name was
        granted is gone with it."""
        path = key(node)
        self.forget(path)
        if (caller.uid, caller.gid) != self.resolve(node)[:2]:
            self._set(path, Grant(caller.uid, caller.gid))

    def change(self, node: Node, caller: Caller, uid: int | None, gid: int | None, mode: int | None) -> None:
        """chown/chmod by `caller`. The kernel has checked the caller may (default_permissions);
        this refuses what no grant can express and repeats the owner rule for safety."""
        if node.parent is None:
            raise VfsError(EPERM, "the mount's root belongs to the daemon's user")
        here: Node | None = node
        while here is not None:
            if here.owned_by is not None:
                raise VfsError(EPERM, "a world's files belong to its process, as in /proc")
            here = here.parent
        owner, _, _ = self.resolve(node)
        if caller.uid != 0 and uid is not None and uid != owner:
            raise VfsError(EPERM, "only root gives a node to another user")
        if caller.uid not in (0, owner):
            raise VfsError(EPERM, f"only its owner (uid {owner}) or root changes its mode or group")
        path = key(node)
        grant = self._grants.get(path, Grant())
        grant = Grant(
            grant.uid if uid is None else uid,
            grant.gid if gid is None else gid,
            grant.mode if mode is None else mode & capable(node),
        )
        self._set(path, grant)

    def forget(self, path: str) -> None:
        """The object at `path` is gone: drop its grants and those of everything below it."""
        lo = bisect.bisect_left(self._keys, path)
        hi = bisect.bisect_left(self._keys, path + "0")  # "0" sorts right after "/"
        for k in self._keys[lo:hi]:
            if k == path or k.startswith(path + "/"):
                del self._grants[k]
                if self._store is not None:
                    self._store.delete(self.KIND, k.replace("/", "+"))
        self._keys[lo:hi] = [k for k in self._keys[lo:hi] if k in self._grants]

    def _put(self, path: str, grant: Grant) -> None:
        if path not in self._grants:
            bisect.insort(self._keys, path)
        self._grants[path] = grant

    def _set(self, path: str, grant: Grant) -> None:
        self._put(path, grant)
        if self._store is not None:  # names hold no "+": it stands for "/" in the file name
            self._store.save(self.KIND, path.replace("/", "+"), asdict(grant))


def under(node: Node, top: Dir) -> bool:
    """Is `node` `top` or below it?"""
    here: Node | None = node
    while here is not None:
        if here is top:
            return True
        here = here.parent
    return False
