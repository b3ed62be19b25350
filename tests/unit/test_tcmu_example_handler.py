"""The example handler, loaded as a module would load its own: registered, enabled, used."""

from __future__ import annotations

import os
import struct

from backends.tcmu import HandlerContext, Tcmu
from backends.tcmu import scsi as op
from backends.tcmu.handlers.example import ExampleHandler


async def test_the_example_handler_serves_a_device() -> None:
    core = Tcmu(lambda fn, *a: None)
    core.register_handler(ExampleHandler(HandlerContext()))
    dev = core.create_device("d")
    await dev.set_config("example/")
    await dev.set_size(str(1 << 20))
    await core.enable(dev)
    data = os.urandom(64 << 10)
    write = struct.pack(">BBQIBB", op.WRITE_16, 0, 16, len(data) // 512, 0, 0)
    read = struct.pack(">BBQIBB", op.READ_16, 0, 16, len(data) // 512, 0, 0)
    assert (await dev.engine.execute(write, data)).status == 0
    r = await dev.engine.execute(read, b"", len(data))
    assert r.status == 0 and bytes(r.data) == data
    assert (await dev.engine.execute(bytes([op.SYNCHRONIZE_CACHE_10]) + bytes(9))).status == 0
    assert dev.private[16 * 512 : 16 * 512 + len(data)] == data
    await core.disable(dev)
    assert dev.private is None
