"""The daemon's life — readiness, signals, SIGKILL, stale mounts, two mounts, umount."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import REPO, Mount, run
from vfs.fuse.mountpoint import fuse_mounted, process_alive


def _helper_pids(mountpoint: Path) -> list[int]:
    """auto_unmount's fusermount3 helper processes watching this mount point."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"fusermount3") and os.fsencode(mountpoint) in cmd:
            out.append(int(pid))
    return out


def test_sigterm_wakes_blocked_reader_and_unmounts(mnt: Mount) -> None:
    reader = subprocess.Popen(
        ["cat", str(mnt.p("test/events"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(0.5)
    mnt.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert mnt.proc.wait(10) == 0  # type: ignore[union-attr]
    reader.wait(5)  # the parked reader was answered, not left hanging
    assert not fuse_mounted(str(mnt.path))
    assert "signal SIGTERM: unmounting" in mnt.log_text()


def test_sigkill_leaves_no_hung_clients_and_mount_again(mnt: Mount) -> None:
    os.kill(mnt.pid, signal.SIGKILL)
    mnt.proc.wait(5)  # type: ignore[union-attr]
    r = run(f"timeout 5 ls {mnt.path}")
    assert r.returncode != 124  # answered (empty dir or ENOTCONN), not hung
    deadline = time.monotonic() + 5
    while fuse_mounted(str(mnt.path)) and time.monotonic() < deadline:
        time.sleep(0.05)
    mnt.start()
    assert mnt.p("version").read_text().strip()


def test_stale_mount_is_replaced(mnt: Mount) -> None:
    for pid in _helper_pids(mnt.path):
        os.kill(pid, signal.SIGKILL)  # no auto_unmount cleanup this time
    os.kill(mnt.pid, signal.SIGKILL)
    mnt.proc.wait(5)  # type: ignore[union-attr]
    assert fuse_mounted(str(mnt.path))
    r = run(f"stat {mnt.path}")
    assert "Transport endpoint is not connected" in r.stderr
    mnt.start()
    assert mnt.p("test/value").read_text() == "initial\n"
    assert "replaced a stale mount" in mnt.log_text()


def test_refuses_to_mount_over_a_live_mount(mnt: Mount) -> None:
    r = run(f"{sys.executable} -m vfs mount {mnt.path} --state-dir {mnt.state_dir}x", cwd=REPO)
    assert r.returncode == 1 and f"already mounted (daemon pid {mnt.pid})" in r.stderr


def test_daemonised_mount_status_and_umount(tmp_path: Path, mounts: list[Mount]) -> None:
    target, state = tmp_path / "d", tmp_path / "d-state"
    target.mkdir()
    try:
        r = run(
            f"{sys.executable} -m vfs mount {target} --state-dir {state} --module tests.nodetree", cwd=REPO
        )
        assert r.returncode == 0, r.stderr
        assert "mounted" in r.stdout
        assert (target / "version").read_text().strip()
        r = run(f"{sys.executable} -m vfs status {target}", cwd=REPO)
        assert "mgmt handles (5):" in r.stdout and "devices (0):" in r.stdout and "worlds (0)" in r.stdout
        pid = int(r.stdout.split("pid ")[1].split()[0])
        reader = subprocess.Popen(["cat", str(target / "test/events")], stdout=subprocess.PIPE)
        time.sleep(0.3)
        r = run(f"{sys.executable} -m vfs umount {target}", cwd=REPO)
        assert r.returncode == 0, r.stderr
        assert not fuse_mounted(str(target))
        assert not process_alive(pid)  # umount waited for the daemon to exit
        reader.wait(5)
        assert "unmounted" in (state / "vfs.log").read_text()
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(target)], capture_output=True)


def test_daemon_that_cannot_mount_reports_why(tmp_path: Path, mounts: list[Mount]) -> None:
    r = run(f"{sys.executable} -m vfs mount {tmp_path / 'missing'} --state-dir {tmp_path / 's'}", cwd=REPO)
    assert r.returncode == 1 and "not a directory" in r.stderr


def test_two_mounts_side_by_side(tmp_path: Path, mounts: list[Mount]) -> None:
    a, b = Mount(tmp_path, "a"), Mount(tmp_path, "b")
    mounts += [a, b]
    a.start(), b.start()
    a.p("test/value").write_text("from a\n")
    assert b.p("test/value").read_text() == "initial\n"
    assert a.p("test/value").read_text() == "from a\n"
    assert a.pid != b.pid
    assert f"state_dir {a.state_dir}" in a.p("status").read_text()
    for m in (a, b):  # with several mounts, the commands pick the one the current directory is in
        r = run(
            f"{sys.executable} -m vfs status && {sys.executable} -m vfs keyval -g -i example -k counter",
            cwd=m.p("test"),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert r.returncode == 0, r.stderr
        assert f"pid {m.pid} " in r.stdout and "Key 'counter'" in r.stdout


def test_a_second_daemon_on_the_same_state_dir_is_refused(tmp_path: Path, mounts: list[Mount]) -> None:
    a = Mount(tmp_path, "a")
    mounts.append(a)
    a.start()
    (tmp_path / "b").mkdir()
    for how in ("", "--foreground"):  # refused by the command and by the daemon itself
        r = run(f"{sys.executable} -m vfs mount {how} {tmp_path / 'b'} --state-dir {a.state_dir}", cwd=REPO)
        assert r.returncode == 1, r.stderr
        assert f"state dir {a.state_dir} is in use by the daemon pid {a.pid} serving {a.path}" in r.stderr
    assert not fuse_mounted(str(tmp_path / "b"))
    a.stop()  # the lock goes with the daemon
    b = Mount(tmp_path, "b", state_dir=a.state_dir)
    mounts.append(b)
    b.start()


def test_concurrent_clients_are_served_while_readers_park(mnt: Mount) -> None:
    stop = threading.Event()
    parked = [
        subprocess.Popen(["cat", str(mnt.p("test/events"))], stdout=subprocess.DEVNULL) for _ in range(20)
    ]
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        for _ in range(50):
            assert mnt.p("test/value").read_text() == "initial\n"
        assert time.monotonic() - t0 < 5
    finally:
        stop.set()
        for p in parked:
            p.kill()
            p.wait(5)
