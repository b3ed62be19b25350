"""Inode numbers for nodes: stable while a node lives, dropped from the table on `forget`."""

from __future__ import annotations

import secrets
from errno import ENOENT

from backends.errors import VfsError
from vfs.tree.nodes import Node

ROOT_INODE = 1


class InodeTable:
    """Maps inode numbers the kernel holds to nodes, with the kernel's lookup counts."""

    def __init__(self, root: Node) -> None:
        root.ino = ROOT_INODE
        self._next = ROOT_INODE + 1
        self._nodes: dict[int, Node] = {ROOT_INODE: root}
        self._lookups: dict[int, int] = {ROOT_INODE: 1}

    def number(self, node: Node) -> int:
        """The node's inode number, assigned on first sight and kept for the node's life, with
        a random generation: inode numbers are small and predictable, and a file handle is
        (number, generation) — open_by_handle_at must not reach devices/ by guessing."""
        if node.ino == 0:
            node.ino = self._next
            node.generation = secrets.randbits(32) | 1
            self._next += 1
        return node.ino

    def remember(self, node: Node) -> int:
        """The kernel now holds one more reference (lookup, mkdir, readdirplus entry)."""
        ino = self.number(node)
        self._nodes[ino] = node
        self._lookups[ino] = self._lookups.get(ino, 0) + 1
        return ino

    def get(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise VfsError(ENOENT, f"inode {ino} is not known")
        return node

    def find(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def forget(self, ino: int, count: int) -> None:
        left = self._lookups.get(ino, 0) - count
        if left > 0 or ino == ROOT_INODE:
            self._lookups[ino] = max(left, 1)
            return
        self._lookups.pop(ino, None)
        self._nodes.pop(ino, None)

    def items(self) -> list[tuple[int, Node]]:
        return list(self._nodes.items())

    def __len__(self) -> int:
        return len(self._nodes)
