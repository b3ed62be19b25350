"""channels/ through the node API, set up as the daemon does, without FUSE: two ends of a
channel pass a message and a stream, and the status shows both states."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unit.treeapi import ME, mkdir, node, read, status, tree, write
from vfs.tree.nodes import File


async def test_a_channel_passes_messages_between_its_ends(tmp_path: Path) -> None:
    async with tree(tmp_path, "v2v") as root:
        await mkdir(root, "channels/c")
        assert (await read(root, "channels/c/listener/state")).strip() == b"unready"
        listener, connector = node(root, "channels/c/listener/msg"), node(root, "channels/c/connector/msg")
        assert isinstance(listener, File) and isinstance(connector, File)
        rx = await listener.open(os.O_RDONLY, ME)
        tx = await connector.open(os.O_WRONLY, ME)
        try:
            assert (await read(root, "channels/c/listener/state")).strip() == b"connected"
            assert await tx.write(0, b"hello") == 5
            assert bytes(await rx.read(0, 4096)) == b"hello"
            stats = status(await read(root, "channels/c/connector/stats"))
            assert stats["messages_sent"] == "1"
        finally:
            await tx.release()
            await rx.release()


async def test_ring_orders_are_settings_of_the_channel(tmp_path: Path) -> None:
    async with tree(tmp_path, "v2v") as root:
        await mkdir(root, "channels/c")
        await write(root, "channels/c/prod_ring_order", "2")
        assert await read(root, "channels/c/prod_ring_order") == b"2\n"
