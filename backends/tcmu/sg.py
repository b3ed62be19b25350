"""The `scsi` file's binary framing (docs/tcmu.md), little-endian, no I/O.

Request (one write):  u32 magic "VSG1" | u8 cdb_len | u8 direction (0 none, 1 to device,
2 from device) | u16 0 | u32 data_out_len | u32 data_in_len | cdb | data_out
Response (next read): u32 magic | u8 scsi_status | u8 sense_len | u16 0 | u32 data_in_len | sense | data_in
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from errno import EINVAL

from backends.errors import VfsError

MAGIC = 0x31475356  # "VSG1" read as a little-endian u32
REQUEST = struct.Struct("<IBBHII")
RESPONSE = struct.Struct("<IBBHI")
MAX_DATA_IN = 1 << 24
NONE, TO_DEVICE, FROM_DEVICE = 0, 1, 2


@dataclass(frozen=True)
class Request:
    cdb: bytes
    direction: int
    data_out: memoryview
    data_in_len: int


def parse_request(buf: bytes) -> Request:
    if len(buf) < REQUEST.size:
        raise VfsError(EINVAL, f"a scsi request starts with a {REQUEST.size}-byte header")
    magic, cdb_len, direction, zero, out_len, in_len = REQUEST.unpack_from(buf)
    if magic != MAGIC:
        raise VfsError(EINVAL, f"bad magic {magic:#x} (want {MAGIC:#x}, 'VSG1')")
    if zero or direction > FROM_DEVICE:
        raise VfsError(EINVAL, "bad direction or reserved field")
    if not 6 <= cdb_len <= 32:
        raise VfsError(EINVAL, f"cdb_len {cdb_len} is not 6..32")
    if len(buf) != REQUEST.size + cdb_len + out_len:
        raise VfsError(EINVAL, f"request is {len(buf)} bytes, header says {REQUEST.size + cdb_len + out_len}")
    if (direction == TO_DEVICE) != bool(out_len) and out_len:
        raise VfsError(EINVAL, "data_out needs direction 1 (to device)")
    if in_len and direction != FROM_DEVICE or in_len > MAX_DATA_IN:
        raise VfsError(EINVAL, f"data_in needs direction 2 and at most {MAX_DATA_IN} bytes")
    view = memoryview(buf)
    cdb = bytes(view[REQUEST.size : REQUEST.size + cdb_len])
    return Request(cdb, direction, view[REQUEST.size + cdb_len :], in_len)


def encode_response(status: int, sense: bytes, data_in: bytes | memoryview) -> bytes:
    return RESPONSE.pack(MAGIC, status, len(sense), 0, len(data_in)) + bytes(sense) + bytes(data_in)


def encode_request(cdb: bytes, data_out: bytes = b"", data_in_len: int = 0) -> bytes:
    direction = TO_DEVICE if data_out else FROM_DEVICE if data_in_len else NONE
    return REQUEST.pack(MAGIC, len(cdb), direction, 0, len(data_out), data_in_len) + cdb + data_out


def decode_response(buf: bytes) -> tuple[int, bytes, bytes]:
    """(scsi_status, sense, data_in) from a response."""
    if len(buf) < RESPONSE.size:
        raise VfsError(EINVAL, "short scsi response")
    magic, status, sense_len, _, in_len = RESPONSE.unpack_from(buf)
    if magic != MAGIC:
        raise VfsError(EINVAL, "bad response magic")
    sense = buf[RESPONSE.size : RESPONSE.size + sense_len]
    data = buf[RESPONSE.size + sense_len : RESPONSE.size + sense_len + in_len]
    return status, bytes(sense), bytes(data)
