"""The TCMU ring consumer against a producer that follows target_core_user.c, without a
kernel: layout, out-of-order completion, pads at the ring's end, in-order rings, TMRs, and
corrupt rings that fail one command or the ring — never anything else."""

from __future__ import annotations

import os
import struct

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.tcmu import HandlerContext, Tcmu
from backends.tcmu import scsi as op
from backends.tcmu.handlers.ram import RamHandler
from backends.tcmu.kernel import KernelPort
from backends.tcmu.ring import CAP_OOOC, CAP_READ_LEN, MB_SIZE, EntryError, Ring, RingError
from tests.unit.tcmu_kernel import Kernel


def rw(opcode: int, lba: int, blocks: int) -> bytes:
    return struct.pack(">BBQIBB", opcode, 0, lba, blocks, 0, 0)


def test_entries_are_laid_out_as_the_c_structs() -> None:
    k = Kernel()
    k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    len_op, cmd_id = struct.unpack_from("<IH", k.map, MB_SIZE)
    assert (len_op & 7, len_op & ~7, cmd_id) == (1, 128, 1)  # one iovec + a 16-byte CDB: 112 + 16
    ring = Ring(k.mem)
    (cmd,), _ = ring.take()
    assert cmd.cdb == rw(op.READ_16, 0, 1) and cmd.iovs == [(k.data_off, 512)] and not cmd.error


async def serve(k: Kernel, flags_ok: bool = True) -> tuple[KernelPort, object]:
    core = Tcmu(lambda fn, *a: None)
    core.register_handler(RamHandler(HandlerContext()))
    dev = core.create_device("d")
    await dev.set_config("ram/")
    await dev.set_size(str(1 << 20))
    await core.enable(dev)
    return KernelPort(dev, Ring(k.mem), lambda: None), dev


async def run_all(port: KernelPort) -> None:
    """Take what the ring holds and run it to the end (the workers then park: cancelled here)."""
    async with trio.open_nursery() as n:
        port.take(n.start_soon)
        while not port.idle:
            await trio.sleep(0)
        n.cancel_scope.cancel()


async def test_a_write_then_a_read_through_the_ring() -> None:
    k = Kernel()
    port, dev = await serve(k)
    data = os.urandom(8192)
    w = k.submit(rw(op.WRITE_16, 8, 16), data_out=data)
    await run_all(port)
    r = k.submit(rw(op.READ_16, 8, 16), data_in_len=8192)
    await run_all(port)
    done = {d.cmd_id: d for d in k.reap()}
    assert done[w].status == 0 and done[r].status == 0 and done[r].data == data
    assert dev.stats.ops["write"] == 1 and dev.stats.ops["read"] == 1  # one engine, one set of stats


async def test_completions_in_any_order_name_their_own_commands() -> None:
    k = Kernel()
    ring = Ring(k.mem)
    ids = [k.submit(rw(op.READ_16, i, 1), data_in_len=512) for i in range(3)]
    cmds, _ = ring.take()
    for cmd in reversed(cmds):
        ring.complete(cmd.cmd_id, 0)
    assert sorted(d.cmd_id for d in k.reap()) == ids
    assert ring.in_flight == 0


def test_an_in_order_ring_gets_its_responses_in_order() -> None:
    k = Kernel(flags=CAP_READ_LEN)  # no CAP_OOOC
    ring = Ring(k.mem)
    ids = [k.submit(rw(op.READ_16, i, 1), data_in_len=512) for i in range(3)]
    ring.take()
    ring.complete(ids[2], 0)
    ring.complete(ids[1], 0)
    assert k.reap() == []  # held until the first is done
    ring.complete(ids[0], 0)
    assert [d.cmd_id for d in k.reap()] == ids


async def test_pads_at_the_rings_end_and_many_laps() -> None:
    k = Kernel(cmdr_size=1024, flags=CAP_OOOC | CAP_READ_LEN)
    port, _ = await serve(k)
    for i in range(200):  # 128-byte entries in a 1 KiB ring: it laps 25 times, padding where needed
        data = bytes([i]) * 512
        k.submit(rw(op.WRITE_16, i, 1), data_out=data)
        await run_all(port)
        r = k.submit(rw(op.READ_16, i, 1), data_in_len=512)
        await run_all(port)
        got = {d.cmd_id: d for d in k.reap()}
        assert got[r].data == data
    assert port.error == ""


def test_a_short_read_says_its_length() -> None:
    k = Kernel()
    ring = Ring(k.mem)
    k.submit(bytes([op.INQUIRY, 0, 0, 0, 255, 0]), data_in_len=255)
    (cmd,), _ = ring.take()
    n = ring.scatter(cmd.iovs, b"x" * 36)
    ring.complete(cmd.cmd_id, 0, read_len=n)
    (done,) = k.reap()
    assert done.data == b"x" * 36


def test_task_management_entries_are_read_and_passed() -> None:
    k = Kernel()
    ring = Ring(k.mem)
    a = k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    k.tmr(1, [a])
    cmds, tmrs = ring.take()
    assert [t.cmd_ids for t in tmrs] == [[a]] and len(cmds) == 1
    ring.complete(a, 0)
    assert [d.cmd_id for d in k.reap()] == [a]
    assert ring.tail == ring.head  # the TMR entry was passed too


