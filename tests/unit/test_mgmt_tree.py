"""mgmt/ through the node API, set up as the daemon does, without FUSE: the daemon's own
handle's keys, a call, and an event to a listener."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.unit.treeapi import ME, mkdir, node, read, tree, write
from vfs.tree.nodes import File


async def test_the_daemons_handle_keys_and_persistence(tmp_path: Path) -> None:
    async with tree(tmp_path) as root:
        assert await read(root, "mgmt/vfs/name") == b"vfs\n"
        await write(root, "mgmt/vfs/keys/logLevel", "warning")
    async with tree(tmp_path) as root:
        assert await read(root, "mgmt/vfs/keys/logLevel") == b"warning\n"  # kept in the state dir
        await write(root, "mgmt/vfs/keys/logLevel", "info")


async def test_an_event_reaches_a_listener(tmp_path: Path) -> None:
    async with tree(tmp_path, "v2v") as root:
        events, end = node(root, "mgmt/v2v/events"), None
        assert isinstance(events, File)
        listening = await events.open(os.O_RDONLY, ME)
        try:
            await mkdir(root, "channels/c")
            msg = node(root, "channels/c/listener/msg")
            assert isinstance(msg, File)
            end = await msg.open(os.O_RDONLY, ME)  # the listener attaches: a state callback
            record = json.loads(bytes(await listening.read(0, 65536)).splitlines()[0])
            assert record["callback"] == "state" and record["params"][:2] == ["c", "listener"]
        finally:
            if end is not None:
                await end.release()
            await listening.release()
