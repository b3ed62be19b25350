"""mountscripts/: the fstab helper, the systemd unit (readiness), the bind-mount helper."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Mount, run
from vfs.fuse.mountpoint import fuse_mounted

SCRIPTS = REPO / "mountscripts"
HELPER_PATH = Path("/sbin/mount.fuse.vfs")


def _vfs_bin(tmp_path: Path) -> str:
    """A `vfs` command that runs this checkout with the test-only tree loaded."""
    wrapper = tmp_path / "vfs-under-test"
    wrapper.write_text(f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m vfs "$@" --module tests.nodetree\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _umount(path: Path) -> None:
    run(f"{sys.executable} -m vfs umount {path}", cwd=REPO)
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


def test_fstab_helper_with_mount_argument_convention(tmp_path: Path, mounts: list[Mount]) -> None:
    target, state = tmp_path / "fst", tmp_path / "fst-state"
    target.mkdir()
    try:
        r = run(
            f"VFS_BIN={_vfs_bin(tmp_path)} {SCRIPTS}/mount.fuse.vfs {state} {target} "
            f"-o rw,nofail,log_level=debug,image_dir={tmp_path}/imgs,x-systemd.automount"
        )
        assert r.returncode == 0, r.stderr
        assert f"state_dir {state}" in (target / "status").read_text()  # SOURCE became the state dir
        assert (tmp_path / "imgs").is_dir()
        assert (target / "test/value").read_text() == "initial\n"
    finally:
        _umount(target)
    assert not fuse_mounted(str(target))


@pytest.fixture
def installed_helper(tmp_path: Path) -> Iterator[None]:
    """mount(8) only looks in /sbin: put the helper there for this test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) with fstab helpers needs root")
    placed = not HELPER_PATH.exists()
    if placed:
        shutil.copy(SCRIPTS / "mount.fuse.vfs", HELPER_PATH)
    yield
    if placed:
        HELPER_PATH.unlink()


def test_real_mount_command_uses_the_helper(
    tmp_path: Path, mounts: list[Mount], installed_helper: None
) -> None:
    target, state = tmp_path / "mt", tmp_path / "mt-state"
    target.mkdir()
    try:
        r = run(
            f"VFS_BIN={_vfs_bin(tmp_path)} mount -t fuse.vfs -o state_dir={state},allow_other vfs {target}"
        )
        assert r.returncode == 0, r.stderr
        assert (target / "version").read_text().strip()
        assert "allow_other" in Path("/proc/self/mounts").read_text().split(str(target))[1].split("\n")[0]
    finally:
        _umount(target)


def test_daemon_tells_systemd_when_ready(tmp_path: Path, mounts: list[Mount]) -> None:
    sock_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(sock_path)
        sock.settimeout(20)
        m = Mount(tmp_path)
        mounts.append(m)
        env = {**os.environ, "NOTIFY_SOCKET": sock_path}
        with open(m.log, "ab") as log:
            m.proc = subprocess.Popen(m.argv(), cwd=REPO, env=env, stdout=log, stderr=log)
        message = sock.recv(4096).decode()
        assert "READY=1" in message and f"MAINPID={m.proc.pid}" in message
        assert (m.path / "version").read_text().strip()  # ready means the mount answers
        m.proc.terminate()
        assert m.proc.wait(10) == 0
        assert "STOPPING=1" in sock.recv(4096).decode()


def test_systemd_unit_is_valid(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: .ci/run installs systemd")
    unit = tmp_path / "vfs@mnt-vfs.service"
    shutil.copy(SCRIPTS / "vfs@.service", unit)
    r = run(f"PATH={Path(sys.executable).parent}:$PATH systemd-analyze verify {unit}")
    assert r.returncode == 0, r.stderr
    text = unit.read_text()
    assert "Type=notify" in text and "--foreground" in text


def test_bind_helper_into_a_new_mount_namespace(mnt: Mount, tmp_path: Path) -> None:
    inside = tmp_path / "container-view"
    inside.mkdir()
    r = run(
        f"{SCRIPTS}/vfs-bind --unshare {mnt.p('test')} {inside} -- "
        f"bash -c 'cat {inside}/value; echo from-ns > {inside}/value; ls {inside} | head -3'"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["initial", "action", "boom", "data"]
    assert os.listdir(inside) == []  # the bind exists only in that namespace
    assert mnt.p("test/value").read_text() == "from-ns\n"


def test_bind_helper_onto_a_container_root(mnt: Mount, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "run/vfs").mkdir(parents=True)
    # unshare -m stands in for the container: the bind is made and used inside it
    r = run(
        f"VFS_BINDS={tmp_path}/binds unshare -m --propagation private bash -c "
        f"'{SCRIPTS}/vfs-bind --ro {mnt.p('test')} {rootfs}/run/vfs && "
        f"cat {rootfs}/run/vfs/value && echo x > {rootfs}/run/vfs/value'"
    )
    assert r.stdout == "initial\n"
    assert "Read-only file system" in r.stderr
    r = run(f"{SCRIPTS}/vfs-bind {tmp_path} {rootfs}")
    assert r.returncode == 1 and "not inside a vfs mount" in r.stderr
