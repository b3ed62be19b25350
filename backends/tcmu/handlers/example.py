"""The smallest complete handler: a device in a bytearray (`example/`), not registered by the
daemon. Read it first; `ram.py` and `file.py` are the real ones. Install your own through the
`vfs.handlers` entry point (docs/tcmu.md); tests/unit/test_tcmu_example_handler.py drives this one.

Every callout completes its command before returning (nr_threads = 0: on the event loop), so it
must not block; a handler that waits for storage completes later, from a thread (see file.py).
"""

from __future__ import annotations

from backends.tcmu.device import Device
from backends.tcmu.handler import Command, Handler
from backends.tcmu.status import Sts


class ExampleHandler(Handler):
    name = "Example: a bytearray"
    subtype = "example"
    cfg_desc = "example/ — a bytearray, lost when the daemon stops"

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        dev.private = bytearray(dev.size)  # per-device state lives in dev.private
        return 0

    def close(self, dev: Device) -> None:
        dev.private = None

    def read(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        for view in iovec:  # fill every byte of the iovec
            view[:] = dev.private[off : off + len(view)]
            off += len(view)
        cmd.complete(Sts.OK)
        return Sts.OK

    def write(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        for view in iovec:
            dev.private[off : off + len(view)] = view
            off += len(view)
        cmd.complete(Sts.OK)
        return Sts.OK

    def flush(self, dev: Device, cmd: Command) -> int:
        cmd.complete(Sts.OK)  # memory has nothing to flush
        return Sts.OK
