"""The `scsi` file's framing, without FUSE: byte layout, round trips, and refusals."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.errors import VfsError
from backends.tcmu import sg


def test_request_bytes_are_the_documented_layout() -> None:
    cdb = bytes([0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0])
    buf = sg.encode_request(cdb, data_in_len=512)
    assert buf[:4] == b"VSG1" and buf[4:16] == struct.pack("<BBHII", 10, sg.FROM_DEVICE, 0, 0, 512)
    req = sg.parse_request(buf)
    assert (req.cdb, req.direction, bytes(req.data_out), req.data_in_len) == (cdb, 2, b"", 512)
    assert sg.decode_response(sg.encode_response(2, b"\x70" + bytes(17), b"abc")) == (
        2,
        b"\x70" + bytes(17),
        b"abc",
    )


@given(st.binary(min_size=6, max_size=32), st.binary(max_size=600))
def test_a_write_round_trips(cdb: bytes, data: bytes) -> None:
    req = sg.parse_request(sg.encode_request(cdb, data))
    assert (
        req.cdb == cdb
        and bytes(req.data_out) == data
        and req.direction == (sg.TO_DEVICE if data else sg.NONE)
    )


@pytest.mark.parametrize(
    "buf",
    [
        b"VSG1",  # short
        b"XXXX" + bytes(12) + bytes(6),  # magic
        sg.encode_request(bytes(5)),  # cdb too short
        sg.encode_request(bytes(6), b"x")[:-1],  # length disagrees
        struct.pack("<IBBHII", sg.MAGIC, 6, sg.NONE, 0, 0, 8) + bytes(6),  # data in without direction 2
        struct.pack("<IBBHII", sg.MAGIC, 6, sg.FROM_DEVICE, 0, 0, sg.MAX_DATA_IN + 1) + bytes(6),
    ],
)
def test_malformed_requests_are_einval(buf: bytes) -> None:
    with pytest.raises(VfsError) as e:
        sg.parse_request(buf)
    assert e.value.errno == errno.EINVAL
