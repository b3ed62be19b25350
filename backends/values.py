"""Text values shared by every core: integers as people write them."""

from __future__ import annotations

import reprlib
from errno import EINVAL, ERANGE

from backends.errors import VfsError


def parse_int(text: str, what: str = "value") -> int:
    """Decimal, or 0x hex, with an optional sign — and nothing else (no spaces, no suffix)."""
    body = text[1:] if text[:1] in "+-" else text
    hexa = body[:2] in ("0x", "0X") and len(body) > 2 and all(c in "0123456789abcdefABCDEF" for c in body[2:])
    if not hexa and not (body.isdigit() and body.isascii()):
        raise VfsError(EINVAL, f"{what}: {reprlib.repr(text)} is not a decimal or 0x-hex integer")
    if len(body) > 40:  # more than any 128-bit number; int() would refuse 4,300 digits itself
        raise VfsError(ERANGE, f"{what}: {len(body)} digits is out of range")
    value = int(body[2:], 16) if hexa else int(body, 10)
    return -value if text.startswith("-") else value


def parse_bool(text: str, what: str = "value") -> bool:
    if text in ("1", "0"):
        return text == "1"
    raise VfsError(EINVAL, f"{what} is 1 or 0, not {text!r}")
