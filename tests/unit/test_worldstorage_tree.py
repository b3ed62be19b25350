"""storage/ and worlds/ through the node API, set up as the daemon does, without FUSE."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from backends.errors import VfsError
from tests.unit.treeapi import ME, mkdir, node, read, status, tree, write


async def test_a_slot_gives_the_caller_its_own_block(tmp_path: Path) -> None:
    async with tree(tmp_path, "worldstorage") as root:
        await mkdir(root, "storage/s")
        await write(root, "storage/s/size", "4096")
        await write(root, "storage/s/init", "zero")
        await write(root, "storage/s/enable", "1")
        await write(root, "storage/s/self", b"mine")
        assert (await read(root, "storage/s/self"))[:4] == b"mine"
        # The block shows under the caller's world, and the slot lists the world.
        assert (await read(root, f"worlds/{ME.pid}/s"))[:4] == b"mine"
        assert str(ME.pid) in (await read(root, "storage/s/worlds")).decode().split()
        assert status(await read(root, f"worlds/{ME.pid}/status"))["pid"] == str(ME.pid)
        assert node(root, "worlds/self").target(ME) == str(ME.pid)  # type: ignore[attr-defined]


async def test_an_enabled_slot_keeps_its_shape(tmp_path: Path) -> None:
    async with tree(tmp_path, "worldstorage") as root:
        await mkdir(root, "storage/s")
        await write(root, "storage/s/size", "4096")
        await write(root, "storage/s/enable", "1")
        with pytest.raises(VfsError) as e:
            await write(root, "storage/s/enable", "0")
        assert e.value.errno == errno.EINVAL and "stays enabled" in e.value.reason
        assert os.getpid() == ME.pid
