"""Real clients on a device's data file: mkfs.ext4 + e2fsck, losetup + mount, fio --verify."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Mount, device, fio_verify, run

MiB = 1 << 20


@pytest.mark.parametrize("kind", ["ram", "file"])
def test_mkfs_ext4_then_e2fsck_clean(mnt: Mount, kind: str) -> None:
    config = "ram/" if kind == "ram" else f"file/{mnt.state_dir}/images/fs.img"
    data = device(mnt, "d", config, 256 * MiB)
    r = run(f"mkfs.ext4 -q -F {data}", timeout=300)
    assert r.returncode == 0, r.stderr
    r = run(f"e2fsck -f -n {data}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_loop_mount_copy_tree_and_fsck(mnt: Mount, tmp_path: Path) -> None:
    data = device(mnt, "d", f"file/{mnt.state_dir}/images/loop.img", 128 * MiB)
    assert run(f"mkfs.ext4 -q -F {data}", timeout=300).returncode == 0
    attach = run(f"losetup --find --show {data}")
    if attach.returncode != 0:
        pytest.skip(f"the kernel gave no loop device: {attach.stderr.strip()}")
    loop = attach.stdout.strip()
    target = tmp_path / "fs"
    target.mkdir()
    try:
        r = run(f"mount {loop} {target}")
        assert r.returncode == 0, r.stderr
        try:
            tree = Path(__file__).resolve().parents[2] / "backends"
            shutil.copytree(tree, target / "tree")
            r = run(f"diff -r {tree} {target / 'tree'}")
            assert r.returncode == 0, r.stdout
        finally:
            assert run(f"umount {target}").returncode == 0
    finally:
        run(f"losetup -d {loop}")
    r = run(f"e2fsck -f -n {data}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_fio_verify_randrw(mnt: Mount, tmp_path: Path) -> None:
    data = device(mnt, "d", f"file/{mnt.state_dir}/images/fio.img", 64 * MiB)
    fio_verify(data, tmp_path)
    assert "errors 0" in mnt.p("devices/d/stats").read_text()
    os.sync()
