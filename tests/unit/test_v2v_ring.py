"""The NC2 ring codec, byte for byte, plus random interleavings and hostile control records."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.v2v import layout
from backends.v2v.ring import (
    CONS,
    CONS_EVENT,
    MAX_PAYLOAD,
    PAD_TYPE,
    PROD,
    PROD_EVENT,
    Nc2,
    RingError,
    crossed,
    init_control,
)


def pair(size: int = 256) -> tuple[Nc2, Nc2, bytearray, bytearray, bytearray]:
    """A listener and a connector sharing one control area and two rings."""
    control, l2c, c2l = bytearray(128), bytearray(size), bytearray(size)
    init_control(memoryview(control))
    a = Nc2(memoryview(control), 0, memoryview(l2c), memoryview(c2l))
    b = Nc2(memoryview(control), 64, memoryview(c2l), memoryview(l2c))
    a.attach()
    b.attach()
    return a, b, control, l2c, c2l


def field(control: bytearray, record: int, off: int) -> int:
    return struct.unpack_from("<I", control, record + off)[0]


def test_record_header_and_alignment_bytes() -> None:
    a, b, control, l2c, _ = pair()
    slot = a.prep(5, type_=52, flags=3)
    assert slot is not None
    slot[:] = b"hello"
    assert bytes(l2c[:12]) == bytes([52, 3, 9, 0]) + b"hello" + bytes(
        3
    )  # {type, flags, u16 size=4+5}, 8-aligned
    assert a.prod_pvt == 16 and field(control, 0, PROD) == 0  # not published yet
    assert a.send() is True  # b armed prod_event = 1 at attach
    assert field(control, 0, PROD) == 16
    msg = b.get()
    assert msg is not None and (msg.type, msg.flags, msg.payload, msg.advance) == (52, 3, b"hello", 16)
    assert b.get() is msg  # the same message until finish()
    b.finish()
    assert field(control, 64, CONS) == 16 and b.get() is None


def test_pad_at_the_wrap() -> None:
    a, b, control, l2c, _ = pair(64)
    for _ in range(3):
        slot = a.prep(12)  # 16 bytes each
        assert slot is not None
        slot[:] = b"x" * 12
    a.send()
    for _ in range(3):
        assert b.get() is not None
        b.finish()
    # 48 used, 16 left to the end; a 20-byte payload needs 24: a 16-byte pad first
    slot = a.prep(20, type_=1)
    assert slot is not None
    slot[:] = b"y" * 20
    assert bytes(l2c[48:52]) == bytes([PAD_TYPE, 0, 16, 0])
    assert bytes(l2c[0:4]) == bytes([1, 0, 24, 0])
    assert a.prod_pvt == 48 + 16 + 24 and a.stats.pads == 1
    a.send()
    msg = b.get()
    assert msg is not None and msg.payload == b"y" * 20 and msg.type == 1
    b.finish()
    assert field(control, 64, CONS) == a.prod_pvt


def test_free_running_indices_wrap_past_2_32() -> None:
    control, l2c, c2l = bytearray(128), bytearray(64), bytearray(64)
    start = 0xFFFFFFF0
    for record in (0, 64):
        for off in (PROD, CONS):
            struct.pack_into("<I", control, record + off, start)
    a = Nc2(memoryview(control), 0, memoryview(l2c), memoryview(c2l))
    b = Nc2(memoryview(control), 64, memoryview(c2l), memoryview(l2c))
    a.attach()
    b.attach()
    for i in range(10):
        slot = a.prep(4)
        assert slot is not None
        slot[:] = i.to_bytes(4, "little")
        a.send()
        msg = b.get()
        assert msg is not None and msg.payload == i.to_bytes(4, "little")
        b.finish()
    # every record that would end at the ring's end gets a pad first, as in vring.h
    assert a.stats.pads == 2 and a.prod_pvt == (start + 80 + 2 * 8) & 0xFFFFFFFF


def test_thresholds_notify_once_per_arming() -> None:
    assert crossed(0, 16, 1) and not crossed(16, 32, 1) and crossed(0xFFFFFFF8, 8, 2)
    a, b, control, _, _ = pair()
    for _ in range(3):
        slot = a.prep(1)
        assert slot is not None
        slot[:] = b"z"
        assert a.send() is (a.stats.notifications_sent == 1 and a.stats.notifications_suppressed == 0)
    assert a.stats.notifications_sent == 1 and a.stats.notifications_suppressed == 2
    assert b.pending()
    while b.get() is not None:
        b.finish()
    assert field(control, 64, PROD_EVENT) == a.prod_pvt + 1  # re-armed by the empty get()
    slot = a.prep(1)
    assert slot is not None
    assert a.send() is True


def test_full_ring_arms_space_notification() -> None:
    a, b, control, _, _ = pair(64)
    assert a.prep(52) is not None  # 56 bytes: the largest record, as one at the ring's end needs a pad
    a.send()
    assert a.prep(1) is None and a.stats.full_ring_waits == 1  # 8 left: a pad of 8 alone, then wait
    assert a.stats.pads == 1 and a.prod_pvt == 64
    assert field(control, 0, CONS_EVENT) == 1  # wake me at any freed space
    assert b.get() is not None
    assert b.finish() is True
    assert a.prep(1) is not None


def test_producer_bytes_available() -> None:
    a, b, _, _, _ = pair(256)
    assert a.producer_bytes_available() == 256 - 12
    slot = a.prep(100)
    assert slot is not None
    a.send()
    assert a.producer_bytes_available() == 256 - 104 - 12
    slot = a.prep(a.producer_bytes_available())  # what it promises fits, without a pad
    assert slot is not None and a.stats.pads == 0
    assert a.producer_bytes_available() == 0 and not a.has_room()


def test_a_record_of_most_of_the_ring_never_waits_for_ever() -> None:
    """At a position where pad + record exceed the ring, the pad goes alone; the consumer,
    finding only pads, publishes their space; then the record fits at the start."""
    a, b, control, l2c, _ = pair(64)
    assert a.prep(12) is not None  # [0,16)
    a.send()
    assert b.get() is not None
    b.finish()
    assert a.prep(44) is None  # 48 bytes at 16: pad 48 + 48 > 64 free
    assert a.stats.pads == 1 and a.send() is False  # the pad published (b armed nothing yet)
    assert b.get() is None  # skips the pad, publishes its space
    assert field(control, 64, CONS) == 64
    slot = a.prep(44)
    assert slot is not None and bytes(l2c[0:4]) == bytes([0, 0, 48, 0])
    a.send()
    msg = b.get()
    assert msg is not None and len(msg.payload) == 44


def test_limits() -> None:
    a, _, _, _, _ = pair(1 << 20)
    assert a.max_payload() == MAX_PAYLOAD
    with pytest.raises(ValueError):
        a.prep(MAX_PAYLOAD + 1)
    with pytest.raises(ValueError):
        a.prep(1, type_=PAD_TYPE)
    small, _, _, _, _ = pair(64)
    assert small.max_payload() == 52  # a record of the whole ring would need a pad of it all
    with pytest.raises(ValueError):
        Nc2(memoryview(bytearray(128)), 0, memoryview(bytearray(100)), memoryview(bytearray(64)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=200), st.sampled_from([64, 256, 1024])
)
def test_random_interleavings_deliver_everything_in_order(ops: list[tuple[bool, int]], size: int) -> None:
    a, b, _, _, _ = pair(size)
    sent: list[bytes] = []
    got: list[bytes] = []
    counter = 0
    for produce, n in ops:
        if produce:
            n = min(n, a.max_payload())
            payload = bytes([counter % 256]) * n
            slot = a.prep(n)
            if slot is not None:
                slot[:] = payload
                sent.append(payload)
                counter += 1
            a.send()
        else:
            msg = b.get()
            if msg is not None:
                got.append(msg.payload)
                b.finish()
    a.send()
    while (msg := b.get()) is not None:
        got.append(msg.payload)
        b.finish()
    assert got == sent


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=128, max_size=128),
    st.binary(min_size=64, max_size=64),
    st.lists(st.booleans(), max_size=20),
)
def test_corrupt_control_and_ring_only_raise_ring_error(control: bytes, ring: bytes, ops: list[bool]) -> None:
    ctl, l2c, c2l = bytearray(control), bytearray(ring), bytearray(ring)
    b = Nc2(memoryview(ctl), 64, memoryview(c2l), memoryview(l2c))
    for op in ops:
        try:
            if op:
                msg = b.get()
                if msg is not None:
                    assert len(msg.payload) <= 64
                    b.finish()
            else:
                b.producer_bytes_available()
                slot = b.prep(8)
                if slot is not None:
                    slot[:] = b"12345678"
                b.send()
        except RingError:
            pass


def test_hostile_producer_index_is_an_error_not_a_hang() -> None:
    a, b, control, _, _ = pair()
    struct.pack_into("<I", control, 0 + PROD, 10_000)  # far beyond a 256-byte ring
    with pytest.raises(RingError):
        b.get()
    a2, b2, control2, l2c, _ = pair()
    struct.pack_into("<I", control2, 0 + PROD, 8)
    l2c[0:4] = bytes([0, 0, 2, 0])  # size 2 < header
    with pytest.raises(RingError):
        b2.get()
    struct.pack_into(
        "<I", control2, 0 + CONS, 0xFFFF0000
    )  # the peer claims to have consumed more than we sent
    with pytest.raises(RingError):
        b2.prep(1)


@given(st.sampled_from([s.value for s in layout.State]) | st.integers(0, 2**32 - 1))
def test_a_state_word_reads_as_its_state_and_garbage_as_unknown(word: int) -> None:
    buf = memoryview(bytearray(layout.total_size(0, 0)))
    layout.init_header(buf, 0, 0)
    struct.pack_into("<I", buf, layout.STATE_OFF["connector"], word)
    valid = {s.value for s in layout.State}
    words = layout.state_words(buf)
    assert layout.get_state(words, "connector") == (
        layout.State(word) if word in valid else layout.State.UNKNOWN
    )
    assert layout.get_state(words, "listener") is layout.State.UNREADY  # the other word untouched


def test_a_skipped_pad_is_published_with_the_next_finish() -> None:
    """vring.h advances only its private index past a pad; publishing it at once made finish()
    start from after the pad and miss a producer threshold armed at the pad's start."""
    a, b, control, l2c, _ = pair(64)
    for n in (12, 20, 12):  # records of 16, 24, 16 bytes: [0,16) [16,40) [40,56)
        assert a.prep(n) is not None
    a.send()
    for _ in range(2):
        assert b.get() is not None
        b.finish()
    assert a.prep(28) is not None  # 32 bytes: an 8-byte pad at 56 first, then [0,32)
    a.send()
    assert bytes(l2c[56:60]) == bytes([PAD_TYPE, 0, 8, 0])
    assert b.get() is not None
    b.finish()  # consumer at 56, the pad's start
    assert a.prep(28) is None  # 24 free, 32 needed (and a pad: it would end at the end): armed
    assert field(control, 0, CONS_EVENT) == 57
    msg = b.get()
    assert msg is not None and len(msg.payload) == 28
    assert field(control, 64, CONS) == 56  # the pad is skipped privately, not published yet
    assert b.finish() is True  # 56 -> 96 crosses 57 (publishing the pad made it 64 -> 96: no wake-up)
