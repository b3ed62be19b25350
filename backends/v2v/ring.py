"""The NC2 ring codec (OpenXT inc/vring.h, xenevtchn/v2v.c), over any writable buffer. No I/O.

Control area: two 64-byte endpoint records, each written only by its owner:
    u32 prod, prod_event, cons, cons_event, consumer_active, consumer_spinning, producer_active, pad[36]
The listener's record comes first. Data rings: power-of-two byte rings with free-running u32
indices; records start on 8-byte boundaries with a 4-byte header {u8 type, u8 flags, u16 size}
(size = header + payload, not rounded); both ends advance by (size + 7) & ~7; a record never
wraps: a pad record (type 255) fills the rest of the ring first.

Every value the peer writes (its indices, event thresholds, record headers) is validated before
use; a violation raises RingError — never an out-of-bounds access, an exception of another
type, or a hang.

The control words are shared with another process: each is read and written as one aligned
native 32-bit access (a memoryview cast to "I"), never byte by byte as struct's "<I" does —
a byte-wise read can see half of a concurrent update (a torn index).
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

RECORD = 64
PROD, PROD_EVENT, CONS, CONS_EVENT, CONSUMER_ACTIVE, CONSUMER_SPINNING, PRODUCER_ACTIVE = range(0, 28, 4)
HEADER = struct.Struct("<BBH")
PAD_TYPE = 255
MAX_PAYLOAD = 65524  # the u16 size field: (65524 + 4 + 7) & ~7 still fits
MASK32 = 0xFFFFFFFF


class RingError(Exception):
    """The peer broke the protocol (bad index or record); the channel cannot be trusted."""


_FENCE = threading.Lock()


def fence() -> None:
    """A full memory barrier (vring.h's mb()): an index published, then the peer's threshold
    read — a store then a load, which x86 may reorder. An uncontended Lock acquire is one
    `lock cmpxchg`, a full barrier, for ~0.1 µs (cheaper than a ctypes call into anything)."""
    _FENCE.acquire()
    _FENCE.release()


def rounded(size: int) -> int:
    return (size + 7) & ~7


def crossed(old: int, new: int, event: int) -> bool:
    """Xen's rule: notify when the index moved past the event threshold (old < event <= new)."""
    return (new - event) & MASK32 < (new - old) & MASK32


@dataclass
class RingStats:
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    notifications_sent: int = 0
    notifications_suppressed: int = 0
    pads: int = 0
    full_ring_waits: int = 0
    dropped_messages: int = 0  # unread when their session ended: never handed to the next one
    dropped_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class Message:
    type: int
    flags: int
    payload: bytes
    advance: int  # rounded size: how far finish() moves the consumer index


@dataclass
class Nc2:
    """One endpoint's view of a channel: its own record, the peer's record, its tx and rx rings."""

    control: memoryview  # both records (128 bytes)
    local: int  # offset of this endpoint's record in `control` (0 for the listener, 64 for the connector)
    tx: memoryview
    rx: memoryview
    stats: RingStats = field(default_factory=RingStats)
    wake_peer: Callable[[], None] = lambda: None  # for space freed outside finish()

    def __post_init__(self) -> None:
        if sys.byteorder != "little":
            raise ValueError("the NC2 layout is little-endian; native word access needs a little-endian host")
        self.remote = RECORD - self.local
        self.words = self.control[: 2 * RECORD].cast("I")  # one aligned load/store per field
        for ring in (self.tx, self.rx):
            size = len(ring)
            if size < 64 or size & (size - 1):
                raise ValueError(f"ring size {size} is not a power of two >= 64")
        self.prod_pvt = self._mine(PROD)
        self.cons_pvt = self._mine(CONS)
        self._current: Message | None = None

    # ---- raw fields -------------------------------------------------------------------------------

    def _mine(self, off: int) -> int:
        return self.words[(self.local + off) >> 2]

    def _set(self, off: int, value: int) -> None:
        self.words[(self.local + off) >> 2] = value & MASK32

    def _theirs(self, off: int) -> int:
        return self.words[(self.remote + off) >> 2]

    def attach(self) -> None:
        """Start on a fresh ring: arm a notification for the peer's first message and space."""
        self.prod_pvt = self._mine(PROD)
        self.cons_pvt = self._mine(CONS)
        self._current = None
        self._set(PROD_EVENT, self._theirs(PROD) + 1)
        self._set(CONS_EVENT, self._theirs(CONS) + 1)

    # ---- flags ------------------------------------------------------------------------------------

    def set_fast_receive(self, on: bool) -> None:
        self._set(CONSUMER_ACTIVE, 1 if on else 0)

    @property
    def fast_receive(self) -> bool:
        return bool(self._mine(CONSUMER_ACTIVE))

    def remote_fast_receive(self) -> bool:
        return bool(self._theirs(CONSUMER_ACTIVE))

    # ---- producing --------------------------------------------------------------------------------

    def _tx_used(self) -> int:
        used = (self.prod_pvt - self._theirs(CONS)) & MASK32
        if used > len(self.tx):
            raise RingError(f"peer's consumer index is {used} bytes behind a {len(self.tx)}-byte ring")
        return used

    def max_payload(self) -> int:
        """A record of the whole ring would always end at its end and need a pad of it all."""
        return min(MAX_PAYLOAD, len(self.tx) - 12)

    def producer_bytes_available(self) -> int:
        """A lower bound on the largest payload that fits now without a pad (v2v's estimate)."""
        size = len(self.tx)
        free = size - self._tx_used()
        pos = self.prod_pvt & (size - 1)
        to_end = size - pos
        if to_end >= free:
            run = free
        elif to_end < 16:
            run = free - to_end  # the next record starts at the ring's start
        else:
            run = to_end
        return max(0, min(run - 4 - 8, self.max_payload()))

    def _room(self, length: int) -> int:
        """The pad a record of `length` payload bytes needs first (0: none), or -1 if the ring
        has no room for both now: then a wake-up is armed for the next freed byte, and if the
        pad alone fits it is written (to be published by send()) — a record of more than half
        the ring could otherwise wait for ever for room for both (vring.h hangs there)."""
        size = len(self.tx)
        need = rounded(length + 4)
        pos = self.prod_pvt & (size - 1)
        pad = size - pos if size - pos <= need else 0  # a record never ends at the ring's end
        if size - self._tx_used() >= pad + need:
            return pad
        self._set(CONS_EVENT, self._theirs(CONS) + 1)
        fence()
        free = size - self._tx_used()
        if free >= pad + need:
            return pad
        if pad and free >= pad:
            self._pad(pos, pad)
        self.stats.full_ring_waits += 1
        return -1

    def can_prep(self, length: int) -> bool:
        """Would prep(length) succeed now? If not, as in prep(): armed, maybe a pad written."""
        return length > self.max_payload() or self._room(length) >= 0  # too big: prep refuses

    def prep(self, length: int, type_: int = 0, flags: int = 0) -> memoryview | None:
        """Reserve a record for `length` payload bytes and return where to put them; None if the
        ring has no room now (a notification is armed for the next space the peer frees)."""
        if not 0 <= type_ < PAD_TYPE or not 0 <= flags <= 255:
            raise ValueError(f"record type must be 0..254 and flags 0..255 (got {type_}, {flags})")
        if not 0 <= length <= self.max_payload():
            raise ValueError(f"a record carries at most {self.max_payload()} bytes here, not {length}")
        pad = self._room(length)
        if pad < 0:
            return None
        if pad:
            self._pad(self.prod_pvt & (len(self.tx) - 1), pad)
        pos = self.prod_pvt & (len(self.tx) - 1)
        HEADER.pack_into(self.tx, pos, type_, flags, length + 4)
        self.prod_pvt = (self.prod_pvt + rounded(length + 4)) & MASK32
        self.stats.messages_sent += 1
        self.stats.bytes_sent += length
        return self.tx[pos + 4 : pos + 4 + length]

    def _pad(self, pos: int, size: int) -> None:
        HEADER.pack_into(self.tx, pos, PAD_TYPE, 0, size)
        self.prod_pvt = (self.prod_pvt + size) & MASK32
        self.stats.pads += 1

    def send(self) -> bool:
        """Publish what prep() wrote; True if the peer asked to be woken for it."""
        old = self._mine(PROD)
        if old == self.prod_pvt:
            return False
        self._set(PROD, self.prod_pvt)
        fence()
        due = crossed(old, self.prod_pvt, self._theirs(PROD_EVENT))
        if due and self._theirs(CONSUMER_SPINNING):
            due = False  # it is polling anyway
        if due:
            self.stats.notifications_sent += 1
        else:
            self.stats.notifications_suppressed += 1
        return due

    # ---- consuming --------------------------------------------------------------------------------

    def _rx_available(self) -> int:
        avail = (self._theirs(PROD) - self.cons_pvt) & MASK32
        if avail > len(self.rx):
            raise RingError(f"peer's producer index is {avail} bytes ahead of a {len(self.rx)}-byte ring")
        return avail

    def pending(self) -> bool:
        """Is a message waiting (pads are not)? If not, a wake-up is armed for the next one."""
        return self.get() is not None

    def has_room(self) -> bool:
        """Can any payload go out now? If not, a wake-up is armed for freed space (then rechecked)."""
        if self.producer_bytes_available() > 0:
            return True
        self._set(CONS_EVENT, self._theirs(CONS) + 1)
        fence()
        if self.producer_bytes_available() > 0:
            return True
        self.stats.full_ring_waits += 1
        return False

    def get(self) -> Message | None:
        """The next message (pads skipped), copied out once; the same one until finish()."""
        if self._current is not None:
            return self._current
        while True:
            avail = self._rx_available()
            if avail == 0:
                self._set(PROD_EVENT, self._theirs(PROD) + 1)  # wake me at the next message, then recheck
                fence()
                if self._rx_available() == 0:
                    self._release_pads()
                    return None
                continue
            pos, type_, flags, length, step = _record(self.rx, self.cons_pvt, avail)
            if type_ == PAD_TYPE:  # skipped privately, published with the next finish (vring.h)
                self.cons_pvt = (self.cons_pvt + step) & MASK32
                continue
            payload = bytes(self.rx[pos + 4 : pos + length])
            self._current = Message(type_, flags, payload, step)
            return self._current

    def _release_pads(self) -> None:
        """Nothing but pads was left: publish their space now (a producer may wait for it)."""
        if self._publish_cons():
            self.wake_peer()

    def _publish_cons(self) -> bool:
        """Publish the private consumer index (pads skipped included); True if the peer asked
        to be woken for the space."""
        old = self._mine(CONS)
        if old == self.cons_pvt:
            return False
        self._set(CONS, self.cons_pvt)
        fence()
        due = crossed(old, self.cons_pvt, self._theirs(CONS_EVENT))
        if due:
            self.stats.notifications_sent += 1
        return due

    def finish(self) -> bool:
        """Done with the current message: free its space; True if the peer asked to be woken."""
        current = self._current
        if current is None:
            return False
        self._current = None
        self.cons_pvt = (self.cons_pvt + current.advance) & MASK32
        self.stats.messages_received += 1
        self.stats.bytes_received += len(current.payload)
        return self._publish_cons()


def _record(ring: memoryview, cons: int, avail: int) -> tuple[int, int, int, int, int]:
    """(position, type, flags, size, rounded size) of the record at index `cons`, with `avail`
    bytes published after it; RingError for a header or a size that cannot be."""
    size = len(ring)
    pos = cons & (size - 1)
    if pos + 4 > size or avail < 4:
        raise RingError(f"record header at {pos} does not fit the ring")
    type_, flags, length = HEADER.unpack_from(ring, pos)
    step = rounded(length)
    if length < 4 or pos + length > size or step > avail:
        raise RingError(f"record at {pos} claims {length} bytes ({avail} available, ring {size})")
    return pos, type_, flags, length, step


def unread(ring: memoryview, prod: int, cons: int) -> tuple[int, int]:
    """(messages, payload bytes) between `cons` and `prod` on `ring`, pads not counted. Stops at
    the first record that cannot be (the count is of what can be trusted)."""
    size = len(ring)
    avail = (prod - cons) & MASK32
    if avail > size:
        return 0, 0
    messages = payload = 0
    while avail:
        try:
            _, type_, _, length, step = _record(ring, cons, avail)
        except RingError:
            break
        if type_ != PAD_TYPE:
            messages += 1
            payload += length - 4
        cons = (cons + step) & MASK32
        avail -= step
    return messages, payload


def init_control(control: memoryview) -> None:
    control[: 2 * RECORD] = bytes(2 * RECORD)
