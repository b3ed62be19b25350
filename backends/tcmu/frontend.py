"""The SCSI front end of a device's engine: one CDB in, a status, sense and data out.

Dispatch follows tcmu-runner (`tcmur_generic_handle_cmd`): pending unit attention, FORMAT in
progress, the handler's handle_cmd, then the emulations, one function per command found by
opcode in EMULATIONS — with tcmu's status and sense mapping, and without its known bugs: no
modulo by a zero unmap alignment, COMPARE AND WRITE atomic against every write, READ
CAPACITY(16) and VPD B2 claim thin provisioning only when the handler can unmap, FUA honoured.
The I/O the emulations do goes through the engine's primitives (engine.py), as the data file's
does, so locks and stats are one.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from backends.tcmu import scsi
from backends.tcmu.device import MAX_UNMAP_DESCS
from backends.tcmu.handler import Command
from backends.tcmu.status import (
    CHECK_CONDITION,
    GOOD,
    NO_SENSE,
    SENSE_LEN,
    CommandError,
    Sts,
    fixed_sense,
    to_scsi,
)

if TYPE_CHECKING:
    from backends.tcmu.engine import Engine

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


@dataclass(frozen=True, slots=True)
class Request:
    cdb: bytes
    data_out: memoryview
    data_in_len: int
    data_in: memoryview | None = None  # where a READ may put its data directly


async def execute(
    e: Engine,
    cdb: bytes,
    data_out: bytes | memoryview = b"",
    data_in_len: int = 0,
    data_in: memoryview | None = None,
) -> Response:
    """Run one SCSI command; always answers with a status (never raises for bad input)."""
    start = time.perf_counter_ns()
    try:
        response = await _dispatch(e, Request(bytes(cdb), memoryview(data_out), data_in_len, data_in))
        if len(response.data) > data_in_len:  # never more than the initiator's buffer holds
            response.data = response.data[:data_in_len]
        return response
    except CommandError as f:
        return fail(e, f.sts, info=f.info, recorded=f.recorded)
    except Exception:
        log.exception("engine failure on CDB %s", bytes(cdb).hex())
        return fail(e, Sts.HW_ERR)
    finally:
        if cdb and cdb[0] not in scsi.READS | scsi.WRITES:
            e.dev.stats.record("other", 0, time.perf_counter_ns() - start, True)


def fail(
    e: Engine, sts: Sts, info: int | None = None, progress: int | None = None, recorded: bool = False
) -> Response:
    """The answer for a command that failed; counted in the device's errors unless `recorded`
    (its handler's failure, which Stats.record already counted)."""
    status, sense = to_scsi(sts, info=info, progress=progress)
    if status != GOOD and not recorded:
        e.dev.stats.refused += 1
    return Response(status, sense)


async def _dispatch(e: Engine, req: Request) -> Response:
    dev = e.dev
    handler = dev.handler
    assert handler is not None
    cdb = req.cdb
    if not cdb:
        return fail(e, Sts.INVALID_CDB)
    op = cdb[0]
    expected = scsi.cdb_length(op)
    if expected is not None and len(cdb) < expected:
        return fail(e, Sts.INVALID_CDB)
    if dev.pending_ua and op not in NO_UA:
        dev.pending_ua = False
        return fail(e, Sts.CAPACITY_CHANGED)
    if dev.format_progress is not None and op not in NO_FORMAT_GATE:
        return fail(e, Sts.FRMT_IN_PROGRESS, progress=dev.format_progress)
    if handler.handle_cmd is not None:
        buf = memoryview(bytearray(req.data_in_len)) if req.data_in_len else req.data_out
        cmd = Command(cdb, [buf] if len(buf) else [])
        sts = await e.callout("handle_cmd", handler.handle_cmd, cmd)
        if sts is Sts.PASSTHROUGH_ERR:
            dev.stats.refused += 1  # the handler's own sense: failed, and counted nowhere else
            return Response(CHECK_CONDITION, bytes(cmd.sense[:SENSE_LEN]))
        if sts is not Sts.NOT_HANDLED:
            if sts is not Sts.OK:
                return fail(e, sts)
            length = req.data_in_len if cmd.read_len is None else min(cmd.read_len, req.data_in_len)
            return Response(GOOD, b"", bytes(buf[:length]) if req.data_in_len else b"")
        if handler.passthrough_only():
            return fail(e, Sts.INVALID_CMD)
    emulation = EMULATIONS.get(op)
    if emulation is None:
        return fail(e, Sts.INVALID_CMD)
    if op in scsi.PROTECT_FIELD and cdb[1] & 0xE0:  # protection information: none here
        return fail(e, Sts.INVALID_CDB)
    return await emulation(e, req)


# ---- emulations, one per command ------------------------------------------------------------


async def _read(e: Engine, req: Request) -> Response:
    """A transfer longer than MAXIMUM TRANSFER LENGTH is served where the front end holds the
    memory for it (the kernel's ring), as tcmu-runner does; only a buffer the engine would
    have to make is bounded by it."""
    rw = scsi.rw_fields(req.cdb)
    length = rw.blocks * e.dev.block_size
    if req.data_in is not None and len(req.data_in) >= length:  # straight into the caller's
        await e.read_into(rw.lba, req.data_in[:length])
        return Response(GOOD, b"", req.data_in[: min(length, req.data_in_len)])
    e.check_xfer(rw.blocks)
    data = await e.read(rw.lba, rw.blocks)
    return Response(GOOD, b"", data[: req.data_in_len])


async def _write(e: Engine, req: Request) -> Response:
    rw = scsi.rw_fields(req.cdb)  # its data is here already: no length limit to keep memory bounded
    if len(req.data_out) != rw.blocks * e.dev.block_size:
        return fail(e, Sts.INVALID_CDB)
    await e.write(rw.lba, req.data_out, fua=rw.fua)
    return Response(GOOD)


async def _test_unit_ready(e: Engine, req: Request) -> Response:
    return Response(GOOD)


async def _inquiry(e: Engine, req: Request) -> Response:
    cdb = req.cdb
    evpd, page = cdb[1] & 0x01, cdb[2]
    alloc = struct.unpack_from(">H", cdb, 3)[0]
    if not evpd:
        if page:
            return fail(e, Sts.INVALID_CDB)
        return Response(GOOD, b"", scsi.standard_inquiry(alloc))
    data = scsi.vpd_page(page, e.dev.serial, e.dev.config, e.limits())
    if data is None:
        return fail(e, Sts.INVALID_CDB)
    return Response(GOOD, b"", data[:alloc])


async def _request_sense(e: Engine, req: Request) -> Response:
    dev = e.dev
    if dev.pending_ua:
        dev.pending_ua = False
        _, sense = to_scsi(Sts.CAPACITY_CHANGED)
    elif dev.format_progress is not None:
        _, sense = to_scsi(Sts.FRMT_IN_PROGRESS, progress=dev.format_progress)
    else:
        sense = fixed_sense(NO_SENSE, 0, 0)
    return Response(GOOD, b"", sense[: req.cdb[4]])


async def _read_capacity_10(e: Engine, req: Request) -> Response:
    if req.cdb[1] & 0x01 or req.cdb[8] & 0x01:
        return fail(e, Sts.INVALID_CDB)
    return Response(GOOD, b"", scsi.read_capacity_10(e.limits())[: req.data_in_len])


async def _service_action_in_16(e: Engine, req: Request) -> Response:
    if req.cdb[1] & 0x1F != scsi.READ_CAPACITY_16_SA:
        return fail(e, Sts.INVALID_CMD)
    alloc = struct.unpack_from(">I", req.cdb, 10)[0]
    return Response(GOOD, b"", scsi.read_capacity_16(e.limits())[: min(alloc, req.data_in_len)])


async def _mode_sense(e: Engine, req: Request) -> Response:
    cdb = req.cdb
    ten = cdb[0] == scsi.MODE_SENSE_10
    pc, page, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    alloc = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
    if pc == 3:
        return fail(e, Sts.NOTSUPP_SAVE_PARAMS)
    if subpage not in (0, 0xFF) or (subpage == 0xFF and page != 0x3F):
        return fail(e, Sts.INVALID_CDB)
    body = scsi.mode_pages(page, e.dev.write_cache, changeable=pc == 1)
    if body is None:
        return fail(e, Sts.INVALID_CDB)
    return Response(GOOD, b"", scsi.mode_sense_response(ten, body)[: min(alloc, req.data_in_len)])


async def _mode_select(e: Engine, req: Request) -> Response:
    cdb = req.cdb
    ten = cdb[0] == scsi.MODE_SELECT_10
    if not cdb[1] & 0x10 or cdb[1] & 0x01:  # PF=1, SP=0
        return fail(e, Sts.INVALID_CDB)
    plen = struct.unpack_from(">H", cdb, 7)[0] if ten else cdb[4]
    if plen == 0:
        return Response(GOOD)
    data = req.data_out[:plen]
    hdr = 8 if ten else 4
    if len(data) < hdr:
        return fail(e, Sts.INVALID_PARAM_LIST_LEN)
    bdl = struct.unpack_from(">H", data, 6)[0] if ten else data[3]
    pos = hdr + bdl
    while pos < len(data):
        if pos + 2 > len(data):
            return fail(e, Sts.INVALID_PARAM_LIST)
        page, length = data[pos] & 0x3F, data[pos + 1]
        current = scsi.mode_pages(page, e.dev.write_cache, changeable=False)
        sent = bytes(data[pos : pos + 2 + length])
        if current is None or page == 0x3F or bytes([sent[0] & 0x3F]) + sent[1:] != current:
            return fail(e, Sts.INVALID_PARAM_LIST)  # only the current values are accepted
        pos += 2 + length
    return Response(GOOD)


async def _synchronize_cache(e: Engine, req: Request) -> Response:
    if e.dev.handler.flush is None:  # type: ignore[union-attr]
        return fail(e, Sts.INVALID_CMD)
    await e.flush()
    return Response(GOOD)


async def _start_stop_unit(e: Engine, req: Request) -> Response:
    if not req.cdb[4] & 0x01 or req.cdb[4] & 0xF0:
        return fail(e, Sts.INVALID_CDB)
    return Response(GOOD)


async def _unmap(e: Engine, req: Request) -> Response:
    dev, cdb, data = e.dev, req.cdb, req.data_out
    if dev.handler.unmap is None:  # type: ignore[union-attr]
        return fail(e, Sts.INVALID_CMD)
    if cdb[1] & 0x01:  # ANCHOR
        return fail(e, Sts.INVALID_CDB)
    plen = struct.unpack_from(">H", cdb, 7)[0]
    if plen == 0:
        return Response(GOOD)
    if plen < 8 or len(data) < plen:
        return fail(e, Sts.INVALID_PARAM_LIST_LEN)
    bddl = min(struct.unpack_from(">H", data, 2)[0], plen - 8) // 16 * 16
    descs = [struct.unpack_from(">QI", data, 8 + i) for i in range(0, bddl, 16)]
    if len(descs) > MAX_UNMAP_DESCS:
        return fail(e, Sts.INVALID_PARAM_LIST)
    for lba, n in descs:
        if n > dev.max_unmap_len:
            return fail(e, Sts.INVALID_PARAM_LIST)
        e.check_range(lba, n)
    for lba, n in descs:
        if n:
            await e.unmap(lba, n)
    return Response(GOOD)


async def _write_same(e: Engine, req: Request) -> Response:
    dev, cdb, data = e.dev, req.cdb, req.data_out
    handler = dev.handler
    assert handler is not None
    if cdb[0] == scsi.WRITE_SAME_10:
        lba, n = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
    else:
        lba, n = struct.unpack_from(">QI", cdb, 2)
    if n == 0 or len(data) != dev.block_size:  # WSNZ: zero blocks is not "the rest of the disk"
        return fail(e, Sts.INVALID_CDB)
    if cdb[1] & 0x10:  # ANCHOR: no anchored state here (ANC_SUP=0 in VPD B2)
        return fail(e, Sts.INVALID_CDB)
    e.check_range(lba, n)
    e.format_gate()
    align = dev.unmap_gran_align or 1
    zeros = not any(data)
    if cdb[1] & 0x08 and handler.unmap is not None and zeros and lba % align == 0 and n % align == 0:
        await e.unmap(lba, n)  # unmapped blocks read as zeros (LBPRZ), so this is exact
        return Response(GOOD)
    async with e.ranges.hold(lba, lba + n):
        if handler.writesame is not None:
            start = time.perf_counter_ns()
            off, length = lba * dev.block_size, n * dev.block_size
            sts = await e.callout("writesame", handler.writesame, Command(cdb, [data]), off, length, [data])
            e.timed("writesame", length, start, sts)
            if sts is not Sts.OK:
                return fail(e, sts, recorded=True)
            return Response(GOOD)
        per = max(1, FILL_CHUNK // dev.block_size)
        chunk = bytes(data) * min(per, n)
        total, done = n, 0
        dev.progress = ("writesame", 0, total)
        try:
            while n:
                k = min(per, n)
                await e.write(lba, memoryview(chunk)[: k * dev.block_size], locked=True)
                await trio.lowlevel.checkpoint()
                lba, n, done = lba + k, n - k, done + k
                dev.progress = ("writesame", done, total)
        finally:
            dev.progress = None
    return Response(GOOD)


async def _compare_and_write(e: Engine, req: Request) -> Response:
    dev, cdb, data = e.dev, req.cdb, req.data_out
    handler = dev.handler
    assert handler is not None
    lba, n = struct.unpack_from(">Q", cdb, 2)[0], cdb[13]
    if n == 0:
        return Response(GOOD)
    if n > 1 or len(data) != 2 * n * dev.block_size:  # MAXIMUM COMPARE AND WRITE LENGTH is 1
        return fail(e, Sts.INVALID_CDB)
    e.check_range(lba, n)
    e.format_gate()
    half = n * dev.block_size
    async with e.ranges.hold(lba, lba + n):  # every write to these blocks waits
        if handler.caw is not None:
            start = time.perf_counter_ns()
            sts = await e.callout(
                "caw", handler.caw, Command(cdb, [data]), lba * dev.block_size, half, [data]
            )
            e.timed("caw", half, start, sts)
            return fail(e, sts, recorded=True) if sts is not Sts.OK else Response(GOOD)
        current = await e.read(lba, n)
        if current != data[:half]:
            offset = next(i for i in range(half) if current[i] != data[i])
            dev.stats.record("caw", half, 0, False)
            return fail(e, Sts.MISCOMPARE, info=offset, recorded=True)
        await e.write(lba, data[half:], locked=True, fua=bool(cdb[1] & 0x08))
        dev.stats.record("caw", half, 0, True)
    return Response(GOOD)


async def _write_verify(e: Engine, req: Request) -> Response:
    rw = scsi.rw_fields(req.cdb)  # the read-back is as long as the data given
    data = req.data_out
    if len(data) != rw.blocks * e.dev.block_size:
        return fail(e, Sts.INVALID_CDB)
    async with e.ranges.hold(rw.lba, rw.lba + rw.blocks):
        await e.write(rw.lba, data, locked=True)
        back = await e.read(rw.lba, rw.blocks)
    if back != data:
        offset = next(i for i in range(len(data)) if back[i] != data[i])
        return fail(e, Sts.MISCOMPARE, info=offset)
    return Response(GOOD)


async def _format_unit(e: Engine, req: Request) -> Response:
    dev = e.dev
    if req.cdb[1] & 0x10:  # FMTDATA: parameter lists are not supported
        return fail(e, Sts.INVALID_CDB)
    total = dev.num_lbas
    per = max(1, FILL_CHUNK // dev.block_size)
    zeros = memoryview(bytes(per * dev.block_size))
    dev.progress = ("format", 0, total)
    try:
        lba = 0
        async with e.ranges.hold(0, total):
            while lba < total:
                k = min(per, total - lba)
                await e.transfer("write", lba, zeros[: k * dev.block_size])
                await trio.lowlevel.checkpoint()
                lba += k
                dev.progress = ("format", lba, total)
    finally:
        dev.progress = None
    await e.flush()
    return Response(GOOD)


Emulation = Callable[["Engine", Request], Awaitable[Response]]

EMULATIONS: dict[int, Emulation] = {
    **dict.fromkeys(scsi.READS, _read),
    **dict.fromkeys(scsi.WRITES, _write),
    scsi.TEST_UNIT_READY: _test_unit_ready,
    scsi.INQUIRY: _inquiry,
    scsi.REQUEST_SENSE: _request_sense,
    scsi.READ_CAPACITY_10: _read_capacity_10,
    scsi.SERVICE_ACTION_IN_16: _service_action_in_16,
    scsi.MODE_SENSE_6: _mode_sense,
    scsi.MODE_SENSE_10: _mode_sense,
    scsi.MODE_SELECT_6: _mode_select,
    scsi.MODE_SELECT_10: _mode_select,
    scsi.SYNCHRONIZE_CACHE_10: _synchronize_cache,
    scsi.SYNCHRONIZE_CACHE_16: _synchronize_cache,
    scsi.START_STOP_UNIT: _start_stop_unit,
    scsi.UNMAP: _unmap,
    scsi.WRITE_SAME_10: _write_same,
    scsi.WRITE_SAME_16: _write_same,
    scsi.COMPARE_AND_WRITE: _compare_and_write,
    scsi.WRITE_VERIFY_10: _write_verify,
    scsi.WRITE_VERIFY_16: _write_verify,
    scsi.FORMAT_UNIT: _format_unit,
}
