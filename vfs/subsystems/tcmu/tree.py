"""The face of TCMU: `handlers/<subtype>/...` and `devices/<name>/...` (docs/tcmu.md)."""

from __future__ import annotations

from collections.abc import Callable
from errno import EBUSY, EINVAL, EIO, ENODEV, ENOSPC, EOPNOTSUPP
from typing import Any

import trio

from backends.errors import VfsError
from backends.tcmu import CommandError, Device, Handler, Sts, Tcmu, sg
from backends.tcmu.engine import Engine
from backends.tcmu.status import to_scsi
from backends.values import parse_bool, parse_int
from vfs.subsystems.tcmu.handlers import Handlers
from vfs.tree.data import DataFile
from vfs.tree.nodes import Caller, Node
from vfs.tree.objects import Collection, ObjectDir
from vfs.tree.streams import QueueStream, StreamFile
from vfs.tree.transactions import TxFile
from vfs.tree.values import ValueFile, constant, flat_keyed

ERRNO = {Sts.RANGE: ENOSPC, Sts.FRMT_IN_PROGRESS: EBUSY, Sts.BUSY: EBUSY, Sts.INVALID_CMD: EOPNOTSUPP}


def io_error(dev: Device, what: str, e: CommandError) -> VfsError:
    """A failed command as an errno for the data/unmap files, with the sense in words; counted
    in the device's errors here, where the data file's answer is final, unless already recorded."""
    if not e.recorded:
        dev.stats.refused += 1
    status, sense = to_scsi(e.sts)
    detail = f"sense {sense[2] & 0xF:#x}/{sense[12]:02x}/{sense[13]:02x}" if sense else f"status {status:#x}"
    return VfsError(ERRNO.get(e.sts, EIO), f"{what} on {dev.name} failed: {e.sts.name} ({detail})")


def live_engine(dev: Device) -> Engine:
    if not dev.enabled or dev.engine is None:
        raise VfsError(ENODEV, f"device {dev.name} is not enabled")
    return dev.engine


class DeviceData:
    """One open of `data`: any offset and length onto whole-block READ/WRITE through the engine.
    Partial blocks are read-modify-written while their blocks are held (no torn writes)."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.engine = live_engine(dev)

    def size(self) -> int:
        return self.dev.size

    def _engine(self) -> Engine:
        if self.dev.engine is not self.engine or not self.dev.enabled:
            raise VfsError(ENODEV, f"device {self.dev.name} was disabled under this open file")
        return self.engine

    def _span(self, off: int, size: int) -> tuple[int, int, int]:
        """(first block, blocks, bytes of the first block before `off`) of a byte range."""
        bs = self.dev.block_size
        first = off // bs
        return first, -(-(off + size) // bs) - first, off - first * bs

    def read_now(self, off: int, size: int) -> memoryview | None:
        # the data file's hottest call: _engine and _span written out
        dev, e = self.dev, self.engine
        if dev.engine is not e or not dev.enabled:
            self._engine()  # raises
        bs = dev.block_size
        first = off // bs
        try:
            buf = e.read_now(first, -(-(off + size) // bs) - first, lend=True)  # straight into the reply
        except CommandError as err:
            raise io_error(dev, "read", err) from None
        skip = off - first * bs
        if buf is None or (skip == 0 and len(buf) == size):
            return buf  # whole blocks: no slice of the slice
        return buf[skip : skip + size]

    def write_now(self, off: int, data: bytes) -> int | None:
        e, bs = self._engine(), self.dev.block_size
        n = len(data)
        try:
            if off % bs or n % bs:
                return n if e.write_bytes_now(off, data) else None
            return n if e.write_now(off // bs, data) else None
        except CommandError as err:
            raise io_error(self.dev, "write", err) from None

    async def read(self, off: int, size: int) -> memoryview:
        e = self._engine()
        first, blocks, skip = self._span(off, size)
        try:
            buf = await e.read(first, blocks, lend=True, now=False)  # read_now was tried
        except CommandError as err:
            raise io_error(self.dev, "read", err) from None
        return buf[skip : skip + size]

    async def write(self, off: int, data: bytes) -> int:
        e, bs = self._engine(), self.dev.block_size
        n = len(data)
        try:
            if off % bs == 0 and n % bs == 0:
                await e.write(off // bs, data, now=False)  # write_now was tried
                return n
            # Whole blocks go straight from `data`; only the partial edge blocks are read,
            # merged and written back — all while every block touched is held.
            first, end = off // bs, -(-(off + n) // bs)
            inner, outer = -(-off // bs) * bs, (off + n) // bs * bs  # the whole-block middle
            view = memoryview(data)
            async with e.ranges.hold(first, end):
                pieces: list[tuple[int, bytes | memoryview]] = []
                if off % bs:
                    pieces.append((first, await self._merged(first, off % bs, view[: inner - off])))
                if inner < outer:
                    pieces.append((inner // bs, view[inner - off : outer - off]))
                if (off + n) % bs and outer >= inner:
                    pieces.append((end - 1, await self._merged(end - 1, 0, view[outer - off :])))
                await e.write_held(pieces)
        except CommandError as err:
            raise io_error(self.dev, "write", err) from None
        return n

    async def _merged(self, lba: int, skip: int, part: memoryview) -> memoryview:
        """Block `lba` as it is on the device with `part` laid over it at `skip`."""
        buf = memoryview(bytearray(self.dev.block_size))
        await self.engine.read_into(lba, buf)
        buf[skip : skip + len(part)] = part
        return buf

    async def flush(self) -> None:
        try:
            await self._engine().flush()
        except CommandError as err:
            raise io_error(self.dev, "SYNCHRONIZE CACHE", err) from None

    def close(self) -> None:
        pass


class ScsiSession:
    """One open of `scsi`: each write is one command, the next read its response."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev

    async def request(self, data: bytes) -> bytes:
        req = sg.parse_request(data)
        resp = await live_engine(self.dev).execute(req.cdb, req.data_out, req.data_in_len)
        return sg.encode_response(resp.status, resp.sense, resp.data)

    def close(self) -> None:
        pass


