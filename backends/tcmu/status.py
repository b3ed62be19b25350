"""TCMU_STS_* codes and tcmu's mapping to SAM status and fixed-format sense (libtcmu.c)."""

from __future__ import annotations

from enum import IntEnum


class Sts(IntEnum):
    ASYNC_HANDLED = -2
    NOT_HANDLED = -1
    OK = 0
    NO_RESOURCE = 1
    PASSTHROUGH_ERR = 2
    BUSY = 3
    WR_ERR = 4
    RD_ERR = 5
    MISCOMPARE = 6
    INVALID_CMD = 7
    INVALID_CDB = 8
    INVALID_PARAM_LIST = 9
    INVALID_PARAM_LIST_LEN = 10
    TIMEOUT = 11
    FENCED = 12
    HW_ERR = 13
    RANGE = 14
    FRMT_IN_PROGRESS = 15
    CAPACITY_CHANGED = 16
    NOTSUPP_SAVE_PARAMS = 17
    WR_ERR_INCOMPAT_FRMT = 18
    TRANSITION = 19
    IMPL_TRANSITION_ERR = 20
    EXPL_TRANSITION_ERR = 21
    NO_LOCK_HOLDERS = 22


GOOD = 0x00
CHECK_CONDITION = 0x02
BUSY = 0x08
TASK_SET_FULL = 0x28

# sense keys
NO_SENSE = 0x0
NOT_READY = 0x2
MEDIUM_ERROR = 0x3
HARDWARE_ERROR = 0x4
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
MISCOMPARE_KEY = 0xE

# status -> (SAM status, sense key, ASC, ASCQ); sense only for CHECK CONDITION
SCSI: dict[Sts, tuple[int, int, int, int]] = {
    Sts.OK: (GOOD, 0, 0, 0),
    Sts.NO_RESOURCE: (TASK_SET_FULL, 0, 0, 0),
    Sts.BUSY: (BUSY, 0, 0, 0),
    Sts.TIMEOUT: (BUSY, 0, 0, 0),
    Sts.RANGE: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x21, 0x00),
    Sts.HW_ERR: (CHECK_CONDITION, HARDWARE_ERROR, 0x44, 0x00),
    Sts.MISCOMPARE: (CHECK_CONDITION, MISCOMPARE_KEY, 0x1D, 0x00),
    Sts.RD_ERR: (CHECK_CONDITION, MEDIUM_ERROR, 0x11, 0x00),
    Sts.WR_ERR: (CHECK_CONDITION, MEDIUM_ERROR, 0x0C, 0x00),
    Sts.INVALID_CDB: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x24, 0x00),
    Sts.INVALID_PARAM_LIST: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x26, 0x00),
    Sts.INVALID_PARAM_LIST_LEN: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x1A, 0x00),
    Sts.NOT_HANDLED: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x20, 0x00),
    Sts.INVALID_CMD: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x20, 0x00),
    Sts.CAPACITY_CHANGED: (CHECK_CONDITION, UNIT_ATTENTION, 0x2A, 0x09),
    Sts.TRANSITION: (CHECK_CONDITION, NOT_READY, 0x04, 0x0A),
    Sts.FENCED: (CHECK_CONDITION, NOT_READY, 0x04, 0x0B),
    Sts.IMPL_TRANSITION_ERR: (CHECK_CONDITION, UNIT_ATTENTION, 0x2A, 0x07),
    Sts.EXPL_TRANSITION_ERR: (CHECK_CONDITION, HARDWARE_ERROR, 0x67, 0x0A),
    Sts.WR_ERR_INCOMPAT_FRMT: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x30, 0x05),
    Sts.NOTSUPP_SAVE_PARAMS: (CHECK_CONDITION, ILLEGAL_REQUEST, 0x39, 0x00),
    Sts.FRMT_IN_PROGRESS: (CHECK_CONDITION, NOT_READY, 0x04, 0x04),
    Sts.NO_LOCK_HOLDERS: (CHECK_CONDITION, NOT_READY, 0x04, 0x0B),
}

SENSE_LEN = 18


def fixed_sense(key: int, asc: int, ascq: int, info: int | None = None, progress: int | None = None) -> bytes:
    """Fixed-format sense data (0x70): INFORMATION when `info` is given (VALID bit), and the
    progress indication in the sense-key-specific bytes when `progress` (0..0xFFFF) is."""
    b = bytearray(SENSE_LEN)
    b[0] = 0x70
    b[2] = key & 0x0F
    b[7] = SENSE_LEN - 8
    b[12], b[13] = asc, ascq
    if info is not None:
        b[0] |= 0x80
        b[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    if progress is not None:
        b[15] = 0x80  # SKSV
        b[16:18] = (progress & 0xFFFF).to_bytes(2, "big")
    return bytes(b)


def to_scsi(sts: Sts, info: int | None = None, progress: int | None = None) -> tuple[int, bytes]:
    """(SAM status, sense bytes) for a TCMU status, as tcmu_sts_to_scsi does."""
    status, key, asc, ascq = SCSI.get(sts, (CHECK_CONDITION, HARDWARE_ERROR, 0x44, 0x00))
    if status != CHECK_CONDITION:
        return status, b""
    return status, fixed_sense(key, asc, ascq, info, progress)


class CommandError(Exception):
    """An I/O primitive's failure, carried to the front end with its TCMU status. `recorded`:
    the device's stats already count it (a handler's failure, `Stats.record`); otherwise the
    front end that gives the status counts it, so each failed command counts once."""

    def __init__(self, sts: Sts, info: int | None = None, recorded: bool = False) -> None:
        self.sts = sts
        self.info = info
        self.recorded = recorded
        super().__init__(sts.name)
