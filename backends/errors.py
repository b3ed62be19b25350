"""The one error type cores raise: an errno plus a reason a person can read.

The FUSE face turns it into the errno for the request and the reason into the object's
`last_error`; a bare errno is not enough for a person (README: how every file behaves).
"""

from __future__ import annotations

import errno as _errno
import os


class VfsError(Exception):
    """A refused or failed operation: `errno` for the kernel, `reason` for people."""

    def __init__(self, errno: int, reason: str = "") -> None:
        self.errno = errno
        self.reason = reason or os.strerror(errno)
        super().__init__(f"[{_errno.errorcode.get(errno, errno)}] {self.reason}")
