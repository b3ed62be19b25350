"""The command engine: one per device, shared by every front end (SCSI file, data file).

Dispatch follows tcmu-runner (`tcmur_generic_handle_cmd`): pending unit attention, FORMAT in
progress, the handler's handle_cmd, the synchronous emulations, then the generic I/O path —
with tcmu's status and sense mapping, and without its known bugs: no modulo by
a zero unmap alignment, COMPARE AND WRITE atomic against every write, READ CAPACITY(16) and
VPD B2 claim thin provisioning only when the handler can unmap, FUA honoured.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from backends.tcmu import scsi
from backends.tcmu.buffers import data_in
from backends.tcmu.device import MAX_UNMAP_DESCS
from backends.tcmu.handler import Command
from backends.tcmu.ranges import RangeLocks
from backends.tcmu.status import CHECK_CONDITION, GOOD, NO_SENSE, SENSE_LEN, Sts, fixed_sense, to_scsi

if TYPE_CHECKING:
    from backends.tcmu.device import Device

log = logging.getLogger("vfs.tcmu")

# WRITE SAME emulation and FORMAT UNIT write this much at a time, and (like UNMAP between its
# pieces) give the event loop a turn after each: a handler that completes inline would otherwise
# hold the whole mount for a 4 GiB FORMAT (12 s measured).
FILL_CHUNK = 1 << 20
NO_UA = {scsi.INQUIRY, scsi.REQUEST_SENSE, 0xA0}  # REPORT LUNS too
NO_FORMAT_GATE = {scsi.INQUIRY, scsi.REQUEST_SENSE}


@dataclass
class Response:
    status: int
    sense: bytes = b""
    data: bytes | memoryview = b""


class CommandError(Exception):
    """An I/O primitive's failure, carried to the front end with its TCMU status."""

    def __init__(self, sts: Sts, info: int | None = None) -> None:
        self.sts = sts
        self.info = info
        super().__init__(sts.name)


