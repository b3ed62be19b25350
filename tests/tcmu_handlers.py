"""Handlers the mount tests load at run time (`handlers/load`): tcmu-runner's two completion
models for handle_cmd, each over a bytearray, and a backend that comes and goes (the events
a handler reports: conn_lost, lock_lost)."""

from __future__ import annotations

import errno
import os
import struct
import threading
from typing import Any

from backends.tcmu import Command, Handler, Sts

READ_16, WRITE_16 = 0x88, 0x8A


def _serve(dev: Any, cmd: Command) -> int:
    """TEST UNIT READY, READ(16), WRITE(16) and SYNCHRONIZE CACHE on dev.private; the rest is
    left to the engine (NOT_HANDLED)."""
    op = cmd.cdb[0]
    if op in (0x00, 0x35, 0x91):
        return Sts.OK
    if op in (READ_16, WRITE_16):
        lba, blocks = struct.unpack_from(">QI", cmd.cdb, 2)
        off, length = lba * dev.block_size, blocks * dev.block_size
        if op == READ_16:
            cmd.iovec[0][:length] = dev.private[off : off + length]
        else:
            dev.private[off : off + length] = cmd.iovec[0][:length]
        return Sts.OK
    return Sts.NOT_HANDLED


class SyncPassthrough(Handler):
    """nr_threads = 0, handle_cmd answering on the event loop: its OK is the command's GOOD."""

    name = "handle_cmd on the loop"
    subtype = "syncpt"
    cfg_desc = "syncpt/ — a bytearray"
    nr_threads = 0

    def open(self, dev: Any, reopen: bool) -> int:  # noqa: A003
        dev.private = bytearray(dev.size)
        return 0

    def close(self, dev: Any) -> None:
        dev.private = None

    def handle_cmd(self, dev: Any, cmd: Command) -> int:
        return _serve(dev, cmd)


class ThreadedAsync(SyncPassthrough):
    """nr_threads = 2, handle_cmd returning ASYNC_HANDLED and completing from a thread of its
    own a little later."""

    name = "handle_cmd completing later"
    subtype = "asyncpt"
    cfg_desc = "asyncpt/ — a bytearray"
    nr_threads = 2

    def handle_cmd(self, dev: Any, cmd: Command) -> int:
        sts = _serve(dev, cmd)
        if sts == Sts.NOT_HANDLED:
            return sts
        threading.Timer(0.01, cmd.complete, args=(sts,)).start()
        return Sts.ASYNC_HANDLED


class Flaky(Handler):
    """`flaky/<path>`: a bytearray whose backend is reachable while <path> exists. A thread of
    its own watches: <path> gone → notify_conn_lost (open fails until it is back);
    <path>.lock-lost appearing → notify_lock_lost (the file is removed); reads fail with a
    medium error while <path>.bad-reads exists."""

    name = "a backend that comes and goes"
    subtype = "flaky"
    cfg_desc = "flaky/<path that exists while the backend answers>"
    nr_threads = 0

    def open(self, dev: Any, reopen: bool) -> int:  # noqa: A003
        path = self.handler_part(dev.config)
        if not os.path.exists(path):
            return -errno.ENOTCONN
        if not isinstance(dev.private, dict):  # a reopen keeps the contents
            dev.private = {"data": bytearray(dev.size)}
        stop = threading.Event()
        dev.private["stop"] = stop
        threading.Thread(target=self._watch, args=(dev, path, stop), daemon=True).start()
        return 0

    @staticmethod
    def _watch(dev: Any, path: str, stop: threading.Event) -> None:
        while not stop.wait(0.05):
            if os.path.exists(path + ".lock-lost"):
                os.unlink(path + ".lock-lost")
                dev.notify_lock_lost()
            if not os.path.exists(path):
                dev.notify_conn_lost()
                return

    def close(self, dev: Any) -> None:
        dev.private["stop"].set()

    def read(self, dev: Any, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        if os.path.exists(self.handler_part(dev.config) + ".bad-reads"):  # a medium error
            cmd.complete(Sts.RD_ERR)
            return Sts.OK
        iovec[0][:length] = dev.private["data"][off : off + length]
        cmd.complete(Sts.OK)
        return Sts.OK

    def write(self, dev: Any, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        dev.private["data"][off : off + length] = iovec[0][:length]
        cmd.complete(Sts.OK)
        return Sts.OK
