"""SCSI codecs for the engine: CDB fields, INQUIRY/VPD, READ CAPACITY, MODE pages (no I/O)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# opcodes
TEST_UNIT_READY = 0x00
REQUEST_SENSE = 0x03
FORMAT_UNIT = 0x04
READ_6 = 0x08
WRITE_6 = 0x0A
INQUIRY = 0x12
MODE_SELECT_6 = 0x15
MODE_SENSE_6 = 0x1A
START_STOP_UNIT = 0x1B
READ_CAPACITY_10 = 0x25
READ_10 = 0x28
WRITE_10 = 0x2A
WRITE_VERIFY_10 = 0x2E
SYNCHRONIZE_CACHE_10 = 0x35
WRITE_SAME_10 = 0x41
UNMAP = 0x42
MODE_SELECT_10 = 0x55
MODE_SENSE_10 = 0x5A
READ_16 = 0x88
COMPARE_AND_WRITE = 0x89
WRITE_16 = 0x8A
WRITE_VERIFY_16 = 0x8E
SYNCHRONIZE_CACHE_16 = 0x91
WRITE_SAME_16 = 0x93
SERVICE_ACTION_IN_16 = 0x9E
READ_CAPACITY_16_SA = 0x10
READ_12 = 0xA8
WRITE_12 = 0xAA

READS = {READ_6, READ_10, READ_12, READ_16}
WRITES = {WRITE_6, WRITE_10, WRITE_12, WRITE_16}
PERSISTENT_RESERVE_OUT = 0x5F
# Commands whose data goes from the initiator to the device: a ring entry's iovecs say where
# data is, not which way it goes (the CDB says).
DATA_OUT = WRITES | {
    FORMAT_UNIT,
    MODE_SELECT_6,
    MODE_SELECT_10,
    WRITE_VERIFY_10,
    WRITE_VERIFY_16,
    WRITE_SAME_10,
    WRITE_SAME_16,
    UNMAP,
    COMPARE_AND_WRITE,
    PERSISTENT_RESERVE_OUT,
    0x3B,  # WRITE BUFFER
    0x83,  # EXTENDED COPY
}

VENDOR = b"LIO-ORG "
PRODUCT = b"TCMU device     "
REVISION = b"0002"
VPD_PAGES = bytes([0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2])


def cdb_length(opcode: int) -> int | None:
    """The CDB length its group code implies (6, 10, 12, 16), None for variable or reserved."""
    group = opcode >> 5
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(group)


@dataclass(frozen=True, slots=True)
class Rw:
    lba: int
    blocks: int
    fua: bool


def rw_fields(cdb: bytes) -> Rw:
    """LBA, transfer length and FUA of READ/WRITE/VERIFY/WRITE SAME (6/10/12/16)."""
    op = cdb[0]
    if op in (READ_6, WRITE_6):
        lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
        n = cdb[4] or 256  # READ(6)/WRITE(6): 0 means 256 blocks
        return Rw(lba, n, False)
    fua = bool(cdb[1] & 0x08)
    if op >> 5 in (1, 2):  # 10-byte
        lba, n = struct.unpack_from(">IH", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
        return Rw(lba, n, fua)
    if op >> 5 == 5:  # 12-byte
        lba, n = struct.unpack_from(">II", cdb, 2)
        return Rw(lba, n, fua)
    lba, n = struct.unpack_from(">QI", cdb, 2)  # 16-byte
    return Rw(lba, n, fua)


# Version descriptors (SPC-3 table 93): SAM-4, SPC-3, SBC-3. Initiators (libiscsi, sg_inq)
# learn from them which block-limits page to expect.
VERSION_DESCRIPTORS = (0x0080, 0x0300, 0x04C0)
# Commands with RDPROTECT/WRPROTECT/VRPROTECT in byte 1, bits 7-5: without protection
# information (PROTECT=0 in INQUIRY) anything but 0 there is an invalid field (SBC-3 4.22.2).
PROTECT_FIELD = {
    READ_10,
    READ_12,
    READ_16,
    WRITE_10,
    WRITE_12,
    WRITE_16,
    WRITE_VERIFY_10,
    WRITE_VERIFY_16,
    WRITE_SAME_10,
    WRITE_SAME_16,
    COMPARE_AND_WRITE,
}


def standard_inquiry(alloc: int) -> bytes:
    b = bytearray(74)
    b[0] = 0x00  # direct-access block device
    b[2] = 0x05  # SPC-3
    b[3] = 0x02  # response data format 2
    b[4] = len(b) - 5
    b[7] = 0x02  # CmdQue
    b[8:16] = VENDOR
    b[16:32] = PRODUCT
    b[32:36] = REVISION
    for i, code in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", b, 58 + 2 * i, code)
    return bytes(b[:alloc])


def _vpd(page: int, body: bytes) -> bytes:
    return bytes([0x00, page]) + struct.pack(">H", len(body)) + body


def naa6(serial: str) -> bytes:
    """NAA type 6 id: OUI 00-14-05 then the serial's hex digits, as the kernel builds it."""
    digits = [int(c, 16) for c in serial.lower() if c in "0123456789abcdef"]
    b = bytearray(16)
    b[0] = 0x60
    b[1] = 0x01
    b[2] = 0x40
    b[3] = 0x50
    nibble_high = True
    i = 3
    for d in digits[:25]:
        if nibble_high:
            b[i] |= d
            i += 1
            nibble_high = False
        else:
            b[i] = d << 4
            nibble_high = True
        if i >= 16:
            break
    return bytes(b)


