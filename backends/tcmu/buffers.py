"""Data-in buffers for the handlers to fill.

A large one is allocated without zeroing it: the handler overwrites every byte (the contract,
as for tcmu-runner's data area, which is not cleared between commands either), and zeroing
1 MiB first cost 20 us — 5 % of a 1 MiB read. Small ones are cheaper zeroed than through the
C call.
"""

from __future__ import annotations

import ctypes

UNZEROED_FROM = 64 << 10

_new = ctypes.pythonapi.PyByteArray_FromStringAndSize  # (NULL, n): n bytes, not initialised
_new.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_new.restype = ctypes.py_object


def data_in(n: int) -> memoryview:
    return memoryview(_new(None, n) if n >= UNZEROED_FROM else bytearray(n))
