"""The TCMU command engine with a recording handler: opcodes, sense paths, completion models."""

from __future__ import annotations

import bisect
import struct
import threading
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.tcmu import Command, CommandError, Handler, HandlerContext, Reconfig, Sts, Tcmu
from backends.tcmu import scsi as S  # noqa: N812  (reads like the spec tables)
from backends.tcmu.device import Stats
from backends.tcmu.handlers.ram import RamHandler
from backends.tcmu.status import CHECK_CONDITION, GOOD

BS = 512
LBAS = 2048


class Recording(Handler):
    """Memory plus a log of every callout; `mode` picks the completion model."""

    name = "recording"
    subtype = "rec"
    nr_threads = 0

    def __init__(self, ctx: HandlerContext, threads: int = 0, with_unmap: bool = True) -> None:
        super().__init__(ctx)
        self.calls: list[tuple[Any, ...]] = []
        self.threads = threads
        type(self).nr_threads = threads
        if not with_unmap:
            self.unmap = None  # type: ignore[assignment]

    def open(self, dev: Any, reopen: bool) -> int:  # noqa: A003
        dev.private = bytearray(dev.size)
        dev.unmap_gran_align = 0  # tcmu's default that crashed glfs: must not divide by zero
        return 0

    def close(self, dev: Any) -> None:
        pass

    def reconfig(self, dev: Any, kind: Reconfig, value: Any) -> int:
        self.calls.append(("reconfig", kind, value))
        if kind is Reconfig.SIZE:
            dev.private.extend(bytes(max(0, value - len(dev.private))))
        return 0

    def _done(self, cmd: Command, sts: Sts = Sts.OK) -> int:
        if self.threads:
            return sts
        # complete from another thread, as an async backend (librbd callbacks) would
        threading.Thread(target=cmd.complete, args=(sts,)).start()
        return Sts.OK

    def read(self, dev: Any, cmd: Command, iov: list[memoryview], length: int, off: int) -> int:
        self.calls.append(("read", off, length))
        pos = off
        for v in iov:
            v[:] = dev.private[pos : pos + len(v)]
            pos += len(v)
        return self._done(cmd)

    def write(self, dev: Any, cmd: Command, iov: list[memoryview], length: int, off: int) -> int:
        self.calls.append(("write", off, length))
        pos = off
        for v in iov:
            dev.private[pos : pos + len(v)] = v
            pos += len(v)
        return self._done(cmd)

    def flush(self, dev: Any, cmd: Command) -> int:
        self.calls.append(("flush",))
        return self._done(cmd)

    def unmap(self, dev: Any, cmd: Command, off: int, length: int) -> int:  # type: ignore[override]
        self.calls.append(("unmap", off, length))
        dev.private[off : off + length] = bytes(length)
        return self._done(cmd)


async def make(
    threads: int = 0, with_unmap: bool = True, handler: Handler | None = None
) -> tuple[Any, Any, Recording]:
    core = Tcmu(lambda fn, *a: None)
    h = handler or Recording(HandlerContext(), threads, with_unmap)
    core.register_handler(h)
    dev = core.create_device("d")
    await dev.set_config(f"{h.subtype}/")
    await dev.set_size(str(LBAS * BS))
    await core.enable(dev)
    return core, dev, h  # type: ignore[return-value]


def rw16(op: int, lba: int, n: int, fua: bool = False) -> bytes:
    return struct.pack(">BBQIBB", op, 0x08 if fua else 0, lba, n, 0, 0)


def sense_of(resp: Any) -> tuple[int, int, int]:
    return resp.sense[2] & 0x0F, resp.sense[12], resp.sense[13]


@pytest.mark.parametrize("threads", [0, 2])
async def test_read_write_all_sizes_both_completion_models(threads: int) -> None:
    core, dev, h = await make(threads)
    e = dev.engine
    data = bytes(range(256)) * 4
    for _w, _r, cdb_w, cdb_r in [
        (S.WRITE_6, S.READ_6, bytes([S.WRITE_6, 0, 0, 5, 2, 0]), bytes([S.READ_6, 0, 0, 5, 2, 0])),
        (
            S.WRITE_10,
            S.READ_10,
            struct.pack(">BBIBHB", S.WRITE_10, 0, 7, 0, 2, 0),
            struct.pack(">BBIBHB", S.READ_10, 0, 7, 0, 2, 0),
        ),
        (
            S.WRITE_12,
            S.READ_12,
            struct.pack(">BBIIBB", S.WRITE_12, 0, 9, 2, 0, 0),
            struct.pack(">BBIIBB", S.READ_12, 0, 9, 2, 0, 0),
        ),
        (S.WRITE_16, S.READ_16, rw16(S.WRITE_16, 11, 2), rw16(S.READ_16, 11, 2)),
    ]:
        assert (await e.execute(cdb_w, data)).status == GOOD
        r = await e.execute(cdb_r, b"", len(data))
        assert r.status == GOOD and bytes(r.data) == data
    assert ("write", 5 * BS, 1024) in h.calls and ("read", 11 * BS, 1024) in h.calls


