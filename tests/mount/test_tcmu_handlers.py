"""Handlers loaded and unloaded while the daemon runs, and tcmu-runner's completion models for
handle_cmd, from a real mount: echo, rmdir, dd, cmp and `vfs scsi`."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Mount, vfs_scsi


@pytest.mark.parametrize("spec,subtype", [("SyncPassthrough", "syncpt"), ("ThreadedAsync", "asyncpt")])
def test_a_loaded_handle_cmd_handler_serves_and_unloads(mnt: Mount, spec: str, subtype: str) -> None:
    assert oct(os.stat(mnt.p("handlers", "load")).st_mode & 0o777) == "0o200"  # it imports code: root's
    r = mnt.sh(f"echo tests.tcmu_handlers:{spec} > handlers/load")
    assert r.returncode == 0, r.stderr
    assert subtype in os.listdir(mnt.p("handlers"))
    assert mnt.p("handlers", subtype, "ops").read_text().split() == ["handle_cmd"]
    r = mnt.sh(
        f"mkdir devices/p && echo {subtype}/ > devices/p/config && echo 1048576 > devices/p/size "
        "&& echo 1 > devices/p/enable"
    )
    assert r.returncode == 0, r.stderr
    assert vfs_scsi(mnt, "p", "tur", timeout=10) == {"status": "GOOD"}  # OK from handle_cmd: done, not a hang
    r = mnt.sh(
        "head -c 65536 /dev/urandom > ../r.bin && dd if=../r.bin of=devices/p/data bs=4k conv=notrunc "
        "status=none && timeout 10 cmp -n 65536 ../r.bin devices/p/data"
    )
    assert r.returncode == 0, r.stderr
    busy = mnt.sh(f"rmdir handlers/{subtype}")
    assert busy.returncode != 0 and "busy" in busy.stderr.lower()
    assert f"handler {subtype} serves p" in mnt.log_text()
    assert mnt.sh(f"echo 0 > devices/p/enable && rmdir handlers/{subtype}").returncode == 0
    assert subtype not in os.listdir(mnt.p("handlers"))
    refused = mnt.sh("echo 1 > devices/p/enable")
    assert refused.returncode != 0


def test_loading_is_remembered_and_bad_specs_are_refused(tmp_path: Path, mounts: list[Mount]) -> None:
    m = Mount(tmp_path)
    mounts.append(m.start())
    for bad, why in (
        ("nosuch.module:X", "cannot load nosuch.module:X"),
        ("os:path", "is not a Handler class"),
        ("nonsense", "no vfs.handlers entry point"),
        ("backends.tcmu.handlers.ram:RamHandler", "already registered"),
    ):
        r = m.sh(f"echo {bad} > handlers/load")
        assert r.returncode != 0, bad
        assert why in m.log_text(), why
    assert m.sh("echo tests.tcmu_handlers:SyncPassthrough > handlers/load").returncode == 0
    m.stop()
    again = Mount(tmp_path, state_dir=m.state_dir)
    mounts.append(again.start())
    assert "syncpt" in os.listdir(again.p("handlers"))
    assert sorted(os.listdir(again.p("handlers"))) == ["file", "load", "nbd", "qcow", "ram", "rbd", "syncpt"]


def flaky_device(mnt: Mount, tmp_path: Path) -> Path:
    """devices/f, enabled, on the Flaky handler; the path whose presence keeps it reachable."""
    up = tmp_path / "up"
    up.touch()
    assert mnt.sh("echo tests.tcmu_handlers:Flaky > handlers/load").returncode == 0
    r = mnt.sh(
        f"mkdir devices/f && echo flaky/{up} > devices/f/config && echo 1048576 > devices/f/size "
        "&& echo 1 > devices/f/enable"
    )
    assert r.returncode == 0, r.stderr
    return up


def test_a_lost_connection_is_reported_and_the_device_reopens(mnt: Mount, tmp_path: Path) -> None:
    up = flaky_device(mnt, tmp_path)
    assert mnt.sh("printf kept | dd of=devices/f/data conv=notrunc status=none").returncode == 0
    events = subprocess.Popen(
        ["cat", str(mnt.p("devices", "f", "events"))], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        assert events.stdout is not None
        up.unlink()  # the backend stops answering
        assert json.loads(events.stdout.readline())["event"] == "conn_lost"
        busy = mnt.sh("dd if=devices/f/data of=/dev/null bs=4k count=1 iflag=direct status=none")
        assert busy.returncode != 0 and "busy" in busy.stderr.lower(), busy.stderr
        assert "recovering 1" in mnt.p("devices", "f", "status").read_text()
        up.touch()  # it is back: the next attempt opens
        reopened = json.loads(events.stdout.readline())
        assert reopened["event"] == "reopened" and reopened["attempts"] >= 2
        assert mnt.p("devices", "f", "data").read_bytes()[:4] == b"kept"
        (tmp_path / "up.lock-lost").touch()  # another client took the lock
        assert json.loads(events.stdout.readline())["event"] == "lock_lost"
    finally:
        events.kill()
        events.wait()
    assert "lost its connection; reopening" in mnt.log_text() and "reopened after" in mnt.log_text()
    assert mnt.sh("echo 0 > devices/f/enable").returncode == 0


def test_a_failed_command_counts_once_in_errors(mnt: Mount, tmp_path: Path) -> None:
    flaky_device(mnt, tmp_path)

    def errors() -> int:
        stats = dict(line.split() for line in mnt.p("devices", "f", "stats").read_text().splitlines())
        return int(stats["errors"])

    def read16(lba: int) -> str:
        cdb = struct.pack(">BBQIBB", 0x88, 0, lba, 1, 0, 0).hex(" ")
        return str(vfs_scsi(mnt, "f", "raw", cdb, "--in", "512")["status"])

    (tmp_path / "up.bad-reads").touch()
    counts = [(read16(0), errors())]  # the handler fails it
    failed = mnt.sh("dd if=devices/f/data of=/dev/null bs=4k count=1 iflag=direct status=none")
    counts.append(
        ("EIO" if "Input/output error" in failed.stderr else failed.stderr, errors())
    )  # the data file
    (tmp_path / "up.bad-reads").unlink()
    counts.append((read16(2048), errors()))  # past the end: refused before the handler
    counts.append((read16(0), errors()))
    assert counts == [("CHECK CONDITION", 1), ("EIO", 2), ("CHECK CONDITION", 3), ("GOOD", 3)]


def test_a_fresh_mount_lists_rbd_and_nbd_without_loading_their_libraries(mnt: Mount) -> None:
    # librados, librbd and libnbd add about 25 MiB of resident memory: a daemon pays for them
    # when a device first uses them, not for listing the handlers.
    listed = os.listdir(mnt.p("handlers"))
    for subtype, module in [("rbd", "rbd"), ("nbd", "nbd")]:
        assert (subtype in listed) == (importlib.util.find_spec(module) is not None)
    maps = Path(f"/proc/{mnt.pid}/maps").read_text()
    assert not [lib for lib in ("librados.so", "librbd.so", "libnbd.so") if lib in maps]


def test_a_binding_that_does_not_load_fails_the_enable_with_its_reason(
    tmp_path: Path, mounts: list[Mount], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "fake-binding"
    fake.mkdir()
    (fake / "nbd.py").write_text("raise ImportError('libnbd.so.0: cannot open shared object file')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))  # found before Debian's, as a broken install is
    m = Mount(tmp_path)
    mounts.append(m.start())
    assert "nbd" in os.listdir(m.p("handlers"))
    r = m.sh(
        "mkdir devices/n && echo nbd/nbd://127.0.0.1:9 > devices/n/config && echo 1048576 > devices/n/size "
        "&& echo 1 > devices/n/enable"
    )
    assert r.returncode != 0 and os.strerror(errno.ELIBACC) in r.stderr, r.stderr
    assert "libnbd.so.0" in m.p("devices", "n", "last_error").read_text()
    assert m.sh("cat status").returncode == 0  # the mount goes on
