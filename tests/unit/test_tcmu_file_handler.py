"""The `file` handler on a tmp dir, through the command engine, without FUSE: I/O large and
small, flush, unmap as holes, resize, confinement, and the lock tag beside the image."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from backends.errors import VfsError
from backends.tcmu import HandlerContext, Tcmu
from backends.tcmu import scsi as op
from backends.tcmu.handlers.file import FileHandler
from backends.tcmu.status import Sts

MiB = 1 << 20


async def device(images: Path, name: str = "img", size: int = 4 * MiB) -> tuple[Any, Any]:
    core = Tcmu(lambda fn, *a: None)
    core.register_handler(FileHandler(HandlerContext(image_dirs=[images])))
    dev = core.create_device("d")
    await dev.set_config(f"file/{images}/{name}")
    await dev.set_size(str(size))
    await core.enable(dev)
    return core, dev


def rw16(op: int, lba: int, n: int) -> bytes:
    return struct.pack(">BBQIBB", op, 0, lba, n, 0, 0)


async def test_io_reaches_the_image_small_inline_and_large_in_threads(tmp_path: Path) -> None:
    core, dev = await device(tmp_path)
    small, large = os.urandom(4096), os.urandom(256 << 10)  # inline, and past INLINE_MAX
    assert (await dev.engine.execute(rw16(op.WRITE_16, 8, 8), small)).status == 0
    assert (await dev.engine.execute(rw16(op.WRITE_16, 1024, 512), large)).status == 0
    assert (await dev.engine.execute(bytes([op.SYNCHRONIZE_CACHE_10]) + bytes(9))).status == 0
    image = (tmp_path / "img").read_bytes()
    assert image[4096:8192] == small and image[512 << 10 : (512 << 10) + len(large)] == large
    r = await dev.engine.execute(rw16(op.READ_16, 1024, 512), b"", len(large))
    assert r.status == 0 and bytes(r.data) == large
    await core.disable(dev)


async def test_at_once_io_for_the_kernels_ring(tmp_path: Path) -> None:
    core, dev = await device(tmp_path)
    data = os.urandom(8192)
    assert dev.engine.rw_now(True, 16, 16, [memoryview(bytearray(data))], 8192) is Sts.OK
    assert (tmp_path / "img").read_bytes()[8192:16384] == data
    os.truncate(tmp_path / "img", 12288)  # cut from outside: what is gone reads as zeros
    got = bytearray(8192)
    assert dev.engine.rw_now(False, 16, 16, [memoryview(got)[:4096], memoryview(got)[4096:]], 8192) is Sts.OK
    assert got == data[:4096] + bytes(4096)
    # A long one on a disk goes at once only where the page cache has all of it.
    fd = dev.private.fd
    os.pwrite(fd, os.urandom(256 << 10), 1 << 20)
    os.fsync(fd)
    os.posix_fadvise(fd, 1 << 20, 256 << 10, os.POSIX_FADV_DONTNEED)
    big = memoryview(bytearray(256 << 10))
    assert dev.engine.rw_now(False, 2048, 512, [big], len(big)) is None  # the threads wait for it
    r = await dev.engine.execute(rw16(op.READ_16, 2048, 512), b"", len(big))
    assert r.status == 0
    assert dev.engine.rw_now(False, 2048, 512, [big], len(big)) is Sts.OK and big == r.data  # cached now
    assert dev.engine.rw_now(False, 16, 15, [memoryview(got)], 8192) is None  # lengths disagree
    assert dev.stats.ops["write"] == 1 and dev.stats.ops["read"] == 3
    await core.disable(dev)


async def test_unmap_punches_holes_and_resize_truncates(tmp_path: Path) -> None:
    core, dev = await device(tmp_path)
    await dev.engine.execute(rw16(op.WRITE_16, 0, 2048), os.urandom(MiB))
    desc = struct.pack(">QI4x", 0, 2048)
    params = struct.pack(">HH4x", len(desc) + 6, len(desc)) + desc
    assert (
        await dev.engine.execute(struct.pack(">BBxxxxxHB", op.UNMAP, 0, len(params), 0), params)
    ).status == 0
    assert (tmp_path / "img").read_bytes()[:MiB] == bytes(MiB)
    assert os.stat(tmp_path / "img").st_blocks * 512 < MiB  # a hole, not written zeros
    await dev.set_size(str(8 * MiB))
    assert os.stat(tmp_path / "img").st_size == 8 * MiB
    await core.disable(dev)


async def test_confined_to_the_image_dirs(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "link").symlink_to(tmp_path)
    core = Tcmu(lambda fn, *a: None)
    core.register_handler(FileHandler(HandlerContext(image_dirs=[images])))
    dev = core.create_device("d")
    for config, code in (
        ("file//etc/passwd", errno.EACCES),
        (f"file/{images}/../x", errno.EACCES),
        (f"file/{images}/link/x", errno.EACCES),
        ("file/relative", errno.EINVAL),
    ):
        with pytest.raises(VfsError) as e:
            await dev.set_config(config)
        assert e.value.errno == code, config


async def test_the_lock_tag_lives_with_the_image(tmp_path: Path) -> None:
    core, dev = await device(tmp_path)
    h = dev.handler
    assert h.lock(dev, 7) == 0
    assert h.get_lock_tag(dev) == (0, 7)
    (tmp_path / "img.vfs-lock").unlink(missing_ok=True)
    os.symlink("/etc/passwd", tmp_path / "img.vfs-lock")  # planted: must not be written through
    h.unlock(dev)
    assert open("/etc/passwd").read().startswith("root")
    await core.disable(dev)
