"""The producer side of a TCMU ring, as target_core_user.c's queue_cmd_ring and
tcmu_handle_completions do it, on a bytearray: for testing the consumer without a kernel."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from backends.tcmu.ring import (
    CAP_OOOC,
    CAP_READ_LEN,
    ENTRY_MIN,
    IOV_OFF,
    MB_SIZE,
    OP_CMD,
    OP_PAD,
    OP_TMR,
    UFLAG_READ_LEN,
)

PAGE = 4096


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass
class Done:
    cmd_id: int
    status: int
    sense: bytes
    data: bytes


class Kernel:
    """One device's mapping: mailbox, a `cmdr_size` ring, `data_pages` pages of data area."""

    def __init__(
        self, cmdr_size: int = 8192, data_pages: int = 64, flags: int = CAP_OOOC | CAP_READ_LEN
    ) -> None:
        self.cmdr_size = cmdr_size
        self.data_off = MB_SIZE + cmdr_size
        self.map = bytearray(self.data_off + data_pages * PAGE)
        self.mem = memoryview(self.map)
        struct.pack_into("<HHIII", self.map, 0, 2, flags, MB_SIZE, cmdr_size, 0)
        self.head = 0
        self.last_cleaned = 0
        self.free_pages = list(range(data_pages))
        self.out: dict[int, tuple[list[tuple[int, int]], int, list[int]]] = {}  # id: iovs, in_len, pages
        self.ids = iter(range(1, 65536))

    def _used(self) -> int:
        return (self.head - self.last_cleaned) % self.cmdr_size

    def submit(self, cdb: bytes, data_out: bytes = b"", data_in_len: int = 0) -> int:
        """Queue one command; its cmd_id. Data-out is copied into freshly taken pages."""
        length = len(data_out) or data_in_len
        pages = [self.free_pages.pop(0) for _ in range(round_up(length, PAGE) // PAGE)]
        iovs = [(self.data_off + p * PAGE, min(PAGE, length - i * PAGE)) for i, p in enumerate(pages)]
        for i, (base, n) in enumerate(iovs if data_out else []):
            self.map[base : base + n] = data_out[i * PAGE : i * PAGE + n]
        base_len = max(IOV_OFF + 16 * len(iovs), ENTRY_MIN)
        size = base_len + round_up(len(cdb), 8)
        if self.cmdr_size - self.head < size:  # entries never wrap: pad to the end
            assert self._used() + (self.cmdr_size - self.head) + size < self.cmdr_size, "ring full"
            self._entry(self.head, self.cmdr_size - self.head, OP_PAD, 0)
            self.head = 0
        assert self._used() + size < self.cmdr_size, "ring full"
        cmd_id = next(self.ids)
        at = MB_SIZE + self.head
        self.map[at : at + size] = bytes(size)
        self._entry(self.head, size, OP_CMD, cmd_id)
        struct.pack_into("<III4xQ", self.map, at + 8, len(iovs), 0, 0, at + base_len)
        for i, (base, n) in enumerate(iovs):
            struct.pack_into("<QQ", self.map, at + IOV_OFF + 16 * i, base, n)
        self.map[at + base_len : at + base_len + len(cdb)] = cdb
        self.head = (self.head + size) % self.cmdr_size
        struct.pack_into("<I", self.map, 12, self.head)
        self.out[cmd_id] = (iovs, data_in_len, pages)
        return cmd_id

    def tmr(self, tmr_type: int, cmd_ids: list[int]) -> None:
        size = round_up(32 + 2 * len(cmd_ids), 8)
        if self.cmdr_size - self.head < size:
            self._entry(self.head, self.cmdr_size - self.head, OP_PAD, 0)
            self.head = 0
        at = MB_SIZE + self.head
        self._entry(self.head, size, OP_TMR, 0)
        struct.pack_into(f"<B3xI16x{len(cmd_ids)}H", self.map, at + 8, tmr_type, len(cmd_ids), *cmd_ids)
        self.head = (self.head + size) % self.cmdr_size
        struct.pack_into("<I", self.map, 12, self.head)

    def _entry(self, offset: int, length: int, op: int, cmd_id: int) -> None:
        struct.pack_into("<IHBB", self.map, MB_SIZE + offset, length | op, cmd_id, 0, 0)

    def reap(self) -> list[Done]:
        """What the kernel does on write(): walk from last_cleaned to cmd_tail."""
        tail = struct.unpack_from("<I", self.map, 64)[0]
        done = []
        while self.last_cleaned != tail:
            at = MB_SIZE + self.last_cleaned
            len_op, cmd_id, _, uflags = struct.unpack_from("<IHBB", self.map, at)
            if len_op & 7 == OP_CMD:
                assert cmd_id in self.out, f"unknown cmd_id {cmd_id}: the kernel would break the ring"
                iovs, in_len, pages = self.out.pop(cmd_id)
                status, read_len = struct.unpack_from("<B3xI", self.map, at + 8)
                if uflags & UFLAG_READ_LEN:
                    in_len = min(in_len, read_len)
                data = b"".join(self.map[b : b + n] for b, n in iovs)[:in_len]
                done.append(Done(cmd_id, status, bytes(self.map[at + 16 : at + 16 + 96]), data))
                self.free_pages += pages
            self.last_cleaned = (self.last_cleaned + (len_op & ~7)) % self.cmdr_size
        return done
