"""Hostile input replayed through a real mount: oversized and split writes, parser bombs, numbers
and sizes out of range. Each gets a clear errno and a reason, and nothing reaches the log as
an internal error."""

from __future__ import annotations

import errno
import os
import resource
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mount, wait_for

MiB = 1 << 20


def refused(path: os.PathLike[str] | str, data: bytes) -> OSError:
    fd = os.open(path, os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, data)
        return e.value
    finally:
        os.close(fd)


def no_internal_errors(mnt: Mount) -> None:
    log = mnt.log_text()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]


def test_a_request_is_one_write_or_nothing(mnt: Mount) -> None:
    """Writes over 1 MiB reach the daemon in pieces: a 2 MiB request ran as two requests and a
    value kept its first piece. Both are refused whole now, before any parsing."""
    before = mnt.p("mgmt/example/keys/message").read_text()
    e = refused(mnt.p("mgmt/example/keys/message"), b"x" * (2 * MiB))
    assert e.errno == errno.EFBIG
    assert mnt.p("mgmt/example/keys/message").read_text() == before  # nothing stored
    assert "one write of at most" in mnt.p("mgmt/example/last_error").read_text()
    fd = os.open(mnt.p("mgmt/example/call"), os.O_RDWR)
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as err:
            os.write(fd, b"add 1 " + b"2" * MiB)
        assert err.value.errno == errno.EFBIG and time.monotonic() - t0 < 1
        assert b"one write of at most" in os.read(fd, 4096)  # the answer on the fd says why
    finally:
        os.close(fd)
    no_internal_errors(mnt)


def test_parser_bombs_are_refused_quickly_with_reasons(mnt: Mount) -> None:
    fd = os.open(mnt.p("mgmt/example/call"), os.O_RDWR)
    try:
        for bomb, why in (
            (b'{"callback":"add","params":' + b"[" * 60000 + b"]" * 60000 + b"}", b"nested too deeply"),
            (b'add "' + b"a" * 120000 + b'"', b"add"),  # one long quoted word: linear now
            (b"add " + b"1" * 5000 + b" 2", b"out of range"),
        ):
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                os.write(fd, bomb)
            assert e.value.errno in (errno.EINVAL, errno.ERANGE, errno.E2BIG)
            assert time.monotonic() - t0 < 0.5
            assert why in os.read(fd, 4096)
    finally:
        os.close(fd)
    r = mnt.sh("echo " + "9" * 4000 + " > mgmt/example/keys/counter")  # bash writes 4 KiB at a time
    assert r.returncode != 0, r.stderr
    assert "out of range" in mnt.p("mgmt/example/last_error").read_text()
    no_internal_errors(mnt)


def test_sizes_no_backstore_can_hold_are_refused_with_reasons(mnt: Mount) -> None:
    r = mnt.sh(
        "mkdir devices/r devices/f devices/big && echo ram/ > devices/r/config && echo 1048576 > devices/r/size"
        f" && echo 1 > devices/r/enable && echo file/{mnt.state_dir}/images/f.img > devices/f/config"
        " && echo 1048576 > devices/f/size && echo 1 > devices/f/enable"
    )
    assert r.returncode == 0, r.stderr
    for dev, size, code in (
        ("r", 1 << 50, errno.EINVAL),
        ("r", (1 << 63) - 512, errno.EINVAL),
        ("f", 1 << 50, errno.EFBIG),
    ):
        e = refused(mnt.p(f"devices/{dev}/size"), f"{size}\n".encode())
        assert e.errno == code, (dev, size, e)
        assert "could not change the size" in mnt.p(f"devices/{dev}/last_error").read_text()
        assert mnt.p(f"devices/{dev}/size").read_text() == "1048576\n"
    assert (
        mnt.sh("echo ram/ > devices/big/config && echo 1125899906842624 > devices/big/size").returncode == 0
    )
    e = refused(mnt.p("devices/big/enable"), b"1\n")
    assert e.errno == errno.ENOMEM and "cannot open" in mnt.p("devices/big/last_error").read_text()
    no_internal_errors(mnt)


def test_the_log_rotates(tmp_path: Path, mounts: list[Mount]) -> None:
    """A fuzz run left a 113 MB log: each refusal logged the whole request, nothing rotated."""
    log = tmp_path / "vfs.log"
    m = Mount(tmp_path, extra=("--log-file", str(log), "--log-max-bytes", "65536"))
    mounts.append(m)
    m.start()
    fd = os.open(m.p("mgmt/example/keys/counter"), os.O_WRONLY)
    try:
        for _ in range(5000):  # each refusal is a record of ~120 bytes: 600 KB in all
            with pytest.raises(OSError):
                os.write(fd, b"z" * 100)
    finally:
        os.close(fd)
    files = sorted(tmp_path.glob("vfs.log*"))
    assert [f.name for f in files] == ["vfs.log", *(f"vfs.log.{i}" for i in range(1, 6))]
    assert all(f.stat().st_size <= 65536 for f in files)
    assert "zzz...zzz" in log.read_text()  # the reason quotes the value shortened


def test_parked_readers_beyond_the_old_worker_cap_starve_no_one(mnt: Mount) -> None:
    """1,200 readers parked on `events` made `cat status` take 1-2 s: each held one of 1,000
    workers. Parked readers are bounded by memory now, and a parked reader costs nothing
    until it has cause to wake (a signal, data, the shutdown)."""
    n = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + 100:
        pytest.skip(f"{n} readers need {n} descriptors; the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n + 100), hard))
    old_stack = threading.stack_size(64 << 10)  # 10,000 threads that only read
    fds = [os.open(mnt.p("mgmt/example/events"), os.O_RDONLY) for _ in range(n)]
    threads = [threading.Thread(target=_read_quietly, args=(fd,), daemon=True) for fd in fds]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: f"parked_waits {n}\n" in mnt.p("status").read_text(), timeout=60)
        for _ in range(10):
            t0 = time.monotonic()
            assert "version" in mnt.p("status").read_text()
            assert time.monotonic() - t0 < 0.5
        mnt.p("mgmt/example/keys/message").write_text("wake")  # every reader gets it and ends
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert "lost_wakeups 0\n" in mnt.p("status").read_text()
    finally:
        threading.stack_size(old_stack)
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _read_quietly(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except OSError:
        pass
