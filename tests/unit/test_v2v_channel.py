"""Channel ends over the local transport, without FUSE: sessions, streams, messages, the rings'
life, and what a broken ring or state word does to both ends."""

from __future__ import annotations

import errno
import struct
from collections.abc import AsyncIterator

import pytest
import trio

from backends.errors import VfsError
from backends.v2v import Channel, V2v
from backends.v2v.layout import State


@pytest.fixture
async def channel() -> AsyncIterator[Channel]:
    async with trio.open_nursery() as nursery:
        yield V2v(nursery).create("c")
        nursery.cancel_scope.cancel()


async def test_a_stream_session_and_its_end(channel: Channel) -> None:
    lis, con = channel.ends["listener"], channel.ends["connector"]
    lis.attach("stream")
    assert lis.state is State.LISTENING and not lis.stream_readable()
    con.attach("stream")
    assert lis.state is State.CONNECTED and con.state is State.CONNECTED
    assert con.stream_write(memoryview(b"x" * 100_000)) < 100_000  # a 64 KiB ring takes part
    got = lis.stream_read(1 << 20)
    assert 0 < len(got) < 100_000 and set(got) == {ord("x")}
    await con.detach()
    assert lis.peer_gone() and lis.stream_read(10) == b""  # drained, then EOF
    with pytest.raises(VfsError) as e:
        lis.stream_write(memoryview(b"late"))
    assert e.value.errno == errno.EPIPE
    await lis.detach()
    assert channel.transport._rings is None  # type: ignore[attr-defined]  # idle: no rings


async def test_messages_keep_boundaries_and_a_new_session_drops_the_old_ones(channel: Channel) -> None:
    lis, con = channel.ends["listener"], channel.ends["connector"]
    lis.attach("msg")
    con.attach("msg")
    for m in (b"one", b"two", b"three"):
        assert con.msg_write(memoryview(m), records=False) == len(m)
    assert lis.msg_read(100, records=False) == b"one"
    with pytest.raises(VfsError) as e:
        lis.msg_read(2, records=False)
    assert e.value.errno == errno.EMSGSIZE
    await con.detach()
    await lis.detach()
    lis.attach("msg")  # a new session: "two" and "three" are dropped, not delivered
    assert not lis.msg_readable()
    assert (lis.stats.dropped_messages, lis.stats.dropped_bytes) == (2, 8)
    await lis.detach()


async def test_a_broken_ring_fails_this_end_and_disconnects_it_for_the_peer(channel: Channel) -> None:
    lis, con = channel.ends["listener"], channel.ends["connector"]
    lis.attach("msg")
    con.attach("msg")
    con.msg_write(memoryview(b"fine"), records=False)
    words = channel.transport.buf[4096 : 4096 + 128].cast("I")
    words[(64 + 0) // 4] = 0x7FFF0000  # the connector's prod, far beyond the ring
    with pytest.raises(VfsError) as e:
        lis.msg_read(100, records=False)
    assert e.value.errno == errno.EIO and "producer index" in lis.error
    assert lis.state is State.DISCONNECTED  # what the peer sees
    with pytest.raises(VfsError) as e:
        con.msg_write(memoryview(b"more"), records=False)
    assert e.value.errno == errno.EPIPE
    words.release()
    await con.detach()
    await lis.detach()


async def test_a_state_word_that_is_no_state_is_an_error_not_eof(channel: Channel) -> None:
    lis, con = channel.ends["listener"], channel.ends["connector"]
    lis.attach("stream")
    con.attach("stream")
    struct.pack_into("<I", channel.transport.buf, 36, 0xDEADBEEF)  # the connector's state word
    assert lis.stream_readable()
    with pytest.raises(VfsError) as e:
        lis.stream_read(10)
    assert e.value.errno == errno.EIO and "0xdeadbeef" in lis.error
    await con.detach()
    await lis.detach()