async def test_range_and_length_errors() -> None:
    core, dev, h = await make()
    e = dev.engine
    r = await e.execute(rw16(S.READ_16, LBAS - 1, 2), b"", 2 * BS)
    assert r.status == CHECK_CONDITION and sense_of(r) == (0x5, 0x21, 0x00)
    r = await e.execute(rw16(S.WRITE_16, 0, 2), b"x" * BS)  # data shorter than the CDB says
    assert sense_of(r) == (0x5, 0x24, 0x00)
    r = await e.execute(rw16(S.READ_16, 0, dev.max_xfer_len + 1), b"", 0)
    assert sense_of(r) == (0x5, 0x24, 0x00)  # a buffer the engine would have to make: bounded
    dev.max_xfer_len = 64  # as a handler's open may set it (tcmu_dev_set_max_xfer_len)
    big = (dev.max_xfer_len + 1) * BS  # data at hand (a write, the kernel's ring) is served
    assert (await e.execute(rw16(S.WRITE_16, 0, dev.max_xfer_len + 1), b"\x5a" * big)).status == GOOD
    into = memoryview(bytearray(big))
    r = await e.execute(rw16(S.READ_16, 0, dev.max_xfer_len + 1), b"", big, into)
    assert r.status == GOOD and bytes(into) == b"\x5a" * big
    for op in (S.READ_10, S.WRITE_10, S.READ_16, S.WRITE_16):  # RDPROTECT/WRPROTECT: no PI here
        cdb = bytearray(rw16(S.READ_16, 0, 1)) if op in (S.READ_16, S.WRITE_16) else bytearray(10)
        cdb[0], cdb[1] = op, 0x20
        if len(cdb) == 10:
            cdb[8] = 1
        r = await e.execute(bytes(cdb), b"x" * BS if op in (S.WRITE_10, S.WRITE_16) else b"", BS)
        assert sense_of(r) == (0x5, 0x24, 0x00), hex(op)
    r = await e.execute(bytes([0xC7]) + bytes(15))  # unknown opcode
    assert sense_of(r) == (0x5, 0x20, 0x00)
    r = await e.execute(bytes([S.READ_10, 0]))  # truncated CDB
    assert sense_of(r) == (0x5, 0x24, 0x00)
    r = await e.execute(b"")
    assert r.status == CHECK_CONDITION


async def test_inquiry_and_vpd() -> None:
    core, dev, h = await make()
    e = dev.engine
    r = await e.execute(bytes([S.INQUIRY, 0, 0, 0, 96, 0]), b"", 96)
    assert r.status == GOOD and r.data[8:16] == b"LIO-ORG " and r.data[2] == 5 and len(r.data) == 74
    descriptors = struct.unpack_from(">8H", r.data, 58)
    assert descriptors[:3] == (0x0080, 0x0300, 0x04C0)  # SAM-4, SPC-3, SBC-3
    r = await e.execute(bytes([S.INQUIRY, 0, 0x80, 0, 96, 0]), b"", 96)
    assert sense_of(r) == (0x5, 0x24, 0x00)  # page without EVPD
    r = await e.execute(bytes([S.INQUIRY, 1, 0x00, 0, 96, 0]), b"", 96)
    assert bytes(r.data[4:]) == bytes([0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])
    r = await e.execute(bytes([S.INQUIRY, 1, 0x80, 0, 96, 0]), b"", 96)
    assert bytes(r.data[4:]).decode() == dev.serial
    r = await e.execute(bytes([S.INQUIRY, 1, 0x83, 1, 0, 0]), b"", 256)
    assert b"rec/" in bytes(r.data) and dev.serial.encode() in bytes(r.data)
    r = await e.execute(bytes([S.INQUIRY, 1, 0xB0, 0, 64, 0]), b"", 64)
    b0 = bytes(r.data)
    assert b0[4] & 1 and b0[5] == 1  # WSNZ, MAX COMPARE AND WRITE 1
    assert struct.unpack_from(">I", b0, 8)[0] == dev.max_xfer_len
    assert struct.unpack_from(">I", b0, 24)[0] == 4  # max unmap descriptors
    r = await e.execute(bytes([S.INQUIRY, 1, 0xB2, 0, 8, 0]), b"", 8)
    assert r.data[5] & 0xE4 == 0xE4  # LBPU LBPWS LBPWS10 LBPRZ
    r = await e.execute(bytes([S.INQUIRY, 1, 0xB1, 0, 64, 0]), b"", 64)
    assert r.status == GOOD
    r = await e.execute(bytes([S.INQUIRY, 1, 0x99, 0, 64, 0]), b"", 64)
    assert sense_of(r) == (0x5, 0x24, 0x00)


