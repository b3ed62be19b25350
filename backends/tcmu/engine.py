"""The command engine: one per device, shared by every front end (the SCSI file and the
kernel's commands through frontend.py, the data file directly): callouts to the handler in
both completion models, and the I/O primitives with their range locks and stats.
"""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any

import trio

from backends.tcmu import frontend, scsi
from backends.tcmu.buffers import data_in
from backends.tcmu.device import MAX_UNMAP_DESCS
from backends.tcmu.frontend import Response
from backends.tcmu.handler import Command
from backends.tcmu.ranges import RangeLocks
from backends.tcmu.status import CommandError, Sts

if TYPE_CHECKING:
    from backends.tcmu.device import Device
    from backends.tcmu.handler import Handler

    NowCallout = Callable[[Device, list[memoryview], int, int], Sts | None]

log = logging.getLogger("vfs.tcmu")


class Engine:
    def __init__(self, dev: Device) -> None:
        self.dev = dev
        # Held by a transfer done at once on another thread (the kernel ring's, see `rw_now`):
        # a range hold or a pause on the loop waits out that one transfer.
        self.now_lock = threading.Lock()
        self.ranges = RangeLocks(self.now_lock)
        self.in_flight: dict[int, tuple[float, str, Command]] = {}
        self._ids = itertools.count(1)
        self._loop: tuple[trio.lowlevel.TrioToken, int] | None = None  # for arming commands
        self._paused: trio.Event | None = None  # set while a reconfig runs; callouts wait for it
        # Written since the last flush completed: a flush with nothing to flush answers at once.
        self.dirty = True

    # ---- callouts: both completion models -----------------------------------------------------

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """No callout runs inside: new ones wait, those in flight finish first. A reconfig runs
        on a worker thread and must not race the commands (a ram resize remaps the memory)."""
        await self._while_paused()
        done = trio.Event()
        with self.now_lock:  # from here no transfer starts at once, and none is under way
            self._paused = done
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
        """tcmu-runner's two completion models. With worker threads (nr_threads > 0) a callout
        runs on one and its return is the status. Without, it runs on the event loop: a
        read/write/flush/unmap... returning 0 has taken the command (async_handle_cmd makes it
        ASYNC_HANDLED) and finishes it with cmd.complete(); handle_cmd's return is its status
        (tcmur_cmd_passthrough_handler returns it as it is). In both, ASYNC_HANDLED means
        cmd.complete() follows, from any thread."""
        if self._paused is not None:  # tested first: no coroutine on the hot path
            if self.dev.recovering:  # reconnecting: initiators retry BUSY (tcmu_dev_in_recovery)
                return Sts.BUSY
            await self._while_paused()
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        if self._loop is None:
            self._loop = (trio.lowlevel.current_trio_token(), threading.get_ident())
        cmd.arm(*self._loop)
        try:
            if handler.nr_threads > 0:
                with self._in_flight(kind, cmd):
                    sts = await trio.to_thread.run_sync(fn, dev, cmd, *args, limiter=dev.limiter)
                    if sts == Sts.ASYNC_HANDLED:
                        return await cmd.completion()
                return Sts.OK if sts == 0 else Sts(sts)
            sts = fn(dev, cmd, *args)
            if cmd.status is not None and sts in (0, Sts.ASYNC_HANDLED):
                return cmd.status  # completed inline: nothing could see it in flight
            if sts == Sts.ASYNC_HANDLED or (sts == 0 and kind != "handle_cmd"):
                with self._in_flight(kind, cmd):
                    return await cmd.completion()
            return Sts.OK if sts == 0 else Sts(sts)
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

    def timed(self, kind: str, nbytes: int, start: int, sts: Sts) -> None:
        self.dev.stats.record(kind, nbytes, time.perf_counter_ns() - start, sts is Sts.OK)
        if kind != "read" and kind != "flush":  # failed ones too: they may have written part
            self.dirty = True

    # ---- at once, on any thread ---------------------------------------------------------------

    def rw_now(self, write: bool, lba: int, blocks: int, iovec: list[memoryview], length: int) -> Sts | None:
        """A READ or WRITE of whole blocks done at once on the calling thread, for a handler
        that lends its memory or does I/O at once (read_now/write_now); None where it needs the
        engine's full path instead (anything but the plain case: a pending unit attention, a
        FORMAT, a pause, a held range, write-through, an odd length, a range error...), which
        then answers exactly as it always does. This is tcmu-runner's fast path: the kernel's
        ring thread serves such commands with no hop to the event loop."""
        dev = self.dev
        handler = self._plain(lba, blocks)
        bs = dev.block_size
        if handler is None or dev.pending_ua or blocks * bs != length or (write and not dev.write_cache):
            return None
        lend = handler.lend
        fn = None if lend is not None else handler.write_now if write else handler.read_now
        if lend is None and fn is None:
            return None
        with self.now_lock:
            if self._paused is not None or (write and self.ranges.held):
                return None
            start = time.perf_counter_ns()
            if lend is not None:
                try:
                    sts = _copy_between(lend(dev, lba * bs, length), iovec, write)
                except Exception:
                    log.exception("handler %s failed in lend", handler.subtype)
                    sts = Sts.HW_ERR
            else:
                assert fn is not None
                if (got := self._now(fn, lba, iovec, length)) is None:
                    return None
                sts = got
            dev.stats.record(
                "write" if write else "read", length, time.perf_counter_ns() - start, sts is Sts.OK
            )
            if write:
                self.dirty = True
        return sts

    def _plain(self, lba: int, blocks: int) -> Handler | None:
        """The handler, where blocks [lba, lba+blocks) may be moved at once; None where the
        full path must answer (no handler, a passthrough one, FORMAT, recovery, out of range)."""
        dev = self.dev
        handler = dev.handler
        if (
            handler is None
            or handler.handle_cmd is not None
            or ((p := dev.progress) is not None and p[0] == "format")  # format_progress, without its call
            or dev.recovering
            or lba < 0
            or blocks <= 0
            or lba + blocks > dev.num_lbas
        ):
            return None
        return handler

    def read_now(self, lba: int, blocks: int, lend: bool = False) -> memoryview | None:
        """`read` done at once, on the loop: a view of lent memory (with `lend`, as `read`
        gives it) or a fresh buffer the handler's read_now filled; None where the full path
        must do it. No coroutine, no command: the data file's hottest call."""
        handler = self._plain(lba, blocks)
        if handler is None or self._paused is not None:
            return None
        dev = self.dev
        length = blocks * dev.block_size
        start = time.perf_counter_ns()
        if lend and (lend_read := handler.lend_read) is not None:
            # `file`'s 4 KiB reads: _lent and timed written out, two calls less per request
            try:
                view = lend_read(dev, lba * dev.block_size, length)
            except Exception:
                log.exception("handler %s failed in lend_read", handler.subtype)
                view = None
            if view is not None:
                dev.stats.record("read", length, time.perf_counter_ns() - start, True)
                return view  # (a failed lend_read: the read goes the usual way)
        if handler.lend is not None:
            if not lend:
                return None
            view = self._lend(lba, length)
        elif handler.read_now is not None:
            view = data_in(length)
            sts = self._now(handler.read_now, lba, [view], length)
            if sts is None:
                return None
            if sts is not Sts.OK:
                self.timed("read", length, start, sts)
                raise CommandError(sts, recorded=True)
        else:
            return None
        self.timed("read", length, start, Sts.OK)
        return view

    # ---- I/O primitives (the data file uses these; so do READ/WRITE CDBs) ---------------------

    def check_range(self, lba: int, blocks: int) -> None:
        if lba < 0 or blocks < 0 or lba + blocks > self.dev.num_lbas:
            raise CommandError(Sts.RANGE)

    def format_gate(self) -> None:
        if self.dev.format_progress is not None:
            raise CommandError(Sts.FRMT_IN_PROGRESS)

    async def transfer(self, kind: str, lba: int, view: memoryview) -> None:
        """One READ or WRITE of whole blocks through the handler: a copy from or into the memory
        it lends, its read/write callout, or for a passthrough-only handler a READ(16)/WRITE(16)
        CDB to handle_cmd."""
        dev = self.dev
        handler = dev.handler
        assert handler is not None
        start = time.perf_counter_ns()
        if self._paused is not None:
            if dev.recovering:
                raise CommandError(Sts.BUSY)
            await self._unpaused(lba, len(view) // dev.block_size)
        if handler.lend is not None:
            self._copy_lent(kind, lba, view, start)
            return
        now = handler.read_now if kind == "read" else handler.write_now
        if now is not None and (sts := self._now(now, lba, [view], len(view))) is not None:
            pass  # done at once: no command to build, no callout to wait for
        elif (callout := handler.read if kind == "read" else handler.write) is not None:
            cmd = Command(b"", [view])
            sts = await self.callout(kind, callout, cmd, [view], len(view), lba * dev.block_size)
        else:
            opcode = scsi.READ_16 if kind == "read" else scsi.WRITE_16
            blocks = len(view) // dev.block_size
            sts = await self._passthrough(
                Command(struct.pack(">BBQIBB", opcode, 0, lba, blocks, 0, 0), [view])
            )
        self.timed(kind, len(view), start, sts)
        if sts is not Sts.OK:
            raise CommandError(sts, recorded=True)

    def _now(self, fn: NowCallout, lba: int, iovec: list[memoryview], length: int) -> Sts | None:
        """A handler's read_now/write_now; a failure in it is a HARDWARE ERROR, logged."""
        dev = self.dev
        try:
            return fn(dev, iovec, length, lba * dev.block_size)
        except Exception:
            log.exception("handler %s failed in %s", dev.handler.subtype if dev.handler else "?", fn.__name__)
            return Sts.HW_ERR

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
        self.timed(kind, len(view), start, Sts.OK)

    def _lend(self, lba: int, length: int) -> memoryview:
        """The handler's own memory for these blocks (see Handler.lend)."""
        assert self.dev.handler is not None and self.dev.handler.lend is not None
        view = self._lent(self.dev.handler.lend, lba, length)
        if view is None:
            raise CommandError(Sts.HW_ERR)
        return view

    def _lent(
        self, fn: Callable[[Device, int, int], memoryview | None], lba: int, length: int
    ) -> memoryview | None:
        """A handler's lend, lend_read or lend_write for these blocks; a failure in it is
        logged, and None."""
        dev = self.dev
        try:
            return fn(dev, lba * dev.block_size, length)
        except Exception:
            log.exception("handler %s failed in %s", dev.handler.subtype if dev.handler else "?", fn.__name__)
            return None

    async def read_into(self, lba: int, buf: memoryview) -> None:
        """Whole blocks into the caller's buffer (the kernel's data area): no copy of ours."""
        self.format_gate()
        self.check_range(lba, len(buf) // self.dev.block_size)
        if len(buf):
            await self.transfer("read", lba, buf)

    async def read(self, lba: int, blocks: int, lend: bool = False, now: bool = True) -> memoryview:
        """With `lend`, a handler that lends its memory gives a view of it instead of a copy;
        the caller must be done with it before its next checkpoint (the data file replies to
        the kernel with it at once), as the memory may change or be remapped after that.
        `now=False`: the caller has just had read_now say no; not again."""
        if now and (view := self.read_now(lba, blocks, lend)) is not None:
            return view
        self.format_gate()
        self.check_range(lba, blocks)
        dev = self.dev
        if lend and dev.handler is not None and dev.handler.lend is not None:
            if self._paused is not None:
                await self._unpaused(lba, blocks)
            start = time.perf_counter_ns()
            view = self._lend(lba, blocks * dev.block_size)
            self.timed("read", len(view), start, Sts.OK)
            return view
        buf = data_in(blocks * dev.block_size)
        if blocks:
            await self.transfer("read", lba, buf)
        return buf

    async def write(
        self, lba: int, data: bytes | memoryview, fua: bool = False, locked: bool = False, now: bool = True
    ) -> None:
        """Write whole blocks; with write_cache off (or FUA) the data is durable on return.
        `now=False`: the caller has just had write_now say no; not again."""
        self.format_gate()  # before waiting on a hold FORMAT has: fail now, not after it
        if locked:
            await self.write_held([(lba, data)], fua)
            return
        dev = self.dev
        assert dev.handler is not None
        blocks = len(data) // dev.block_size
        self.check_range(lba, blocks)
        # Nothing held, nothing paused, and a lent copy or a write done at once has no
        # checkpoint: no other write or reconfig can come between its check and its end, so it
        # needs no hold of its own.
        if self._paused is not None or self.ranges.held or not now or not self._written_at_once(lba, data):
            async with self.ranges.hold(lba, lba + blocks):
                await self.write_held([(lba, data)], fua)
            return
        if fua or not dev.write_cache:
            await self.flush()

    def write_now(self, lba: int, data: bytes | memoryview) -> bool:
        """`write` done at once, on the loop, where it needs no hold, no wait and no flush
        after it; False where `write` must do it (nothing was written then)."""
        if not self._may_write_now():
            return False
        self.format_gate()
        self.check_range(lba, len(data) // self.dev.block_size)
        return self._written_at_once(lba, data)

    def write_bytes_now(self, off: int, data: bytes | memoryview) -> bool:
        """A write of any byte range done at once where the handler lends memory for every
        block it touches: only these bytes are copied in, the rest of the edge blocks stays as
        it is, with no read-modify-write (nothing else runs until the copy is done). This is
        the data file's buffered write, which the kernel splits where the caller's buffer
        crosses a page more than a request holds. False where `write` must do it."""
        if not self._may_write_now():
            return False
        bs = self.dev.block_size
        first, end = off // bs, -(-(off + len(data)) // bs)
        self.format_gate()
        self.check_range(first, end - first)
        return self._copied_in(first, (end - first) * bs, off - first * bs, data, time.perf_counter_ns())

    def _may_write_now(self) -> bool:
        dev = self.dev
        return self._paused is None and not self.ranges.held and dev.write_cache and dev.handler is not None

    def _copied_in(self, lba: int, length: int, skip: int, data: bytes | memoryview, start: int) -> bool:
        """`data` copied to byte `skip` of the memory the handler lends for the `length` bytes
        of blocks from `lba` (lend, or lend_write where it says yes now); False where it lends
        none now."""
        handler = self.dev.handler
        assert handler is not None
        if handler.lend is not None:
            mem = self._lend(lba, length)
        elif handler.lend_write is None or (mem := self._lent(handler.lend_write, lba, length)) is None:
            return False
        mem[skip : skip + len(data)] = data
        mem.release()
        self.timed("write", len(data), start, Sts.OK)
        return True

    def _written_at_once(self, lba: int, data: bytes | memoryview) -> bool:
        """A write without a checkpoint, where the handler lends or writes at once."""
        handler, view = self.dev.handler, memoryview(data)
        assert handler is not None
        start = time.perf_counter_ns()
        if self._copied_in(lba, len(view), 0, view, start):
            return True
        if handler.write_now is None or (sts := self._now(handler.write_now, lba, [view], len(view))) is None:
            return False
        self.timed("write", len(view), start, sts)
        if sts is not Sts.OK:
            raise CommandError(sts, recorded=True)
        return True

    async def write_held(self, pieces: list[tuple[int, bytes | memoryview]], fua: bool = False) -> None:
        """Write runs of whole blocks the caller holds in `ranges`, then one flush if needed."""
        dev = self.dev
        self.format_gate()
        for lba, data in pieces:
            self.check_range(lba, len(data) // dev.block_size)
        for lba, data in pieces:
            if len(data) >= dev.block_size:
                await self.transfer("write", lba, memoryview(data))
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
        if not self.dirty and handler.handle_cmd is None:  # (handle_cmd writes are not seen here)
            return  # nothing written since the last flush: no trip through the handler
        self.dirty = False  # a write completing from here on is after this flush
        start = time.perf_counter_ns()
        sts = None
        if handler.flush_now is not None and self._paused is None:  # (a pause: the callout waits)
            try:
                sts = handler.flush_now(self.dev)
            except Exception:
                log.exception("handler %s failed in flush_now", handler.subtype)
                sts = Sts.HW_ERR
        if sts is None:
            sts = await self.callout("flush", handler.flush, Command(b""))
        self.timed("flush", 0, start, sts)
        if sts is not Sts.OK:
            self.dirty = True
            raise CommandError(sts, recorded=True)

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
        self.format_gate()
        if handler.unmap is None:
            raise CommandError(Sts.INVALID_CMD)
        self.check_range(lba, blocks)
        async with self.ranges.hold(lba, lba + blocks):
            for chunk_lba, n in self.split_unmap(lba, blocks):
                start = time.perf_counter_ns()
                off, length = chunk_lba * dev.block_size, n * dev.block_size
                sts = await self.callout("unmap", handler.unmap, Command(b""), off, length)
                self.timed("unmap", length, start, sts)
                if sts is not Sts.OK:
                    raise CommandError(sts, recorded=True)
                await trio.lowlevel.checkpoint()

    async def _passthrough(self, cmd: Command) -> Sts:
        handler = self.dev.handler
        assert handler is not None and handler.handle_cmd is not None
        sts = await self.callout("handle_cmd", handler.handle_cmd, cmd)
        return Sts.INVALID_CMD if sts is Sts.NOT_HANDLED else sts

    # ---- the SCSI front end -------------------------------------------------------------------

    async def execute(
        self,
        cdb: bytes,
        data_out: bytes | memoryview = b"",
        data_in_len: int = 0,
        data_in: memoryview | None = None,
    ) -> Response:
        """Run one SCSI command; always answers with a status (never raises for bad input).
        With `data_in`, a READ puts its data there itself (the response's data is a view of it)."""
        return await frontend.execute(self, cdb, data_out, data_in_len, data_in)

    def check_xfer(self, blocks: int) -> None:
        if blocks > self.dev.max_xfer_len:
            raise CommandError(Sts.INVALID_CDB)

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


def _copy_between(mem: memoryview, iovec: list[memoryview], write: bool) -> Sts:
    pos = 0
    for view in iovec:
        n = len(view)
        if write:
            mem[pos : pos + n] = view
        else:
            view[:] = mem[pos : pos + n]
        pos += n
    mem.release()
    return Sts.OK
