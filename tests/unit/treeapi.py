"""A subsystem's tree without FUSE: its real setup(ctx) on a tmp state dir, driven through the
node API with the calls the FUSE face would make (lookup, mkdir, open, read, write)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from backends.mgmt import Registry
from vfs import plugins, subsystems
from vfs.context import Context
from vfs.daemon import Options
from vfs.persist import Store
from vfs.subsystems.mgmt.tree import StoredKeys
from vfs.tree.nodes import Caller, Dir, File, Node, maybe_await
from vfs.tree.root import Root

ME = Caller(os.getpid(), os.getuid(), os.getgid())


@asynccontextmanager
async def tree(tmp_path: Path, *names: str) -> AsyncIterator[Root]:
    """The root with the named subsystems set up (mgmt always), shut down on exit."""
    state, images = tmp_path / "state", tmp_path / "images"
    images.mkdir(exist_ok=True)
    async with trio.open_nursery() as nursery:
        store = Store(state)
        root = Root("/mnt/vfs", str(state), subsystems.top_level())
        ctx = Context(
            Options("/mnt/vfs", state, [images], tcmu_conf=tmp_path / "tcmu.conf"),
            root,
            store,
            nursery,
            Registry(nursery.start_soon, StoredKeys(store)),
        )
        for name in ("mgmt", *names):
            await maybe_await(plugins.resolve(f"vfs.subsystems.{name}")(ctx))
        try:
            yield root
        finally:
            for hook in reversed(ctx.on_shutdown):
                await maybe_await(hook())
            nursery.cancel_scope.cancel()


def node(root: Node, path: str) -> Node:
    here = root
    for name in path.split("/"):
        assert isinstance(here, Dir), f"{name}: not below a directory"
        found = here.lookup(name, ME)
        assert found is not None, f"no {name} in {path}"
        here = found
    return here


async def read(root: Node, path: str, size: int = 1 << 20) -> bytes:
    f = node(root, path)
    assert isinstance(f, File)
    opened = await f.open(os.O_RDONLY, ME)
    try:
        return bytes(await opened.read(0, size))
    finally:
        await opened.release()


async def write(root: Node, path: str, data: str | bytes, offset: int = 0) -> int:
    f = node(root, path)
    assert isinstance(f, File)
    opened = await f.open(os.O_WRONLY, ME)
    try:
        return await opened.write(offset, data.encode() if isinstance(data, str) else data)
    finally:
        await opened.release()


async def mkdir(root: Node, path: str) -> Node:
    parent, _, name = path.rpartition("/")
    d = node(root, parent)
    assert isinstance(d, Dir)
    return await d.mkdir(name, ME)


async def rmdir(root: Node, path: str) -> None:
    parent, _, name = path.rpartition("/")
    d = node(root, parent)
    assert isinstance(d, Dir)
    await d.rmdir(name, ME)


def status(text: bytes) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in text.decode().splitlines() if " " in line)