class Engine:
    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.ranges = RangeLocks()
        self.in_flight: dict[int, tuple[float, str, Command]] = {}
        self._ids = itertools.count(1)
        self._loop: tuple[trio.lowlevel.TrioToken, int] | None = None  # for arming commands
        self._paused: trio.Event | None = None  # set while a reconfig runs; callouts wait for it

    # ---- callouts: both completion models -----------------------------------------------------

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No callout runs inside: new ones wait, those in flight finish first. A reconfig runs
        on a worker thread and must not race the commands (a ram resize remaps the memory)."""
        await self._while_paused()
        done = self._paused = trio.Event()
        try:
            while self.in_flight:
                await trio.sleep(0.005)
            yield
        finally:
            self._paused = None
            done.set()

    async def _while_paused(self) -> None:
        while self._paused is not None:
            await self._paused.wait()

    async def callout(self, kind: str, fn: Any, cmd: Command, *args: Any) -> Sts:
        if self._paused is not None:  # tested first: no coroutine on the hot path
            await self._while_paused()
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        try:
            if handler.nr_threads > 0:
                with self._in_flight(kind, cmd):
                    sts = await trio.to_thread.run_sync(fn, dev, cmd, *args, limiter=dev.limiter)
                return Sts.OK if sts == 0 else Sts(sts)
            if self._loop is None:
                self._loop = (trio.lowlevel.current_trio_token(), threading.get_ident())
            cmd.arm(*self._loop)
            sts = fn(dev, cmd, *args)
            if sts != 0:
                return Sts(sts)
            if cmd.status is not None:
                return cmd.status  # completed inline: nothing could see it in flight
            with self._in_flight(kind, cmd):
                return await cmd.completion()
        except Exception:
            log.exception("handler %s failed in %s", handler.subtype, kind)
            return Sts.HW_ERR

    @contextmanager
    def _in_flight(self, kind: str, cmd: Command) -> Iterator[None]:
        """While a command is out with the handler: timeouts and `paused()` see it."""
        cid = next(self._ids)
        self.in_flight[cid] = (time.monotonic(), kind, cmd)
        try:
            yield
        finally:
            del self.in_flight[cid]

    def _timed(self, kind: str, nbytes: int, start: int, sts: Sts) -> None:
        self.dev.stats.record(kind, nbytes, time.perf_counter_ns() - start, sts is Sts.OK)

    # ---- I/O primitives (the data file uses these; so do READ/WRITE CDBs) ---------------------

    def check_range(self, lba: int, blocks: int) -> None:
        if lba < 0 or blocks < 0 or lba + blocks > self.dev.num_lbas:
            raise CommandError(Sts.RANGE)

    def _format_gate(self) -> None:
        if self.dev.format_progress is not None:
            raise CommandError(Sts.FRMT_IN_PROGRESS)

    async def _transfer(self, kind: str, lba: int, view: memoryview) -> None:
        """One READ or WRITE of whole blocks through the handler: a copy from or into the memory
        it lends, its read/write callout, or for a passthrough-only handler a READ(16)/WRITE(16)
        CDB to handle_cmd."""
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        start = time.perf_counter_ns()
        if self._paused is not None:
            await self._unpaused(lba, len(view) // dev.block_size)
        if handler.lend is not None:
            self._copy_lent(kind, lba, view, start)
            return
        if (callout := handler.read if kind == "read" else handler.write) is not None:
            cmd = Command(b"", [view])
            sts = await self.callout(kind, callout, cmd, [view], len(view), lba * dev.block_size)
        else:
            opcode = scsi.READ_16 if kind == "read" else scsi.WRITE_16
            blocks = len(view) // dev.block_size
            sts = await self._passthrough(
                Command(struct.pack(">BBQIBB", opcode, 0, lba, blocks, 0, 0), [view])
            )
        self._timed(kind, len(view), start, sts)
        if sts is not Sts.OK:
            raise CommandError(sts)

    async def _unpaused(self, lba: int, blocks: int) -> None:
        """Wait out a reconfig (it may remap the memory a handler lends); it may also have
        shrunk the device under blocks that were in range when the command started."""
        await self._while_paused()
        self.check_range(lba, blocks)

    def _copy_lent(self, kind: str, lba: int, view: memoryview, start: int) -> None:
        """A transfer between `view` and the memory the handler lends: one copy, no command to
        build and complete, and no checkpoint — no other task runs until it is done."""
        mem = self._lend(lba, len(view))
        if kind == "read":
            view[:] = mem
        else:
            mem[:] = view
        mem.release()
        self._timed(kind, len(view), start, Sts.OK)

    def _lend(self, lba: int, length: int) -> memoryview:
        """The handler's own memory for these blocks (see Handler.lend)."""
        dev = self.dev
        assert dev.handler is not None and dev.handler.lend is not None
        try:
            return dev.handler.lend(dev, lba * dev.block_size, length)
        except Exception:
            log.exception("handler %s failed in lend", dev.handler.subtype)
            raise CommandError(Sts.HW_ERR) from None

    async def read_into(self, lba: int, buf: memoryview) -> None:
        await self._transfer("read", lba, buf)

    async def read(self, lba: int, blocks: int, lend: bool = False) -> memoryview:
        """With `lend`, a handler that lends its memory gives a view of it instead of a copy;
        the caller must be done with it before its next checkpoint (the data file replies to
        the kernel with it at once), as the memory may change or be remapped after that."""
        self._format_gate()
        self.check_range(lba, blocks)
        dev = self.dev
        if lend and dev.handler is not None and dev.handler.lend is not None:
            if self._paused is not None:
                await self._unpaused(lba, blocks)
            start = time.perf_counter_ns()
            view = self._lend(lba, blocks * dev.block_size)
            self._timed("read", len(view), start, Sts.OK)
            return view
        buf = data_in(blocks * dev.block_size)
        if blocks:
            await self._transfer("read", lba, buf)
        return buf

    async def write(
        self, lba: int, data: bytes | memoryview, fua: bool = False, locked: bool = False
    ) -> None:
        """Write whole blocks; with write_cache off (or FUA) the data is durable on return."""
        self._format_gate()  # before waiting on a hold FORMAT has: fail now, not after it
        if locked:
            await self.write_held([(lba, data)], fua)
            return
        dev = self.dev
        assert dev.handler is not None
        blocks = len(data) // dev.block_size
        self.check_range(lba, blocks)
        if dev.handler.lend is None or self._paused is not None or self.ranges.held:
            async with self.ranges.hold(lba, lba + blocks):
                await self.write_held([(lba, data)], fua)
            return
        # Nothing held, nothing paused, and a lent copy has no checkpoint: no other write or
        # reconfig can come between its check and its copy, so it needs no hold of its own.
        self._copy_lent("write", lba, memoryview(data), time.perf_counter_ns())
        if fua or not dev.write_cache:
            await self.flush()

    async def write_held(self, pieces: list[tuple[int, bytes | memoryview]], fua: bool = False) -> None:
        """Write runs of whole blocks the caller holds in `ranges`, then one flush if needed."""
        dev = self.dev
        self._format_gate()
        for lba, data in pieces:
            self.check_range(lba, len(data) // dev.block_size)
        for lba, data in pieces:
            if len(data) >= dev.block_size:
                await self._transfer("write", lba, memoryview(data))
        if fua or not dev.write_cache:
            await self.flush()

    async def flush(self) -> None:
        handler = self.dev.handler
        assert handler is not None
        if handler.flush is None:
            if handler.passthrough_only():
                cmd = Command(bytes([scsi.SYNCHRONIZE_CACHE_10]) + bytes(9))
                sts = await self._passthrough(cmd)
                if sts is not Sts.OK:
                    raise CommandError(sts)
            return  # nothing cached that could be flushed
        start = time.perf_counter_ns()
        sts = await self.callout("flush", handler.flush, Command(b""))
        self._timed("flush", 0, start, sts)
        if sts is not Sts.OK:
            raise CommandError(sts)

    def split_unmap(self, lba: int, blocks: int) -> list[tuple[int, int]]:
        """tcmu's align_and_split_unmap, without dividing by a zero granularity or alignment."""
        dev = self.dev
        align = dev.unmap_gran_align or 1
        gran = dev.opt_unmap_gran or dev.max_unmap_len or blocks or 1
        chunks: list[tuple[int, int]] = []
        if lba % align and blocks:
            first = min(blocks, align - lba % align)
            chunks.append((lba, first))
            lba, blocks = lba + first, blocks - first
        while blocks:
            n = min(blocks, gran)
            chunks.append((lba, n))
            lba, blocks = lba + n, blocks - n
        return chunks

    async def unmap(self, lba: int, blocks: int) -> None:
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        self._format_gate()
        if handler.unmap is None:
            raise CommandError(Sts.INVALID_CMD)
        self.check_range(lba, blocks)
        async with self.ranges.hold(lba, lba + blocks):
            for chunk_lba, n in self.split_unmap(lba, blocks):
                start = time.perf_counter_ns()
                off, length = chunk_lba * dev.block_size, n * dev.block_size
                sts = await self.callout("unmap", handler.unmap, Command(b""), off, length)
                self._timed("unmap", length, start, sts)
                if sts is not Sts.OK:
                    raise CommandError(sts)
                await trio.lowlevel.checkpoint()

    async def _passthrough(self, cmd: Command) -> Sts:
        handler = self.dev.handler
        assert handler is not None and handler.handle_cmd is not None
        sts = await self.callout("handle_cmd", handler.handle_cmd, cmd)
        return Sts.INVALID_CMD if sts is Sts.NOT_HANDLED else sts

    # ---- the SCSI front end -------------------------------------------------------------------

    async def execute(self, cdb: bytes, data_out: bytes | memoryview = b"", data_in_len: int = 0) -> Response:
        """Run one SCSI command; always answers with a status (never raises for bad input)."""
        start = time.perf_counter_ns()
        try:
            response = await self._dispatch(bytes(cdb), memoryview(data_out), data_in_len)
            if len(response.data) > data_in_len:  # never more than the initiator's buffer holds
                response.data = response.data[:data_in_len]
            return response
        except CommandError as f:
            return self._fail(f.sts, info=f.info)
        except Exception:
            log.exception("engine failure on CDB %s", bytes(cdb).hex())
            return self._fail(Sts.HW_ERR)
        finally:
            if cdb and cdb[0] not in scsi.READS | scsi.WRITES:
                self.dev.stats.ops["other"] += 1
                self.dev.stats.latencies.append(time.perf_counter_ns() - start)

    def _fail(self, sts: Sts, info: int | None = None, progress: int | None = None) -> Response:
        status, sense = to_scsi(sts, info=info, progress=progress)
        if status != GOOD:
            self.dev.stats.errors += status == CHECK_CONDITION
        return Response(status, sense)

    async def _dispatch(self, cdb: bytes, data_out: memoryview, data_in_len: int) -> Response:
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        if not cdb:
            return self._fail(Sts.INVALID_CDB)
        op = cdb[0]
        expected = scsi.cdb_length(op)
        if expected is not None and len(cdb) < expected:
            return self._fail(Sts.INVALID_CDB)
        if dev.pending_ua and op not in NO_UA:
            dev.pending_ua = False
            return self._fail(Sts.CAPACITY_CHANGED)
        if dev.format_progress is not None and op not in NO_FORMAT_GATE:
            return self._fail(Sts.FRMT_IN_PROGRESS, progress=dev.format_progress)
        if handler.handle_cmd is not None:
            buf = memoryview(bytearray(data_in_len)) if data_in_len else data_out
            cmd = Command(cdb, [buf] if len(buf) else [])
            sts = await self.callout("handle_cmd", handler.handle_cmd, cmd)
            if sts is Sts.PASSTHROUGH_ERR:
                return Response(CHECK_CONDITION, bytes(cmd.sense[:SENSE_LEN]))
            if sts is not Sts.NOT_HANDLED:
                if sts is not Sts.OK:
                    return self._fail(sts)
                length = data_in_len if cmd.read_len is None else min(cmd.read_len, data_in_len)
                return Response(GOOD, b"", bytes(buf[:length]) if data_in_len else b"")
            if handler.passthrough_only():
                return self._fail(Sts.INVALID_CMD)
        return await self._emulate(op, cdb, data_out, data_in_len)

    async def _emulate(self, op: int, cdb: bytes, data_out: memoryview, data_in_len: int) -> Response:
        dev = self.dev
        if op in scsi.READS:
            rw = scsi.rw_fields(cdb)
            self._check_xfer(rw.blocks)
            data = await self.read(rw.lba, rw.blocks)
            return Response(GOOD, b"", data[:data_in_len])
        if op in scsi.WRITES:
            rw = scsi.rw_fields(cdb)
            self._check_xfer(rw.blocks)
            if len(data_out) != rw.blocks * dev.block_size:
                return self._fail(Sts.INVALID_CDB)
            await self.write(rw.lba, data_out, fua=rw.fua)
            return Response(GOOD)
        if op == scsi.TEST_UNIT_READY:
            return Response(GOOD)
        if op == scsi.INQUIRY:
            return self._inquiry(cdb)
        if op == scsi.REQUEST_SENSE:
            return self._request_sense(cdb)
        if op == scsi.READ_CAPACITY_10:
            if cdb[1] & 0x01 or cdb[8] & 0x01:
                return self._fail(Sts.INVALID_CDB)
            return Response(GOOD, b"", scsi.read_capacity_10(self.limits())[:data_in_len])
        if op == scsi.SERVICE_ACTION_IN_16 and cdb[1] & 0x1F == scsi.READ_CAPACITY_16_SA:
            alloc = struct.unpack_from(">I", cdb, 10)[0]
            return Response(GOOD, b"", scsi.read_capacity_16(self.limits())[: min(alloc, data_in_len)])
        if op in (scsi.MODE_SENSE_6, scsi.MODE_SENSE_10):
            return self._mode_sense(cdb, data_in_len)
        if op in (scsi.MODE_SELECT_6, scsi.MODE_SELECT_10):
            return self._mode_select(cdb, data_out)
        if op in (scsi.SYNCHRONIZE_CACHE_10, scsi.SYNCHRONIZE_CACHE_16):
            if dev.handler.flush is None:  # type: ignore[union-attr]
                return self._fail(Sts.INVALID_CMD)
            await self.flush()
            return Response(GOOD)
        if op == scsi.START_STOP_UNIT:
            if not cdb[4] & 0x01 or cdb[4] & 0xF0:
                return self._fail(Sts.INVALID_CDB)
            return Response(GOOD)
        if op == scsi.UNMAP:
            return await self._unmap_cmd(cdb, data_out)
        if op in (scsi.WRITE_SAME_10, scsi.WRITE_SAME_16):
            return await self._write_same(cdb, data_out)
        if op == scsi.COMPARE_AND_WRITE:
            return await self._compare_and_write(cdb, data_out)
        if op in (scsi.WRITE_VERIFY_10, scsi.WRITE_VERIFY_16):
            return await self._write_verify(cdb, data_out)
        if op == scsi.FORMAT_UNIT:
            return await self._format(cdb)
        return self._fail(Sts.INVALID_CMD)

    def _check_xfer(self, blocks: int) -> None:
        if blocks > self.dev.max_xfer_len:
            raise CommandError(Sts.INVALID_CDB)

    # ---- emulations ---------------------------------------------------------------------------

    def limits(self) -> scsi.Limits:
        dev = self.dev
        return scsi.Limits(
            block_size=dev.block_size,
            num_lbas=dev.num_lbas,
            max_xfer_len=dev.max_xfer_len,
            unmap=dev.handler is not None and dev.handler.unmap is not None,
            max_unmap_len=dev.max_unmap_len,
            max_unmap_descs=MAX_UNMAP_DESCS,
            opt_unmap_gran=dev.opt_unmap_gran,
            unmap_gran_align=dev.unmap_gran_align,
            solid_state=dev.solid_state,
        )

    def _inquiry(self, cdb: bytes) -> Response:
        evpd, page = cdb[1] & 0x01, cdb[2]
        alloc = struct.unpack_from(">H", cdb, 3)[0]
        if not evpd:
            if page:
                return self._fail(Sts.INVALID_CDB)
            return Response(GOOD, b"", scsi.standard_inquiry(alloc))
        data = scsi.vpd_page(page, self.dev.serial, self.dev.config, self.limits())
        if data is None:
            return self._fail(Sts.INVALID_CDB)
        return Response(GOOD, b"", data[:alloc])

    def _request_sense(self, cdb: bytes) -> Response:
        dev = self.dev
        if dev.pending_ua:
            dev.pending_ua = False
            _, sense = to_scsi(Sts.CAPACITY_CHANGED)
        elif dev.format_progress is not None:
            _, sense = to_scsi(Sts.FRMT_IN_PROGRESS, progress=dev.format_progress)
        else:
            sense = fixed_sense(NO_SENSE, 0, 0)
        return Response(GOOD, b"", sense[: cdb[4]])

    def _mode_sense(self, cdb: bytes, data_in_len: int) -> Response:
        ten = cdb[0] == scsi.MODE_SENSE_10
        pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
        alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if pc == 3:
            return self._fail(Sts.NOTSUPP_SAVE_PARAMS)
        if subpage not in (0, 0xFF) or (subpage == 0xFF and page != 0x3F):
            return self._fail(Sts.INVALID_CDB)
        body = scsi.mode_pages(page, self.dev.write_cache, changeable=pc == 1)
        if body is None:
            return self._fail(Sts.INVALID_CDB)
        return Response(GOOD, b"", scsi.mode_sense_response(ten, body)[: min(alloc, data_in_len)])

    def _mode_select(self, cdb: bytes, data: memoryview) -> Response:
        ten = cdb[0] == scsi.MODE_SELECT_10
        if not cdb[1] & 0x10 or cdb[1] & 0x01:  # PF=1, SP=0
            return self._fail(Sts.INVALID_CDB)
        plen = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
        if plen == 0:
            return Response(GOOD)
        data = data[:plen]
        hdr = 8 if ten else 4
        if len(data) < hdr:
            return self._fail(Sts.INVALID_PARAM_LIST_LEN)
        bdl = struct.unpack_from(">H", data, 6)[0] if ten else data[3]
        pos = hdr + bdl
        while pos < len(data):
            if pos + 2 > len(data):
                return self._fail(Sts.INVALID_PARAM_LIST)
            page, length = data[pos] & 0x3F, data[pos + 1]
            current = scsi.mode_pages(page, self.dev.write_cache, changeable=False)
            sent = bytes(data[pos : pos + 2 + length])
            if current is None or page == 0x3F or bytes([sent[0] & 0x3F]) + sent[1:] != current:
                return self._fail(Sts.INVALID_PARAM_LIST)  # only the current values are accepted
            pos += 2 + length
        return Response(GOOD)

    async def _unmap_cmd(self, cdb: bytes, data: memoryview) -> Response:
        dev = self.dev
        if dev.handler.unmap is None:  # type: ignore[union-attr]
            return self._fail(Sts.INVALID_CMD)
        if cdb[1] & 0x01:  # ANCHOR
            return self._fail(Sts.INVALID_CDB)
        plen = struct.unpack_from(">H", cdb, 7)[0]
        if plen == 0:
            return Response(GOOD)
        if plen < 8 or len(data) < plen:
            return self._fail(Sts.INVALID_PARAM_LIST_LEN)
        bddl = min(struct.unpack_from(">H", data, 2)[0], plen - 8) // 16 * 16
        descs = [struct.unpack_from(">QI", data, 8 + i) for i in range(0, bddl, 16)]
        if len(descs) > MAX_UNMAP_DESCS:
            return self._fail(Sts.INVALID_PARAM_LIST)
        for lba, n in descs:
            if n > dev.max_unmap_len:
                return self._fail(Sts.INVALID_PARAM_LIST)
            self.check_range(lba, n)
        for lba, n in descs:
            if n:
                await self.unmap(lba, n)
        return Response(GOOD)

    async def _write_same(self, cdb: bytes, data: memoryview) -> Response:
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        if cdb[0] == scsi.WRITE_SAME_10:
            lba, n = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
        else:
            lba, n = struct.unpack_from(">QI", cdb, 2)
        if n == 0 or len(data) != dev.block_size:  # WSNZ: zero blocks is not "the rest of the disk"
            return self._fail(Sts.INVALID_CDB)
        self.check_range(lba, n)
        self._format_gate()
        align = dev.unmap_gran_align or 1
        zeros = not any(data)
        if cdb[1] & 0x08 and handler.unmap is not None and zeros and lba % align == 0 and n % align == 0:
            await self.unmap(lba, n)  # unmapped blocks read as zeros (LBPRZ), so this is exact
            return Response(GOOD)
        async with self.ranges.hold(lba, lba + n):
            if handler.writesame is not None:
                start = time.perf_counter_ns()
                off, length = lba * dev.block_size, n * dev.block_size
                sts = await self.callout(
                    "writesame", handler.writesame, Command(cdb, [data]), off, length, [data]
                )
                self._timed("writesame", length, start, sts)
                if sts is not Sts.OK:
                    return self._fail(sts)
                return Response(GOOD)
            per = max(1, FILL_CHUNK // dev.block_size)
            chunk = bytes(data) * min(per, n)
            while n:
                k = min(per, n)
                await self.write(lba, memoryview(chunk)[: k * dev.block_size], locked=True)
                await trio.lowlevel.checkpoint()
                lba, n = lba + k, n - k
        return Response(GOOD)

    async def _compare_and_write(self, cdb: bytes, data: memoryview) -> Response:
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        lba, n = struct.unpack_from(">Q", cdb, 2)[0], cdb[13]
        if n == 0:
            return Response(GOOD)
        if n > 1 or len(data) != 2 * n * dev.block_size:  # MAXIMUM COMPARE AND WRITE LENGTH is 1
            return self._fail(Sts.INVALID_CDB)
        self.check_range(lba, n)
        self._format_gate()
        half = n * dev.block_size
        async with self.ranges.hold(lba, lba + n):  # every write to these blocks waits
            if handler.caw is not None:
                start = time.perf_counter_ns()
                sts = await self.callout(
                    "caw", handler.caw, Command(cdb, [data]), lba * dev.block_size, half, [data]
                )
                self._timed("caw", half, start, sts)
                return self._fail(sts) if sts is not Sts.OK else Response(GOOD)
            current = await self.read(lba, n)
            if current != data[:half]:
                offset = next(i for i in range(half) if current[i] != data[i])
                dev.stats.record("caw", half, 0, False)
                return self._fail(Sts.MISCOMPARE, info=offset)
            await self.write(lba, data[half:], locked=True, fua=bool(cdb[1] & 0x08))
            dev.stats.record("caw", half, 0, True)
        return Response(GOOD)

    async def _write_verify(self, cdb: bytes, data: memoryview) -> Response:
        rw = scsi.rw_fields(cdb)
        self._check_xfer(rw.blocks)
        if len(data) != rw.blocks * self.dev.block_size:
            return self._fail(Sts.INVALID_CDB)
        async with self.ranges.hold(rw.lba, rw.lba + rw.blocks):
            await self.write(rw.lba, data, locked=True)
            back = await self.read(rw.lba, rw.blocks)
        if back != data:
            offset = next(i for i in range(len(data)) if back[i] != data[i])
            return self._fail(Sts.MISCOMPARE, info=offset)
        return Response(GOOD)

    async def _format(self, cdb: bytes) -> Response:
        dev = self.dev
        if cdb[1] & 0x10:  # FMTDATA: parameter lists are not supported
            return self._fail(Sts.INVALID_CDB)
        total = dev.num_lbas
        per = max(1, FILL_CHUNK // dev.block_size)
        zeros = memoryview(bytes(per * dev.block_size))
        dev.format_progress = 0
        try:
            lba = 0
            async with self.ranges.hold(0, total):
                while lba < total:
                    k = min(per, total - lba)
                    await self._transfer("write", lba, zeros[: k * dev.block_size])
                    await trio.lowlevel.checkpoint()
                    lba += k
                    dev.format_progress = lba * 0x10000 // total if total else 0
        finally:
            dev.format_progress = None
        await self.flush()
        return Response(GOOD)