def _designator(code_set: int, dtype: int, value: bytes, assoc: int = 0) -> bytes:
    return bytes([code_set, (assoc << 4) | dtype, 0, len(value)]) + value


@dataclass
class Limits:
    """What VPD B0/B1/B2 and READ CAPACITY(16) report."""

    block_size: int
    num_lbas: int
    max_xfer_len: int
    unmap: bool
    max_unmap_len: int
    max_unmap_descs: int
    opt_unmap_gran: int
    unmap_gran_align: int
    solid_state: bool


def vpd_page(page: int, serial: str, cfgstring: str, lim: Limits) -> bytes | None:
    if page == 0x00:
        return _vpd(0x00, VPD_PAGES)
    if page == 0x80:
        return _vpd(0x80, serial.encode())
    if page == 0x83:
        t10 = _designator(0x02, 0x01, VENDOR + serial.encode())
        naa = _designator(0x01, 0x03, naa6(serial))
        vendor_specific = _designator(0x02, 0x00, cfgstring.encode()[:250])
        return _vpd(0x83, t10 + naa + vendor_specific)
    if page == 0xB0:
        b = bytearray(0x3C)
        b[0] = 0x01  # WSNZ
        b[1] = 1  # MAXIMUM COMPARE AND WRITE LENGTH
        struct.pack_into(">I", b, 4, lim.max_xfer_len)  # MAXIMUM TRANSFER LENGTH
        struct.pack_into(">I", b, 8, lim.max_xfer_len)  # OPTIMAL TRANSFER LENGTH
        if lim.unmap:
            struct.pack_into(">I", b, 16, lim.max_unmap_len)
            struct.pack_into(">I", b, 20, lim.max_unmap_descs)
            struct.pack_into(">I", b, 24, lim.opt_unmap_gran)
            struct.pack_into(">I", b, 28, 0x80000000 | lim.unmap_gran_align)  # UGAVALID
        struct.pack_into(">Q", b, 32, 0xFFFFFFFF)  # MAXIMUM WRITE SAME LENGTH
        return _vpd(0xB0, bytes(b))
    if page == 0xB1:
        b = bytearray(0x3C)
        struct.pack_into(">H", b, 0, 1 if lim.solid_state else 0)  # MEDIUM ROTATION RATE
        return _vpd(0xB1, bytes(b))
    if page == 0xB2:
        b = bytearray(4)
        if lim.unmap:
            b[1] = 0x80 | 0x40 | 0x20 | 0x04  # LBPU LBPWS LBPWS10 LBPRZ
        return _vpd(0xB2, bytes(b))
    return None


def read_capacity_10(lim: Limits) -> bytes:
    last = lim.num_lbas - 1
    return struct.pack(">II", last if last < 0xFFFFFFFF else 0xFFFFFFFF, lim.block_size)


def read_capacity_16(lim: Limits) -> bytes:
    b = bytearray(32)
    struct.pack_into(">QI", b, 0, lim.num_lbas - 1, lim.block_size)
    if lim.unmap:
        b[14] = 0xC0  # LBPME, LBPRZ — only when unmapping is really there
    return bytes(b)


def mode_pages(page: int, write_cache: bool, changeable: bool) -> bytes | None:
    """Pages 0x01, 0x08, 0x0A, or all of them for 0x3F; `changeable` gives all-zero masks."""

    def rw_recovery() -> bytes:
        return bytes([0x01, 0x0A]) + bytes(10)

    def caching() -> bytes:
        b = bytearray(20)
        b[0], b[1] = 0x08, 0x12
        if write_cache and not changeable:
            b[2] = 0x04  # WCE
        return bytes(b)

    def control() -> bytes:
        b = bytearray(12)
        b[0], b[1] = 0x0A, 0x0A
        if not changeable:
            b[2] = 0x02  # GLTSD
            b[5] = 0x40  # TAS
            b[8:10] = b"\xff\xff"  # BUSY TIMEOUT PERIOD
        return bytes(b)

    pages = {0x01: rw_recovery, 0x08: caching, 0x0A: control}
    if page == 0x3F:
        return b"".join(make() for make in pages.values())
    make = pages.get(page)
    return make() if make else None


def mode_sense_response(ten: bool, body: bytes) -> bytes:
    dsp = 0x10  # DPOFUA: FUA is honoured
    if ten:
        return struct.pack(">HBBxxH", len(body) + 6, 0, dsp, 0) + body
    return bytes([len(body) + 3, 0, dsp, 0]) + body
