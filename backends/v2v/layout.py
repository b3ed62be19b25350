"""The byte layout of one channel's shared area — the same for the local and shm transports,
so the bytes could be handed to a C peer.

    0      header (4096 bytes): "VFSV2V01", u32 version, u32 prod_order, u32 cons_order,
           u32 listener_state @32, u32 connector_state @36 (v2v's xenstore `state` keys)
    4096   control page: the listener's 64-byte record, then the connector's
    8192   ring listener→connector (4096 << prod_order bytes), then ring connector→listener
Orders are from the listener's point of view, as v2v stores them.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from backends.v2v import ring

PAGE = 4096
MAGIC = b"VFSV2V01"
VERSION = 1
HEADER = struct.Struct("<8sIII")
STATE_OFF = {"listener": 32, "connector": 36}
CONTROL = PAGE
RINGS = 2 * PAGE
MAX_ORDER = 4  # v2v's MAX_RING_PAGE_ORDER: its connect refuses more


class State(IntEnum):
    UNKNOWN = 0
    UNREADY = 0x123
    LISTENING = 0x124
    CONNECTED = 0x125
    DISCONNECTING = 0x126
    DISCONNECTED = 0x127
    CRASHED = 0x128

    @property
    def label(self) -> str:
        return self.name.lower()


# States that end a session (garbage too); a set, as it is asked several times a message
ENDING = frozenset({State.DISCONNECTING, State.DISCONNECTED, State.CRASHED, State.UNKNOWN})
# States of an end that is in use by its process: listening, in a session, or leaving one
IN_USE = frozenset({State.LISTENING, State.CONNECTED, State.DISCONNECTING})


def ring_bytes(order: int) -> int:
    return PAGE << order


def total_size(prod_order: int, cons_order: int) -> int:
    return RINGS + ring_bytes(prod_order) + ring_bytes(cons_order)


IDLE = 64  # what an idle channel keeps of its shared area: the header's fields, states included


def init_header(buf: memoryview, prod_order: int, cons_order: int) -> None:
    n = min(len(buf), PAGE)
    buf[:n] = bytes(n)
    HEADER.pack_into(buf, 0, MAGIC, VERSION, prod_order, cons_order)
    for off in STATE_OFF.values():
        struct.pack_into("<I", buf, off, State.UNREADY)


def read_header(buf: memoryview) -> tuple[int, int] | None:
    """(prod_order, cons_order) if the header is ours and sane, else None."""
    magic, version, prod, cons = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != VERSION or not (0 <= prod <= MAX_ORDER and 0 <= cons <= MAX_ORDER):
        return None
    return prod, cons


def state_words(buf: memoryview) -> memoryview:
    """The header as native words, so each state word is one aligned access (the other process
    writes it concurrently). Kept beside the buffer: the state is read several times a message."""
    return buf[: min(len(buf), PAGE)].cast("I")


_INDEX = {role: off >> 2 for role, off in STATE_OFF.items()}
_STATES = {s.value: s for s in State}  # a dict lookup: State(value) costs a microsecond


def get_state(words: memoryview, role: str) -> State:
    return _STATES.get(words[_INDEX[role]], State.UNKNOWN)  # garbage from a corrupt peer: "unknown"


def raw_state(words: memoryview, role: str) -> int:
    return int(words[_INDEX[role]])


def put_state(words: memoryview, role: str, state: State) -> None:
    words[_INDEX[role]] = state


def rings(buf: memoryview, prod_order: int, cons_order: int) -> tuple[memoryview, memoryview, memoryview]:
    """(control, ring listener→connector, ring connector→listener)."""
    a = ring_bytes(prod_order)
    b = ring_bytes(cons_order)
    return buf[CONTROL : CONTROL + 128], buf[RINGS : RINGS + a], buf[RINGS + a : RINGS + a + b]


def unread(buf: memoryview) -> tuple[int, int]:
    """(messages, payload bytes) written in a session and never read, both directions."""
    orders = read_header(buf)
    if orders is None or len(buf) < total_size(*orders):
        return 0, 0
    control, l2c, c2l = rings(buf, *orders)
    with control.cast("I") as words:
        listener, connector = 0, ring.RECORD >> 2
        prod, cons = ring.PROD >> 2, ring.CONS >> 2
        a = ring.unread(l2c, words[listener + prod], words[connector + cons])
        b = ring.unread(c2l, words[connector + prod], words[listener + cons])
    return a[0] + b[0], a[1] + b[1]