def handler_dir(core: Tcmu, handler: Handler) -> Node:
    class Check:
        async def request(self, data: bytes) -> bytes:
            cfgstring = data.decode(errors="replace").strip()
            reason = core.check_config(cfgstring)
            if reason is not None:
                raise VfsError(EINVAL, reason)
            return b"ok\n"

        def close(self) -> None:
            pass

    return ObjectDir(
        lambda: {
            "name": handler.name,
            "subtype": handler.subtype,
            "nr_threads": handler.nr_threads,
            "ops": handler.ops(),
            "devices": sum(1 for d in core.devices.values() if d.handler is handler),
        },
        {
            "name": constant(handler.name),
            "subtype": constant(handler.subtype),
            "cfg_desc": constant(handler.cfg_desc),
            "nr_threads": constant(str(handler.nr_threads)),
            "ops": constant(" ".join(handler.ops())),
            "check_config": TxFile(lambda caller: Check(), audience="personal"),  # each asks its own
        },
    )


def device_dir(core: Tcmu, dev: Device) -> Node:
    async def set_enable(text: str) -> None:
        if parse_bool(text, "enable"):
            await core.enable(dev)
        else:
            await core.disable(dev)

    async def set_unmap(text: str) -> None:
        words = text.split()
        if len(words) != 2:
            raise VfsError(EINVAL, "write '<offset> <length>' in bytes, both multiples of block_size")
        off, length = parse_int(words[0], "offset"), parse_int(words[1], "length")
        bs = dev.block_size
        if off < 0 or length <= 0 or off % bs or length % bs:
            raise VfsError(EINVAL, f"offset and length are non-negative multiples of the block size ({bs})")
        try:
            await live_engine(dev).unmap(off // bs, length // bs)
        except CommandError as err:
            raise io_error(dev, "unmap", err) from None

    def get_kernel() -> str:
        return dev.kernel.uio_name if dev.kernel is not None else "-"

    async def set_kernel(text: str) -> None:
        kernel = core.kernel_devices
        if kernel is None:
            raise VfsError(ENODEV, "this daemon does not serve the kernel's TCMU")
        if text == "loop":
            await kernel.export(dev, loop=True)
        elif parse_bool(text, "kernel"):
            await kernel.export(dev, loop=False)
        else:
            await kernel.unexport(dev)

    def get_lock() -> str:
        state, tag = dev.lock_status()
        return f"{state} {tag if tag is not None and tag != 0xFFFF else '-'}"

    async def set_lock(text: str) -> None:
        words = text.split()
        live_engine(dev)
        handler = dev.handler
        assert handler is not None
        if handler.lock is None or handler.unlock is None:
            raise VfsError(EOPNOTSUPP, f"handler {handler.subtype} has no locking")
        if words[:1] == ["lock"] and len(words) == 2:
            tag = parse_int(words[1], "tag")
            if not 0 <= tag < 0xFFFF:
                raise VfsError(EINVAL, "a lock tag is 0..65534")
            sts = Sts(await trio.to_thread.run_sync(handler.lock, dev, tag))
            if sts is not Sts.OK:
                other = get_lock().split()[1]
                raise VfsError(EBUSY, f"the lock is held elsewhere (tag {other}): {sts.name}")
        elif words == ["unlock"]:
            sts = Sts(await trio.to_thread.run_sync(handler.unlock, dev))
            if sts is not Sts.OK:
                raise VfsError(EIO, f"unlock failed: {sts.name}")
        else:
            raise VfsError(EINVAL, "write 'lock <tag>' or 'unlock'")

    def stats() -> str:
        s = dev.stats
        values: dict[str, Any] = {}
        for kind in s.KINDS:
            values[f"{kind}_ops"] = s.ops[kind]
            values[f"{kind}_bytes"] = s.bytes[kind]
        values.update(
            errors=s.errors,
            timeouts=s.timeouts,
            in_flight=len(dev.engine.in_flight) if dev.engine else 0,
            latency_p50_us=s.percentile(0.50),
            latency_p99_us=s.percentile(0.99),
        )
        return flat_keyed(values)

    def open_data(flags: int, caller: Caller) -> DeviceData:
        return DeviceData(dev)

    def open_events(flags: int, caller: Caller) -> QueueStream:
        queue = dev.events.subscribe()
        return QueueStream(queue, lambda: dev.events.unsubscribe(queue))

    def attr(get: Callable[[], Any], set_: Callable[[str], Any]) -> ValueFile:
        def render() -> str:
            value = get()
            return str(int(value) if isinstance(value, bool) else value)

        return ValueFile(render, set_)

    return ObjectDir(
        dev.status,
        {
            "config": ValueFile(lambda: dev.config, dev.set_config),
            "size": attr(lambda: dev.size, dev.set_size),
            "block_size": attr(lambda: dev.block_size, dev.set_block_size),
            "write_cache": attr(lambda: dev.write_cache, dev.set_write_cache),
            "cmd_time_out": attr(lambda: dev.cmd_time_out, dev.set_cmd_time_out),
            "enable": attr(lambda: dev.enabled, set_enable),
            "data": DataFile(open_data, lambda: dev.size if dev.enabled else 0),
            "unmap": ValueFile(None, set_unmap),
            "scsi": TxFile(lambda caller: ScsiSession(dev)),
            "lock": ValueFile(get_lock, set_lock),
            "kernel": ValueFile(get_kernel, set_kernel),
            "events": StreamFile(open_events),
            "stats": ValueFile(stats),
        },
    )


def tcmu_dirs(
    core: Tcmu, create: Callable[[str], Any], destroy: Callable[[str], Any], loader: Handlers
) -> tuple[Node, Node]:
    handlers = Collection(
        lambda: core.handlers,
        lambda name, h: handler_dir(core, h),
        destroy=loader.unload,  # rmdir: unload, refused while a device uses it
        fixed={"load": ValueFile(None, loader.load)},  # root's alone (0200): it imports code
    )
    devices = Collection(
        lambda: core.devices,
        lambda name, dev: device_dir(core, dev),
        create=create,
        destroy=destroy,
        cache_names=True,  # rmdir the kernel sees; other removals (the kernel, targetcli) call drop()
    )
    return handlers, devices