async def test_capacity_and_thin_provisioning_claims() -> None:
    core, dev, h = await make()
    r = await dev.engine.execute(bytes([S.READ_CAPACITY_10]) + bytes(9), b"", 8)
    assert struct.unpack(">II", r.data) == (LBAS - 1, BS)
    r = await dev.engine.execute(bytes([S.READ_CAPACITY_10, 1]) + bytes(8), b"", 8)
    assert sense_of(r) == (0x5, 0x24, 0x00)
    rc16 = bytes([S.SERVICE_ACTION_IN_16, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    r = await dev.engine.execute(rc16, b"", 32)
    assert struct.unpack_from(">QI", r.data) == (LBAS - 1, BS) and r.data[14] == 0xC0
    core2, dev2, h2 = await make(with_unmap=False)
    r = await dev2.engine.execute(rc16, b"", 32)
    assert r.data[14] == 0  # no LBPME without unmap (tcmu-runner claims it anyway)
    r = await dev2.engine.execute(bytes([S.INQUIRY, 1, 0xB2, 0, 8, 0]), b"", 8)
    assert r.data[5] == 0


async def test_mode_sense_and_select() -> None:
    core, dev, h = await make()
    e = dev.engine
    r = await e.execute(bytes([S.MODE_SENSE_6, 0, 0x3F, 0, 255, 0]), b"", 255)
    assert r.status == GOOD and r.data[0] == len(r.data) - 1 and r.data[3] == 0
    r = await e.execute(bytes([S.MODE_SENSE_10, 0, 0x08, 0, 0, 0, 0, 0, 64, 0]), b"", 64)
    page = bytes(r.data[8:])
    assert page[0] == 0x08 and page[2] & 0x04  # WCE with write cache on
    r = await e.execute(bytes([S.MODE_SENSE_6, 0, 0xC8, 0, 255, 0]), b"", 255)
    assert sense_of(r) == (0x5, 0x39, 0x00)  # saved values
    r = await e.execute(bytes([S.MODE_SENSE_6, 0, 0x1C, 0, 255, 0]), b"", 255)
    assert sense_of(r) == (0x5, 0x24, 0x00)
    current = bytes([0, 0, 0, 0]) + page
    r = await e.execute(bytes([S.MODE_SELECT_6, 0x10, 0, 0, len(current), 0]), current)
    assert r.status == GOOD
    changed = bytearray(current)
    changed[6] ^= 0x04
    r = await e.execute(bytes([S.MODE_SELECT_6, 0x10, 0, 0, len(changed), 0]), bytes(changed))
    assert sense_of(r) == (0x5, 0x26, 0x00)
    r = await e.execute(bytes([S.MODE_SELECT_6, 0x11, 0, 0, len(current), 0]), current)
    assert sense_of(r) == (0x5, 0x24, 0x00)  # SP=1


async def test_tur_start_stop_sync_request_sense() -> None:
    core, dev, h = await make()
    e = dev.engine
    assert (await e.execute(bytes(6))).status == GOOD
    assert (await e.execute(bytes([S.START_STOP_UNIT, 0, 0, 0, 1, 0]))).status == GOOD
    assert sense_of(await e.execute(bytes([S.START_STOP_UNIT, 0, 0, 0, 0, 0]))) == (0x5, 0x24, 0x00)
    assert (await e.execute(bytes([S.SYNCHRONIZE_CACHE_10]) + bytes(9))).status == GOOD
    assert (await e.execute(bytes([S.SYNCHRONIZE_CACHE_16]) + bytes(15))).status == GOOD
    assert h.calls.count(("flush",)) == 1  # nothing was written since the first: no trip
    write = bytes([S.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert (await e.execute(write, bytes(dev.block_size))).status == GOOD
    assert (await e.execute(bytes([S.SYNCHRONIZE_CACHE_10]) + bytes(9))).status == GOOD
    assert h.calls.count(("flush",)) == 2
    r = await e.execute(bytes([S.REQUEST_SENSE, 0, 0, 0, 18, 0]), b"", 18)
    assert r.status == GOOD and r.data[0] == 0x70 and r.data[2] == 0


class FlushingNow(Recording):
    """flush_now answers as `answer` says: a status, None (not now), or an exception."""

    answer: Any = Sts.OK

    def flush_now(self, dev: Any) -> Sts | None:
        self.calls.append(("flush_now",))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


async def test_flush_now_answers_without_a_command_or_falls_back() -> None:
    core, dev, h = await make(handler=FlushingNow(HandlerContext()))
    e = dev.engine
    sync = bytes([S.SYNCHRONIZE_CACHE_10]) + bytes(9)
    write = bytes([S.WRITE_10, 0, 0, 0, 0, 0, 0, 0, 1, 0])
    for answer, calls, status in (
        (Sts.OK, [("flush_now",)], GOOD),  # at once: no flush callout
        (None, [("flush_now",), ("flush",)], GOOD),  # not now: the callout does it
        (RuntimeError("boom"), [("flush_now",)], CHECK_CONDITION),  # a HARDWARE ERROR, no crash
    ):
        type(h).answer = answer
        assert (await e.execute(write, bytes(dev.block_size))).status == GOOD
        h.calls.clear()
        r = await e.execute(sync)
        assert (r.status, [c for c in h.calls if c[0].startswith("flush")]) == (status, calls)
    assert sense_of(r)[0] == 0x4
    assert dev.stats.ops["flush"] == 3 and dev.stats.errors > 0


def test_stats_recorded_from_two_threads_fold_to_exact_totals() -> None:
    stats = Stats()
    n = 3 * Stats.FOLD_AT + 7  # past several folds, and a remainder only a read folds

    def records(kind: str, first: int) -> None:
        for i in range(n):
            stats.record(kind, 512, (first + i) * 997, ok=i % 5 != 0)

    ring = threading.Thread(target=records, args=("write", n))
    ring.start()
    records("read", 0)
    ring.join()
    assert (stats.ops["read"], stats.ops["write"]) == (n, n)
    assert stats.bytes["read"] == stats.bytes["write"] == 512 * n
    assert stats.errors == 2 * len(range(0, n, 5))
    every = [i * 997 for i in range(2 * n)]
    want = [0] * (len(Stats.BOUNDS) + 1)
    for ns in every:
        want[bisect.bisect_left(Stats.BOUNDS, ns)] += 1
    assert stats.buckets == want and stats.latency_sum == sum(every)
    stats.refused += 1  # a command refused before it reached the handler
    assert stats.errors == 2 * len(range(0, n, 5)) + 1
    assert 0 < stats.percentile(0.5) <= stats.percentile(0.99) <= max(every) // 1000


async def test_every_command_is_in_the_latency_histogram() -> None:
    core, dev, h = await make()
    e = dev.engine
    assert (await e.execute(rw16(S.WRITE_16, 0, 1), bytes(BS))).status == GOOD
    assert (await e.execute(bytes([S.TEST_UNIT_READY]) + bytes(5))).status == GOOD
    assert (await e.execute(bytes([S.INQUIRY, 0, 0, 0, 96, 0]), b"", 96)).status == GOOD
    s = dev.stats
    assert (s.ops["write"], s.ops["other"]) == (1, 2) and sum(s.buckets) == 3 and s.latency_sum > 0
    await core.disable(dev)


async def test_unmap_parsing_splitting_and_zero_alignment() -> None:
    core, dev, h = await make()
    e = dev.engine
    dev.private[:] = b"\xff" * len(dev.private)
    dev.opt_unmap_gran, dev.unmap_gran_align = 8, 0

    def params(*descs: tuple[int, int]) -> bytes:
        body = b"".join(struct.pack(">QI4x", lba, n) for lba, n in descs)
        return struct.pack(">HH4x", len(body) + 6, len(body)) + body

    def cdb(plen: int, anchor: bool = False) -> bytes:
        return struct.pack(">BBxxxxxHB", S.UNMAP, 1 if anchor else 0, plen, 0)

    p = params((3, 20))
    assert (await e.execute(cdb(len(p)), p)).status == GOOD
    assert [c for c in h.calls if c[0] == "unmap"] == [
        ("unmap", 3 * BS, 8 * BS),
        ("unmap", 11 * BS, 8 * BS),
        ("unmap", 19 * BS, 4 * BS),
    ]
    assert dev.private[3 * BS : 23 * BS] == bytes(20 * BS) and dev.private[23 * BS] == 0xFF
    dev.unmap_gran_align = 4
    assert e.split_unmap(3, 10) == [(3, 1), (4, 8), (12, 1)]
    assert (await e.execute(cdb(0), b"")).status == GOOD
    assert sense_of(await e.execute(cdb(len(p), anchor=True), p)) == (0x5, 0x24, 0x00)
    assert sense_of(await e.execute(cdb(6), p[:6])) == (0x5, 0x1A, 0x00)
    five = params(*[(i, 1) for i in range(5)])
    assert sense_of(await e.execute(cdb(len(five)), five)) == (0x5, 0x26, 0x00)
    far = params((LBAS - 1, 2))
    assert sense_of(await e.execute(cdb(len(far)), far)) == (0x5, 0x21, 0x00)
    core2, dev2, h2 = await make(with_unmap=False)
    assert sense_of(await dev2.engine.execute(cdb(len(p)), p)) == (0x5, 0x20, 0x00)


async def test_write_same_emulated_and_unmap_bit() -> None:
    core, dev, h = await make()
    e = dev.engine
    block = bytes([7]) * BS
    ws16 = struct.pack(">BBQIBB", S.WRITE_SAME_16, 0, 10, 5, 0, 0)
    assert (await e.execute(ws16, block)).status == GOOD
    assert dev.private[10 * BS : 15 * BS] == block * 5
    assert not [c for c in h.calls if c[0] == "unmap"]
    ws10 = struct.pack(">BBIBHB", S.WRITE_SAME_10, 0x08, 10, 0, 5, 0)  # UNMAP bit, zero data
    assert (await e.execute(ws10, bytes(BS))).status == GOOD
    assert ("unmap", 10 * BS, 5 * BS) in h.calls and dev.private[10 * BS : 15 * BS] == bytes(5 * BS)
    assert sense_of(await e.execute(struct.pack(">BBQIBB", S.WRITE_SAME_16, 0, 10, 0, 0, 0), block)) == (
        0x5,
        0x24,
        0x00,
    )
    assert sense_of(await e.execute(ws16, block * 2)) == (0x5, 0x24, 0x00)
    for flags in (0x10, 0x18, 0x20):  # ANCHOR with or without UNMAP; WRPROTECT: neither is here
        ws = struct.pack(">BBIBHB", S.WRITE_SAME_10, flags, 10, 0, 1, 0)
        assert sense_of(await e.execute(ws, bytes(BS))) == (0x5, 0x24, 0x00), hex(flags)
    big = struct.pack(">BBQIBB", S.WRITE_SAME_16, 0, 0, LBAS, 0, 0)
    assert (await e.execute(big, block)).status == GOOD  # spans several emulated writes
    assert dev.private == bytearray(block * LBAS)


async def test_compare_and_write_success_miscompare_and_atomicity() -> None:
    core, dev, h = await make()
    e = dev.engine
    dev.private[0:BS] = b"A" * BS
    caw = struct.pack(">BBQxxxBxx", S.COMPARE_AND_WRITE, 0, 0, 1)
    assert (await e.execute(caw, b"A" * BS + b"B" * BS)).status == GOOD
    assert dev.private[0:BS] == b"B" * BS
    wrong = b"B" * 100 + b"X" + b"B" * (BS - 101)
    r = await e.execute(caw, wrong + b"C" * BS)
    assert r.status == CHECK_CONDITION and sense_of(r) == (0xE, 0x1D, 0x00)
    assert r.sense[0] & 0x80 and struct.unpack_from(">I", r.sense, 3)[0] == 100  # INFORMATION: the offset
    assert dev.private[0:BS] == b"B" * BS
    assert (await e.execute(struct.pack(">BBQxxxBxx", S.COMPARE_AND_WRITE, 0, 0, 0), b"")).status == GOOD
    assert sense_of(
        await e.execute(struct.pack(">BBQxxxBxx", S.COMPARE_AND_WRITE, 0, 0, 2), bytes(4 * BS))
    ) == (0x5, 0x24, 0x00)
    # A plain write to the same block waits while CAW holds it
    order: list[str] = []

    async def writer() -> None:
        await e.write(0, b"W" * BS)
        order.append("write")

    async with trio.open_nursery() as n:
        async with e.ranges.hold(0, 1):  # what CAW holds between its read and its write
            n.start_soon(writer)
            await trio.sleep(0.05)
            order.append("caw done")
    assert order == ["caw done", "write"]


class Lending(Recording):
    """Lends its memory; a reconfig holds until the test lets it go."""

    def __init__(self, ctx: HandlerContext) -> None:
        super().__init__(ctx)
        self.gate = threading.Event()

    def lend(self, dev: Any, off: int, length: int) -> memoryview:
        self.calls.append(("lend", off, length))
        return memoryview(dev.private)[off : off + length]

    def reconfig(self, dev: Any, kind: Reconfig, value: Any) -> int:
        self.gate.wait(5)
        return super().reconfig(dev, kind, value)


class Gated(Lending):
    lend = None  # type: ignore[assignment]  # read and write callouts


async def resize_held(n: trio.Nursery, dev: Any, size: int) -> None:
    """Start a resize in `n`; return once it has paused the engine (a Lending handler's
    reconfig then waits for its gate)."""
    n.start_soon(dev.set_size, str(size))
    with trio.fail_after(5):
        while dev.engine._paused is None:
            await trio.sleep(0.001)


async def test_lent_reads_are_the_memory_and_wait_out_a_reconfig() -> None:
    core, dev, h = await make(handler=Lending(HandlerContext()))
    e = dev.engine
    await e.write(3, b"L" * BS)  # copied into the lent memory: no write callout
    assert h.calls[-1] == ("lend", 3 * BS, BS) and dev.private[3 * BS : 4 * BS] == b"L" * BS
    lent = await e.read(3, 1, lend=True)
    assert lent.obj is dev.private and bytes(lent) == b"L" * BS
    lent.release()
    copied = await e.read(3, 1)  # without lend=True: copied out, into a buffer of its own
    assert copied.obj is not dev.private and bytes(copied) == b"L" * BS
    assert not any(c[0] in ("read", "write") for c in h.calls)
    assert dev.stats.ops["read"] == 2 and dev.stats.ops["write"] == 1
    async with trio.open_nursery() as n:
        await resize_held(n, dev, 2 * LBAS * BS)
        order: list[str] = []

        async def reader() -> None:
            await e.read(0, 1, lend=True)
            order.append("read")

        async def writer() -> None:
            await e.write(1, b"W" * BS)
            order.append("write")

        n.start_soon(reader)
        n.start_soon(writer)
        await trio.sleep(0.05)
        order.append("reconfig released")
        h.gate.set()
    assert order[0] == "reconfig released" and sorted(order[1:]) == ["read", "write"]


@pytest.mark.parametrize("handler", [Lending, Gated])
async def test_a_write_that_waited_out_a_shrink_past_its_blocks_is_out_of_range(handler: type) -> None:
    core, dev, h = await make(handler=handler(HandlerContext()))
    e = dev.engine
    async with trio.open_nursery() as n:
        await resize_held(n, dev, LBAS * BS // 2)

        async def late_writer() -> None:
            with pytest.raises(CommandError) as err:
                await e.write(LBAS - 1, b"X" * BS)
            assert err.value.sts is Sts.RANGE

        n.start_soon(late_writer)
        await trio.sleep(0.05)
        h.gate.set()
    assert b"X" not in dev.private


@pytest.mark.parametrize("handler", [Lending, Gated])
async def test_a_write_waits_while_its_blocks_are_held(handler: type) -> None:
    core, dev, h = await make(handler=handler(HandlerContext()))
    e = dev.engine
    order: list[str] = []

    async def writer() -> None:
        await e.write(0, b"W" * BS)
        order.append("write")

    async with trio.open_nursery() as n:
        async with e.ranges.hold(0, 1):  # what CAW or a partial write holds
            n.start_soon(writer)
            await trio.sleep(0.05)
            assert b"W" not in dev.private
            order.append("hold released")
    assert order == ["hold released", "write"] and dev.private[:BS] == b"W" * BS


async def test_write_verify_format_and_unit_attention() -> None:
    core, dev, h = await make()
    e = dev.engine
    wv = struct.pack(">BBIBHB", S.WRITE_VERIFY_10, 0, 4, 0, 1, 0)
    assert (await e.execute(wv, b"V" * BS)).status == GOOD
    dev.private[:] = b"\x01" * len(dev.private)
    gate = threading.Event()
    original = h.write

    def held_write(*args: Any) -> int:
        # async model: queue the write; it completes once the test has looked at the device
        threading.Thread(target=lambda: (gate.wait(5), original(*args))).start()
        return Sts.OK

    h.write = held_write  # type: ignore[method-assign]
    async with trio.open_nursery() as n:

        async def fmt() -> None:
            assert (await e.execute(bytes([S.FORMAT_UNIT]) + bytes(5))).status == GOOD

        n.start_soon(fmt)
        with trio.fail_after(5):
            while dev.format_progress is None:
                await trio.sleep(0.001)
        r = await e.execute(bytes(6))
        assert sense_of(r) == (0x2, 0x04, 0x04) and r.sense[15] & 0x80  # NOT READY, progress valid
        assert (await e.execute(bytes([S.INQUIRY, 0, 0, 0, 36, 0]), b"", 36)).status == GOOD
        r = await e.execute(bytes([S.REQUEST_SENSE, 0, 0, 0, 18, 0]), b"", 18)
        assert r.status == GOOD and (r.data[2], r.data[12], r.data[13]) == (0x2, 0x04, 0x04)
        gate.set()
    h.write = original  # type: ignore[method-assign]
    assert dev.private == bytearray(len(dev.private))
    assert sense_of(await e.execute(bytes([S.FORMAT_UNIT, 0x10]) + bytes(4))) == (0x5, 0x24, 0x00)
    await dev.set_size(str(2 * LBAS * BS))
    assert ("reconfig", Reconfig.SIZE, 2 * LBAS * BS) in h.calls
    r = await e.execute(bytes([S.INQUIRY, 0, 0, 0, 36, 0]), b"", 36)
    assert r.status == GOOD  # INQUIRY does not consume the unit attention
    r = await e.execute(bytes(6))
    assert sense_of(r) == (0x6, 0x2A, 0x09)
    assert (await e.execute(bytes(6))).status == GOOD  # reported once
    r = await e.execute(bytes([S.READ_CAPACITY_10]) + bytes(9), b"", 8)
    assert struct.unpack(">II", r.data)[0] == 2 * LBAS - 1


async def test_passthrough_only_handler_gets_everything() -> None:
    class Passthrough(Handler):
        name = "pt"
        subtype = "pt"
        nr_threads = 1

        def open(self, dev: Any, reopen: bool) -> int:  # noqa: A003
            self.seen: list[int] = []
            return 0

        def close(self, dev: Any) -> None:
            pass

        def handle_cmd(self, dev: Any, cmd: Command) -> int:
            self.seen.append(cmd.cdb[0])
            if cmd.cdb[0] == S.READ_16:
                cmd.iovec[0][:] = b"P" * len(cmd.iovec[0])
                return Sts.OK
            if cmd.cdb[0] == 0xC0:
                cmd.sense[0], cmd.sense[2], cmd.sense[12] = 0x70, 0x3, 0x11
                return Sts.PASSTHROUGH_ERR
            return Sts.NOT_HANDLED

    core, dev, h = await make(handler=Passthrough(HandlerContext()))
    assert bytes(await dev.engine.read(0, 1)) == b"P" * BS  # the data path builds READ(16)
    r = await dev.engine.execute(bytes([0xC0]) + bytes(15))
    assert r.status == CHECK_CONDITION and r.sense[2] == 0x3 and r.sense[12] == 0x11
    assert sense_of(await dev.engine.execute(bytes(6))) == (0x5, 0x20, 0x00)  # not handled → invalid opcode
    assert h.seen == [S.READ_16, 0xC0, 0]


@pytest.mark.parametrize("threads", [0, 2])
async def test_handle_cmd_completion_models_follow_tcmu_runner(threads: int) -> None:
    """handle_cmd's return is its status in both models (OK completes now, not never);
    ASYNC_HANDLED means cmd.complete() follows — from a thread of the handler's own, too —
    and never becomes HARDWARE ERROR."""
    later: list[Command] = []

    class Passthrough(Handler):
        name = "pt"
        subtype = "pt"
        nr_threads = threads

        def open(self, dev: Any, reopen: bool) -> int:  # noqa: A003
            return 0

        def close(self, dev: Any) -> None:
            pass

        def handle_cmd(self, dev: Any, cmd: Command) -> int:
            if cmd.cdb[0] == S.TEST_UNIT_READY:
                return Sts.OK  # synchronous: done
            if cmd.cdb[0] == 0xC1:  # completed later, from another thread
                later.append(cmd)
                threading.Timer(0.05, cmd.complete, args=(Sts.OK,)).start()
                return Sts.ASYNC_HANDLED
            if cmd.cdb[0] == 0xC2:  # completed before returning ASYNC_HANDLED
                cmd.complete(Sts.OK)
                return Sts.ASYNC_HANDLED
            return Sts.NOT_HANDLED

    core, dev, h = await make(handler=Passthrough(HandlerContext()))
    with trio.fail_after(5):
        assert (await dev.engine.execute(bytes(6))).status == GOOD
        assert (await dev.engine.execute(bytes([0xC1]) + bytes(15))).status == GOOD
        assert (await dev.engine.execute(bytes([0xC2]) + bytes(15))).status == GOOD
    assert later and not dev.engine.in_flight


async def test_handler_exception_is_hardware_error_not_a_crash() -> None:
    def explode(*args: Any) -> Any:
        raise RuntimeError("backend exploded")

    class BrokenRead(Recording):
        subtype = "broken-read"
        read = explode

    class BrokenLend(RamHandler):
        subtype = "broken-lend"
        lend = explode

    for broken in (BrokenRead(HandlerContext()), BrokenLend(HandlerContext())):
        core, dev, h = await make(handler=broken)
        r = await dev.engine.execute(rw16(S.READ_16, 0, 1), b"", BS)
        assert sense_of(r) == (0x4, 0x44, 0x00)
        with pytest.raises(CommandError) as err:
            await dev.engine.read(0, 1, lend=True)
        assert err.value.sts is Sts.HW_ERR


async def test_a_failed_command_counts_once_in_errors() -> None:
    class FailingRead(Recording):
        subtype = "failing-read"

        def read(self, dev: Any, cmd: Command, iov: list[memoryview], length: int, off: int) -> int:
            return self._done(cmd, Sts.RD_ERR)

    core, dev, h = await make(handler=FailingRead(HandlerContext()))
    e = dev.engine
    counts = []
    caw = struct.pack(">BBQxxxBxx", S.COMPARE_AND_WRITE, 0, 0, 1)
    for cdb, data_out, data_in_len in (
        (rw16(S.READ_16, 0, 1), b"", BS),  # the handler fails it
        (rw16(S.READ_16, LBAS, 1), b"", BS),  # out of range: refused before the handler
        (caw, bytes(2 * BS), 0),  # its read fails in the handler
        (rw16(S.WRITE_16, 0, 1), bytes(BS), 0),  # GOOD: not an error
        (bytes([S.TEST_UNIT_READY]) + bytes(5), b"", 0),
    ):
        r = await e.execute(cdb, data_out, data_in_len)
        counts.append((r.status, dev.stats.errors))
    assert counts == [(CHECK_CONDITION, 1), (CHECK_CONDITION, 2), (CHECK_CONDITION, 3), (GOOD, 3), (GOOD, 3)]
    core, dev, h = await make()  # a miscompare: recorded by the CAW, answered once
    r = await dev.engine.execute(caw, b"X" * BS + bytes(BS))
    assert sense_of(r)[0] == 0xE and dev.stats.errors == 1


CDBS = st.one_of(
    st.binary(min_size=0, max_size=32),
    st.builds(
        lambda op, rest: bytes([op]) + rest,
        st.sampled_from(
            sorted(
                {
                    S.TEST_UNIT_READY,
                    S.REQUEST_SENSE,
                    S.FORMAT_UNIT,
                    S.READ_6,
                    S.WRITE_6,
                    S.INQUIRY,
                    S.MODE_SELECT_6,
                    S.MODE_SENSE_6,
                    S.START_STOP_UNIT,
                    S.READ_CAPACITY_10,
                    S.READ_10,
                    S.WRITE_10,
                    S.WRITE_VERIFY_10,
                    S.SYNCHRONIZE_CACHE_10,
                    S.WRITE_SAME_10,
                    S.UNMAP,
                    S.MODE_SELECT_10,
                    S.MODE_SENSE_10,
                    S.READ_16,
                    S.COMPARE_AND_WRITE,
                    S.WRITE_16,
                    S.WRITE_VERIFY_16,
                    S.SYNCHRONIZE_CACHE_16,
                    S.WRITE_SAME_16,
                    S.SERVICE_ACTION_IN_16,
                    S.READ_12,
                    S.WRITE_12,
                }
            )
        ),
        st.binary(min_size=0, max_size=16),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cdb=CDBS, data=st.binary(max_size=2 * BS), want=st.integers(0, 4096))
def test_random_cdbs_always_get_a_valid_answer(cdb: bytes, data: bytes, want: int) -> None:
    async def run() -> None:
        core, dev, h = await make(threads=1)
        with trio.fail_after(10):
            r = await dev.engine.execute(cdb, data, want)
        assert r.status in (GOOD, CHECK_CONDITION, 0x08, 0x28)
        if r.status == CHECK_CONDITION:
            assert len(r.sense) == 18 and r.sense[0] & 0x7F == 0x70
        assert len(r.data) <= max(want, 0) or r.status != GOOD

    trio.run(run)
