"""The daemon's malloc tuning: a freed 4 MiB request buffer stays in the heap for the next one."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO

PROBE = """
import ctypes
from vfs import heap

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
if {apply}:
    assert heap.keep_freed_buffers()
before = libc.mallinfo2().hblks
buf = bytearray(4 << 20)
mapped = libc.mallinfo2().hblks - before  # served by a mapping of its own?
del buf
print(mapped, libc.mallinfo2().fordblks >= 4 << 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_freed_request_buffers_stay_in_the_heap() -> None:
    def probe(apply: bool) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-c", PROBE.format(apply=apply)], cwd=REPO, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    assert probe(False) == ["1", "False"]  # glibc's default: its own mapping, unmapped when freed
    assert probe(True) == ["0", "True"]  # tuned: from the heap, and kept there once freed
