"""vmkapi return statuses and their official errno mapping (vmkapi_status.h)."""

from __future__ import annotations

import errno
from enum import IntEnum, auto

from backends.errors import VfsError


class Status(IntEnum):
    """Statuses by name. Only OK's value (0) matters to callers; the rest map to errnos below."""

    OK = 0
    FAILURE = auto()
    WOULD_BLOCK = auto()
    NOT_FOUND = auto()
    BUSY = auto()
    EXISTS = auto()
    LIMIT_EXCEEDED = auto()
    BAD_PARAM = auto()
    INVALID_NAME = auto()
    NAME_TOO_LONG = auto()
    INVALID_HANDLE = auto()
    NO_MEMORY = auto()
    NO_RESOURCES = auto()
    NO_FREE_HANDLES = auto()
    NOT_SUPPORTED = auto()
    NOT_IMPLEMENTED = auto()
    TIMEOUT = auto()
    READ_ONLY = auto()
    NO_ACCESS = auto()
    NO_PERMISSION = auto()
    NOT_READY = auto()
    DEATH_PENDING = auto()
    NO_SPACE = auto()


ERRNO: dict[Status, int] = {
    Status.OK: 0,
    Status.FAILURE: errno.EINVAL,
    Status.WOULD_BLOCK: errno.EAGAIN,
    Status.NOT_FOUND: errno.ENOENT,
    Status.BUSY: errno.EBUSY,
    Status.EXISTS: errno.EEXIST,
    Status.LIMIT_EXCEEDED: errno.EFBIG,
    Status.BAD_PARAM: errno.EINVAL,
    Status.INVALID_NAME: errno.ENAMETOOLONG,
    Status.NAME_TOO_LONG: errno.ENAMETOOLONG,
    Status.INVALID_HANDLE: errno.EBADF,
    Status.NO_MEMORY: errno.ENOMEM,
    Status.NO_RESOURCES: errno.ENOMEM,
    Status.NO_FREE_HANDLES: errno.EMFILE,
    Status.NOT_SUPPORTED: errno.ENOSYS,
    Status.NOT_IMPLEMENTED: errno.ENOSYS,
    Status.TIMEOUT: errno.ETIMEDOUT,
    Status.READ_ONLY: errno.EROFS,
    Status.NO_ACCESS: errno.EACCES,
    Status.NO_PERMISSION: errno.EPERM,
    Status.NOT_READY: errno.EIO,
    Status.DEATH_PENDING: errno.ENOENT,
    Status.NO_SPACE: errno.ENOSPC,
}


class MgmtError(VfsError):
    """A vmkapi status with a reason; its errno follows the official table."""

    def __init__(self, status: Status, reason: str) -> None:
        self.status = status
        super().__init__(ERRNO[status], reason)


def status_of(error: VfsError) -> Status:
    """The vmkapi status for an error a module raised (the table, read backwards)."""
    if isinstance(error, MgmtError):
        return error.status
    for status, code in ERRNO.items():
        if code == error.errno and status is not Status.OK:
            return status
    return Status.FAILURE
