"""File handles of a vfs mount: forged ones fail, and vfs-bind's namespace cannot use any."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from pathlib import Path

from tests.conftest import REPO, Mount, run

AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


class FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def handle_of(path: Path) -> tuple[int, bytes]:
    fh = FileHandle(128, 0)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        raise OSError(ctypes.get_errno(), "name_to_handle_at")
    return fh.handle_type, bytes(fh.f_handle[: fh.handle_bytes])


def open_by_handle(mount_fd: int, kind: int, data: bytes) -> int:
    fh = FileHandle(len(data), kind)
    ctypes.memmove(fh.f_handle, data, len(data))
    fd = _libc.open_by_handle_at(mount_fd, ctypes.byref(fh), os.O_RDONLY | os.O_DIRECTORY)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "open_by_handle_at")
    return int(fd)


def test_forged_handles_with_guessed_generations_fail(mnt: Mount) -> None:
    assert mnt.sh("mkdir devices/d channels/c").returncode == 0
    kind, data = handle_of(mnt.p("devices/d"))
    hi, lo, generation = struct.unpack_from("<III", data)
    assert generation not in (0, 1)  # random, not 0 for every inode
    mount_fd = os.open(mnt.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(open_by_handle(mount_fd, kind, data))  # the real one opens (as root, with the cap)
        for guess in (0, 1, generation ^ 0x10):
            forged = struct.pack("<III", hi, lo, guess) + data[12:]
            try:
                os.close(open_by_handle(mount_fd, kind, forged))
                raise AssertionError(f"generation {guess} opened devices/d")
            except OSError as e:
                assert e.errno == errno.ESTALE
    finally:
        os.close(mount_fd)


def test_vfs_bind_namespace_has_no_handles_and_no_daemon_in_proc(mnt: Mount, tmp_path: Path) -> None:
    """Inside vfs-bind --unshare, only the bound end is reachable: the root's handle (nodeid 1,
    generation 0 — the kernel's, known to anyone) opens nothing without CAP_DAC_READ_SEARCH,
    and /proc has no daemon whose root would lead back into the mount."""
    assert mnt.sh("mkdir channels/c").returncode == 0
    kind, data = handle_of(mnt.path)
    inside = tmp_path / "end"
    inside.mkdir()
    script = tmp_path / "probe.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.real.test_bind_escape import open_by_handle\n"
        f"fd = os.open({str(inside)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
        "try:\n"
        f"    os.close(open_by_handle(fd, {kind}, bytes.fromhex({data.hex()!r})))\n"
        "    print('opened')\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
        f"print(os.path.exists('/proc/{mnt.pid}'), open({str(inside / 'state')!r}).read().strip())\n"
    )
    r = run(
        f"{REPO}/mountscripts/vfs-bind --unshare {mnt.p('channels/c/listener')} {inside} -- {sys.executable} {script}"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(errno.EPERM), "False", "unready"]
