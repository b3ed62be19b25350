"""handlers/ and devices/ through the node API, set up as the daemon does, without FUSE."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from backends.errors import VfsError
from tests.unit.treeapi import mkdir, node, read, rmdir, status, tree, write


async def test_a_device_made_configured_used_and_removed(tmp_path: Path) -> None:
    async with tree(tmp_path, "tcmu") as root:
        assert await read(root, "handlers/ram/subtype") == b"ram\n"
        await mkdir(root, "devices/d0")
        for name, value in (("config", "ram/"), ("size", "1048576"), ("enable", "1")):
            await write(root, f"devices/d0/{name}", value)
        data = os.urandom(8192)
        assert await write(root, "devices/d0/data", data, offset=4096) == len(data)
        assert (await read(root, "devices/d0/data", 1 << 20))[4096 : 4096 + len(data)] == data
        assert status(await read(root, "devices/d0/status"))["enabled"] == "1"
        assert "write_ops 1" in (await read(root, "devices/d0/stats")).decode()
        with pytest.raises(VfsError) as e:
            await rmdir(root, "devices/d0")
        assert e.value.errno == errno.EBUSY
        await write(root, "devices/d0/enable", "0")
        await rmdir(root, "devices/d0")
        assert node(root, "devices").lookup("d0", None) is None  # type: ignore[attr-defined, arg-type]


async def test_a_refused_value_changes_nothing_and_says_why(tmp_path: Path) -> None:
    async with tree(tmp_path, "tcmu") as root:
        await mkdir(root, "devices/d0")
        with pytest.raises(VfsError) as e:
            await write(root, "devices/d0/size", "1M")
        assert e.value.errno == errno.EINVAL
        assert await read(root, "devices/d0/size") == b"0\n"


async def test_devices_come_back_from_the_state_dir(tmp_path: Path) -> None:
    async with tree(tmp_path, "tcmu") as root:
        await mkdir(root, "devices/d1")
        await write(root, "devices/d1/config", "ram/")
        await write(root, "devices/d1/size", "65536")
    async with tree(tmp_path, "tcmu") as root:
        assert await read(root, "devices/d1/config") == b"ram/\n"
        assert await read(root, "devices/d1/size") == b"65536\n"
