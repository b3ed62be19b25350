"""The kernel's TCMU command ring (linux/target_core_user.h), sans-IO: what a userspace takes
from it and writes back, byte-exact with the C structs, on a memoryview of the whole mapping.

    [mailbox 128 B][command ring: cmdr_size][data area]

The kernel produces entries at `cmd_head`; we read them with a private pointer, copy out each
command's CDB and iovecs (its slot will carry some other command's response), and complete
commands in any order where the mailbox offers CAP_OOOC: each response fills the oldest slot
not yet completed, names its own cmd_id, and moves `cmd_tail` by that slot's length — what
libtcmu's tcmulib_command_complete does. PAD and TMR entries are passed over. Nothing here
trusts the ring: a mailbox or an entry that cannot be is a RingError (the device's ring is
broken, with the reason); a command entry whose fields point outside their place is an
EntryError, and that command alone fails.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

MB_SIZE = 128  # sizeof(struct tcmu_mailbox): cmd_tail sits alone on the second cache line
CAP_OOOC, CAP_READ_LEN, CAP_TMR, CAP_KEEP_BUF = 1, 2, 4, 8
OP_PAD, OP_CMD, OP_TMR = 0, 1, 2
UFLAG_UNKNOWN_OP, UFLAG_READ_LEN, UFLAG_KEEP_BUF = 1, 2, 4
SENSE_BUFFERSIZE = 96
ENTRY_MIN = 112  # sizeof(struct tcmu_cmd_entry)
IOV_OFF = 48  # req.iov[] within an entry
TMR_IDS_OFF = 32  # tmr.cmd_ids[] within a TMR entry

_MAILBOX = struct.Struct("<HHIII")  # version, flags, cmdr_off, cmdr_size, cmd_head
_U32 = struct.Struct("<I")
HEAD_OFF, TAIL_OFF = 12, 64
_HDR = struct.Struct("<IHBB")  # len_op, cmd_id, kflags, uflags
_REQ = struct.Struct("<III4xQ")  # iov_cnt, iov_bidi_cnt, iov_dif_cnt, (hole), cdb_off
_IOV = struct.Struct("<QQ")  # iov_base (from the mailbox's start), iov_len
_ID = struct.Struct("<H")
_RSP = struct.Struct("<B3xI")  # scsi_status, (pad), read_len
_TMR = struct.Struct("<B3xI")  # tmr_type, (pad), cmd_cnt
UFLAGS_OFF = 7


class RingError(Exception):
    """The ring as a whole cannot be used: nothing more is taken from it."""


class EntryError(Exception):
    """One command entry is malformed: that command is failed, the ring goes on."""


def cdb_length(opcode: int, first_bytes: bytes) -> int:
    """The CDB's length from its group code, as libtcmu's tcmu_cdb_get_length."""
    group = opcode >> 5
    if group == 0:
        return 6
    if group in (1, 2):
        return 10
    if group == 4:
        return 16
    if group == 5:
        return 12
    if opcode == 0x7F and len(first_bytes) > 7:  # variable length: 8 + additional length
        return 8 + first_bytes[7]
    raise EntryError(f"CDB opcode {opcode:#04x} has no length (group {group})")


@dataclass(slots=True)
class Command:
    """A command taken from the ring; its data lives in the data area at `iovs` (offsets from
    the mapping's start), data-out first, then `bidi` data-in ones for a BIDI command."""

    cmd_id: int
    cdb: bytes
    iovs: list[tuple[int, int]]
    bidi: list[tuple[int, int]] = field(default_factory=list)
    error: str = ""  # set for an entry that is failed rather than run (EntryError's reason)
    length: int = -1  # the bytes `iovs` hold (worked out unless given)

    def __post_init__(self) -> None:
        if self.length < 0:
            self.length = sum(n for _, n in self.iovs)


@dataclass(slots=True)
class Tmr:
    """A task management notification (abort, reset) naming commands the kernel gave up."""

    tmr_type: int
    cmd_ids: list[int]


_GROUP_CDB_LEN = (6, 10, 10, 0, 16, 12, 0, 0)  # by group code; 0: see cdb_length
_IOVECS = [struct.Struct(f"<{2 * n}Q") for n in range(65)]  # iovec tables by count


def _iovecs(count: int) -> struct.Struct:
    return _IOVECS[count] if count < len(_IOVECS) else struct.Struct(f"<{2 * count}Q")


class Ring:
    """The consumer side of one device's ring over `mem`, the whole uio mapping."""

    def __init__(self, mem: memoryview) -> None:
        if len(mem) < MB_SIZE:
            raise RingError(f"the mapping is {len(mem)} bytes, smaller than a mailbox")
        version, flags, cmdr_off, cmdr_size, _ = _MAILBOX.unpack_from(mem, 0)
        if version != 2:
            raise RingError(f"mailbox version {version}, not 2")
        if cmdr_off != MB_SIZE or cmdr_size < ENTRY_MIN or cmdr_size % 8 or cmdr_off + cmdr_size > len(mem):
            raise RingError(
                f"command ring at {cmdr_off} of {cmdr_size} bytes does not fit a {len(mem)}-byte map"
            )
        self.mem = mem
        self.flags = flags
        self.cmdr_off = cmdr_off
        self.cmdr_size = cmdr_size
        self.data_off = cmdr_off + cmdr_size
        self.next = self.tail  # our private read pointer
        # read, and not yet passed by cmd_tail: (offset in the command ring, length, a command's?)
        self._slots: deque[tuple[int, int, bool]] = deque()
        self._held: dict[int, tuple[int, bytes, int]] = {}  # in-order rings: completions waiting
        self._order: deque[int] = deque()  # in-order rings: cmd_ids as read

    @property
    def head(self) -> int:
        return _U32.unpack_from(self.mem, HEAD_OFF)[0]

    @property
    def tail(self) -> int:
        return _U32.unpack_from(self.mem, TAIL_OFF)[0]

    @property
    def in_flight(self) -> int:
        return sum(is_cmd for _, _, is_cmd in self._slots)

    def take(self) -> tuple[list[Command], list[Tmr]]:
        """Every entry the kernel has produced since the last call."""
        # (Locals, few calls: see KernelPort._at_once)
        mem, size, p = self.mem, self.cmdr_size, self.next
        head = _U32.unpack_from(mem, HEAD_OFF)[0]
        if head >= size or head % 8:
            raise RingError(f"cmd_head {head} is outside the {size}-byte ring or unaligned")
        commands: list[Command] = []
        tmrs: list[Tmr] = []
        slots = self._slots
        while p != head:
            if p + _HDR.size > size:
                raise RingError(f"an entry header at {p} crosses the ring's end")
            at = self.cmdr_off + p
            len_op, cmd_id, _, _ = _HDR.unpack_from(mem, at)
            op, length = len_op & 7, len_op & ~7
            if length < _HDR.size or p + length > size:
                raise RingError(f"the entry at {p} has length {length}: entries are 8.. bytes and never wrap")
            if op == OP_CMD:
                commands.append(self._command(at, cmd_id, length))
                if not self.flags & CAP_OOOC:
                    self._order.append(cmd_id)
            elif op == OP_TMR:
                tmrs.append(self._tmr(at, length))
            elif op != OP_PAD:
                mem[at + UFLAGS_OFF] |= UFLAG_UNKNOWN_OP
            slots.append((p, length, op == OP_CMD))
            p = self.next = (p + length) % size
        if slots and not slots[0][2]:
            self._sweep()
        return commands, tmrs

    def _command(self, at: int, cmd_id: int, length: int) -> Command:
        mem = self.mem
        try:
            if length < ENTRY_MIN:
                raise EntryError(f"a command entry of {length} bytes, under {ENTRY_MIN}")
            iov_cnt, bidi_cnt, dif_cnt, cdb_off = _REQ.unpack_from(mem, at + 8)
            if dif_cnt:
                raise EntryError(f"{dif_cnt} DIF iovecs: protection information is not supported")
            count = iov_cnt + bidi_cnt
            table_end = IOV_OFF + _IOV.size * count
            if table_end > length:
                raise EntryError(f"{iov_cnt}+{bidi_cnt} iovecs do not fit a {length}-byte entry")
            if not at + table_end <= cdb_off < at + length:
                raise EntryError(f"cdb_off {cdb_off} is not inside its entry after the iovecs")
            opcode = mem[cdb_off]
            cdb_len = _GROUP_CDB_LEN[opcode >> 5] or cdb_length(opcode, bytes(mem[cdb_off : cdb_off + 8]))
            if cdb_off + cdb_len > at + length:
                raise EntryError(f"a {cdb_len}-byte CDB runs past its entry")
            data_off, end = self.data_off, len(mem)
            if count == 1:  # the common case, without the general one's zip and loop
                base, total = iov = _IOV.unpack_from(mem, at + IOV_OFF)
                if base < data_off or base + total > end:
                    raise EntryError(f"an iovec of {total} bytes at {base} is outside the data area")
                iovs = [iov]
            else:
                flat = _iovecs(count).unpack_from(mem, at + IOV_OFF) if count else ()
                iovs = list(zip(flat[::2], flat[1::2], strict=True))
                total = 0
                for i, (base, n) in enumerate(iovs):
                    if base < data_off or base + n > end:
                        raise EntryError(f"an iovec of {n} bytes at {base} is outside the data area")
                    if i < iov_cnt:
                        total += n
            cdb = mem[cdb_off : cdb_off + cdb_len].tobytes()
            if bidi_cnt:
                return Command(cmd_id, cdb, iovs[:iov_cnt], iovs[iov_cnt:], length=total)
            return Command(cmd_id, cdb, iovs, length=total)
        except EntryError as e:
            return Command(cmd_id, b"", [], error=str(e))

    def _tmr(self, at: int, length: int) -> Tmr:
        tmr_type, count = _TMR.unpack_from(self.mem, at + 8)
        count = min(count, max(0, (length - TMR_IDS_OFF) // 2))  # never past the entry
        ids = struct.unpack_from(f"<{count}H", self.mem, at + TMR_IDS_OFF) if count else ()
        return Tmr(tmr_type, list(ids))

    def complete(self, cmd_id: int, status: int, sense: bytes = b"", read_len: int | None = None) -> None:
        """Write one command's response; the caller kicks the kernel (write() on the uio fd)
        once after a batch."""
        if not self.flags & CAP_OOOC:  # the kernel wants them in the order it gave them
            self._held[cmd_id] = (status, sense, -1 if read_len is None else read_len)
            while self._order and self._order[0] in self._held:
                first = self._order.popleft()
                st, se, rl = self._held.pop(first)
                self._respond(first, st, se, None if rl < 0 else rl)
            return
        self._respond(cmd_id, status, sense, read_len)

    def _respond(self, cmd_id: int, status: int, sense: bytes, read_len: int | None) -> None:
        # take() and every response end with a sweep: the first slot is a command's
        if not self._slots:
            raise RingError(f"a completion for command {cmd_id} with no command outstanding")
        slots, mem = self._slots, self.mem
        offset, length, _ = slots.popleft()
        at = self.cmdr_off + offset
        _ID.pack_into(mem, at + 4, cmd_id)
        uflags = mem[at + UFLAGS_OFF] & ~(UFLAG_READ_LEN | UFLAG_UNKNOWN_OP)
        if read_len is not None and self.flags & CAP_READ_LEN:
            uflags |= UFLAG_READ_LEN
        mem[at + UFLAGS_OFF] = uflags
        _RSP.pack_into(mem, at + 8, status, read_len or 0)
        if sense:
            sense = sense[:SENSE_BUFFERSIZE]
            mem[at + 16 : at + 16 + len(sense)] = sense
        _U32.pack_into(mem, TAIL_OFF, (offset + length) % self.cmdr_size)
        if slots and not slots[0][2]:
            self._sweep()

    def _sweep(self) -> None:
        """Pass cmd_tail over PAD and TMR entries at its front: the kernel skips them, and one
        left there would hold its ring space until the next completion."""
        while self._slots and not self._slots[0][2]:
            offset, length, _ = self._slots.popleft()
            _U32.pack_into(self.mem, TAIL_OFF, (offset + length) % self.cmdr_size)

    # ---- data: the iovecs of a command, as one buffer -------------------------------------------

    def view(self, iov: tuple[int, int]) -> memoryview:
        base, length = iov
        return self.mem[base : base + length]

    def views(self, iovs: list[tuple[int, int]]) -> list[memoryview]:
        """The iovecs as views of the data area (no comprehension for the common one: a call)."""
        mem = self.mem
        if len(iovs) == 1:
            base, length = iovs[0]
            return [mem[base : base + length]]
        return [mem[base : base + length] for base, length in iovs]

    def gather(self, iovs: list[tuple[int, int]]) -> memoryview:
        """Data-out as one buffer: the data area itself for one iovec, else a copy."""
        if len(iovs) == 1:
            base, length = iovs[0]
            return self.mem[base : base + length]
        return memoryview(b"".join(self.mem[b : b + n] for b, n in iovs))

    def scatter(self, iovs: list[tuple[int, int]], data: bytes | memoryview) -> int:
        """Data-in into the iovecs; how many bytes went (at most the data's length)."""
        done = 0
        view = memoryview(data)
        for base, length in iovs:
            n = min(length, len(view) - done)
            if n <= 0:
                break
            self.mem[base : base + n] = view[done : done + n]
            done += n
        return done
