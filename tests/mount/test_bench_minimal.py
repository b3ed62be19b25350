"""The bench's ceiling file (bench/minimal_fs.py) through a real mount: a reference that did
less than it claims would flatter every ratio against it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.targets import minimal


@pytest.fixture
def mini(tmp_path: Path, fuse: None) -> Iterator[Path]:
    with minimal(tmp_path, 1 << 20) as mnt:
        yield mnt


def start_read(fd: int) -> tuple[threading.Thread, list[bytes]]:
    """One read of `fd` on a thread; what it got lands in the list."""
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(os.read(fd, 100)), daemon=True)
    reader.start()
    return reader, got


def test_a_msg_read_waits_for_a_write_and_returns_it(mini: Path) -> None:
    fd = os.open(mini / "msg", os.O_RDONLY)
    try:
        reader, got = start_read(fd)
        reader.join(0.3)
        assert not got  # nothing written yet: the read waits
        (mini / "msg").write_bytes(b"hello")
        reader.join(5)
        assert got == [b"hello"]
    finally:
        os.close(fd)


def test_every_message_written_is_read_once(mini: Path) -> None:
    for text in (b"one", b"two", b"three"):
        (mini / "msg").write_bytes(text)
    fd = os.open(mini / "msg", os.O_RDONLY)
    try:
        for _ in range(3):  # three reads for three writes, each the latest (bench messages are alike)
            reader, got = start_read(fd)
            reader.join(5)
            assert got == [b"three"]
        reader, got = start_read(fd)
        reader.join(0.3)
        assert not got  # all three taken: the fourth read waits...
        (mini / "msg").write_bytes(b"four")
        reader.join(5)
        assert got == [b"four"]  # ...for the fourth write
    finally:
        os.close(fd)
