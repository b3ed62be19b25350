"""Object directories (configfs items): `status` and `last_error` in each, mkdir/rmdir collections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping
from errno import EEXIST, ENOENT
from typing import Any

from backends.errors import VfsError
from backends.names import check_name
from vfs.tree.nodes import Caller, MappedDir, Node, StaticDir, maybe_await
from vfs.tree.values import Status, ValueFile, status_file


class ObjectDir(StaticDir):
    """An object: its own entries plus `status` (flat-keyed) and `last_error` (one line)."""

    def __init__(
        self,
        status: Status,
        children: Mapping[str, Node] | None = None,
        dynamic: MappedDir | None = None,
    ) -> None:
        super().__init__(children)
        # Entries that come and go with the core (a world's blocks, one per enabled slot).
        self.dynamic = dynamic
        if dynamic is not None:
            dynamic.host = self
            self.volatile = True
        self.last_error = ""
        self._add_own(status)

    def _add_own(self, status: Status) -> None:
        self.add("status", status_file(status))
        self.add("last_error", ValueFile(lambda: self.last_error))

    def lookup(self, name: str, caller: Caller) -> Node | None:
        node = self.children.get(name)
        if node is None and self.dynamic is not None:
            node = self.dynamic.lookup(name, caller)
        return node

    def entries(self) -> Iterator[tuple[str, Node]]:
        static = list(self.children.items())
        return iter(static + (list(self.dynamic.entries()) if self.dynamic is not None else []))

    def detach(self) -> None:
        super().detach()
        if self.dynamic is not None:
            self.dynamic.detach()

    def record(self, error: VfsError) -> None:
        self.last_error = error.reason.replace("\n", " ")


class LazyObjectDir(ObjectDir):
    """An object whose entries, `status` and `last_error` too, are made on first use: an idle
    channel need not hold its two ends' twenty nodes (10,000 channels: ~120 MB of them)."""

    def __init__(
        self,
        status: Status,
        factory: Callable[[], Mapping[str, Node]],
    ) -> None:
        super().__init__(status)
        self._factory: Callable[[], Mapping[str, Node]] | None = factory

    def _add_own(self, status: Status) -> None:
        self._status = status  # made with the rest

    @property  # type: ignore[override]
    def children(self) -> dict[str, Node]:
        made = self.__dict__["children"]
        if self._factory is not None:
            factory, self._factory = self._factory, None
            super()._add_own(self._status)
            for name, node in factory().items():
                made[name] = self.adopt(node, name)
        return made

    @children.setter
    def children(self, value: dict[str, Node]) -> None:
        self.__dict__["children"] = value

    def detach(self) -> None:
        self._factory = None  # nothing made: nothing to detach
        super().detach()


class Collection(MappedDir):
    """A directory of objects from a core mapping, where mkdir/rmdir create/destroy.

    `create(name)` and `destroy(name)` call into the core; failures carry their reason to the
    owning object's `last_error`. Without `create`, mkdir is refused (EPERM).
    """

    def __init__(
        self,
        source: Callable[[], Mapping[str, Any]],
        make: Callable[[str, Any], Node],
        create: Callable[[str], Awaitable[Any] | Any] | None = None,
        destroy: Callable[[str], Awaitable[None] | None] | None = None,
        cache_names: bool = False,
        fixed: Mapping[str, Node] | None = None,
    ) -> None:
        super().__init__(source, make, fixed=fixed, cache_names=cache_names)
        self._create = create
        self._destroy = destroy

    async def mkdir(self, name: str, caller: Caller) -> Node:
        if self._create is None:
            return await super().mkdir(name, caller)
        check_name(name)
        if name in self._source():
            raise VfsError(EEXIST, f"{name} already exists")
        await maybe_await(self._create(name))
        node = self.lookup(name, caller)
        if node is None:
            raise VfsError(ENOENT, f"{name} vanished while being created")
        return node

    async def rmdir(self, name: str, caller: Caller) -> None:
        if self._destroy is None:
            return await super().rmdir(name, caller)
        if name not in self._source():
            raise VfsError(ENOENT, f"no such object: {name}")
        try:
            await maybe_await(self._destroy(name))
        except VfsError as e:
            target = self.lookup(name, caller)
            if isinstance(target, ObjectDir):
                target.record(e)  # the object refusing to go says why, too
            raise
        self._forget(name)