def test_a_bad_mailbox_or_head_breaks_the_ring() -> None:
    k = Kernel()
    struct.pack_into("<H", k.map, 0, 3)
    with pytest.raises(RingError, match="version 3"):
        Ring(k.mem)
    k = Kernel()
    ring = Ring(k.mem)
    struct.pack_into("<I", k.map, 12, 5)  # unaligned head
    with pytest.raises(RingError, match="unaligned"):
        ring.take()
    k = Kernel()
    ring = Ring(k.mem)
    k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    struct.pack_into("<I", k.map, MB_SIZE, 1)  # a command of length 0 would loop forever
    with pytest.raises(RingError, match="length 0"):
        ring.take()


async def test_a_bad_entry_fails_its_command_and_the_ring_goes_on() -> None:
    k = Kernel()
    port, dev = await serve(k)
    bad = k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    struct.pack_into("<Q", k.map, MB_SIZE + 48, 10)  # its iovec points into the mailbox
    good = k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    await run_all(port)
    done = {d.cmd_id: d for d in k.reap()}
    assert done[bad].status == 2 and done[bad].sense[12] == 0x24  # CHECK CONDITION, INVALID FIELD IN CDB
    assert done[good].status == 0
    assert port.bad_entries == 1 and port.error == ""


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 * 128 - 1), st.binary(min_size=1, max_size=8))
def test_random_bytes_in_the_entries_are_a_ring_or_entry_error_only(at: int, junk: bytes) -> None:
    k = Kernel(cmdr_size=1024)
    k.submit(rw(op.WRITE_16, 0, 1), data_out=bytes(512))
    k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    k.map[MB_SIZE + at : MB_SIZE + at + len(junk)] = junk
    try:
        ring = Ring(k.mem)
        cmds, _ = ring.take()
        for cmd in cmds:
            assert cmd.error or cmd.cdb
            for base, n in cmd.iovs:
                assert k.data_off <= base and base + n <= len(k.map)
            ring.complete(cmd.cmd_id, 0)
    except RingError:
        pass


def test_cdb_lengths_follow_the_group_code() -> None:
    from backends.tcmu.ring import cdb_length

    assert [cdb_length(o, b"") for o in (0x00, 0x28, 0x55, 0x88, 0xA8)] == [6, 10, 10, 16, 12]
    assert cdb_length(0x7F, bytes(7) + b"\x18") == 32
    with pytest.raises(EntryError):
        cdb_length(0x60, b"")


async def test_a_ring_that_went_wrong_is_reset_then_given_up_if_it_keeps_going_wrong() -> None:
    k = Kernel()
    resets: list[int] = []

    def reset() -> bool:  # what action/reset_ring does: both indices back to 0
        resets.append(1)
        struct.pack_into("<I", k.map, 12, 0)
        struct.pack_into("<I", k.map, 64, 0)
        k.head = k.last_cleaned = 0
        return True

    port, dev = await serve(k)
    port.reset = reset
    for i in range(4):
        struct.pack_into("<I", k.map, 12, 5)  # unaligned head
        await run_all(port)
        if i < 3:
            assert port.error == "" and len(resets) == i + 1
            r = k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
            await run_all(port)
            assert [d.cmd_id for d in k.reap()] == [r]  # the ring works again
    assert "unaligned" in port.error  # the fourth time within the window: broken for good
    assert port.status()["ring_broken"] != "-" and port.status()["ring_resets"] == 3


async def test_plain_reads_and_writes_are_answered_at_once_the_rest_on_the_loop() -> None:
    k = Kernel()
    port, dev = await serve(k)
    data = os.urandom(4096)
    w = k.submit(rw(op.WRITE_16, 0, 8), data_out=data)
    r = k.submit(rw(op.READ_16, 0, 8), data_in_len=4096)
    # on another thread, as the ring's own: no loop turn is needed for these two
    assert await trio.to_thread.run_sync(port.take) == 2
    done = {d.cmd_id: d for d in k.reap()}
    assert done[w].status == 0 and done[r].data == data and port.at_once == 2
    assert dev.stats.ops["write"] == 1 and dev.stats.ops["read"] == 1

    # What is not plain goes to the loop and gets the engine's full answer there.
    dev.pending_ua = True  # a capacity change: the next command is told first
    ua = k.submit(rw(op.READ_16, 0, 8), data_in_len=4096)
    fua = k.submit(bytes([op.WRITE_16, 0x08]) + rw(op.WRITE_16, 8, 1)[2:], data_out=bytes(512))
    beyond = k.submit(rw(op.READ_16, 2048, 1), data_in_len=512)  # past the 1 MiB device's end
    done = {}
    async with trio.open_nursery() as n:
        port.on_loop(n.start_soon)
        async with dev.engine.ranges.hold(0, 1):  # as a COMPARE AND WRITE holds its blocks
            held = k.submit(rw(op.WRITE_16, 0, 1), data_out=b"x" * 512)
            await trio.to_thread.run_sync(port.take)
            await trio.sleep(0.05)
            done.update((d.cmd_id, d) for d in k.reap())
            assert held not in done  # it waits for the hold, on the loop
        while not port.idle:
            await trio.sleep(0.01)
        n.cancel_scope.cancel()
    done.update((d.cmd_id, d) for d in k.reap())
    assert port.at_once == 2 and set(done) == {ua, fua, beyond, held}
    assert done[ua].status == 2 and done[ua].sense[2] & 0xF == 0x6  # CHECK CONDITION, UNIT ATTENTION
    assert done[beyond].status == 2 and done[beyond].sense[2] & 0xF == 0x5  # ILLEGAL REQUEST
    assert done[fua].status == 0 and done[held].status == 0
    k.submit(rw(op.READ_16, 0, 1), data_in_len=512)
    port.take()
    assert k.reap()[0].data == b"x" * 512 and port.at_once == 3
