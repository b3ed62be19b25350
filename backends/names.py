"""Object names, shared by every core and the face: 1–31 bytes of [A-Za-z0-9_.-] (README)."""

from __future__ import annotations

import re
from errno import EINVAL, ENAMETOOLONG

from backends.errors import VfsError

NAME_MAX = 31  # vmk_Name is 32 bytes with its NUL
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(name: str, what: str = "name") -> None:
    if len(name.encode()) > NAME_MAX:
        raise VfsError(ENAMETOOLONG, f"{what} longer than {NAME_MAX} bytes: {name!r}")
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise VfsError(EINVAL, f"bad {what} {name!r}: use A-Z a-z 0-9 _ . - and do not start with '.'")
