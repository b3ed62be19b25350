"""The `nbd` and `qcow` handlers against the real servers: nbdkit (memory and file plugins, on a
Unix socket and over TCP), qemu-storage-daemon, and qemu-img reading what the `qcow` handler
left in its image. Clients are dd, cmp, mkfs.ext4, e2fsck, fio and nbdcopy."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.tcmu.handlers.nbd import UNIX_SNDBUF, _widen
from tests.conftest import Mount, device, fio_verify, rss_kib, run, wait_for

MiB = 1 << 20
pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdkit", "nbdcopy", "qemu-storage-daemon", "qemu-img")),
    reason="needs nbdkit, libnbd-bin, qemu-system-common and qemu-utils (setup-debian --test)",
)


class Server:
    """A server process started by a test; stopped (and its socket gone) at the end."""

    def __init__(self, argv: list[str], socket_path: Path | None = None, port: int = 0) -> None:
        self.socket_path = socket_path
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if socket_path is not None:
            wait_for(lambda: socket_path.exists() or self.proc.poll() is not None, 10)
        else:
            wait_for(lambda: _listening(port) or self.proc.poll() is not None, 10)
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.kill()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nbdkit(servers: list[Server], sock: Path, *plugin: str) -> Server:
    server = Server(["nbdkit", "-f", "--exit-with-parent", "-U", str(sock), *plugin], socket_path=sock)
    servers.append(server)
    return server


def _mapped(mnt: Mount, library: str) -> bool:
    return library in Path(f"/proc/{mnt.pid}/maps").read_text()


def images(mnt: Mount) -> Path:
    d = mnt.state_dir / "images"
    d.mkdir(parents=True, exist_ok=True)
    return d


def events(mnt: Mount, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", str(mnt.p("devices", name, "events"))], stdout=subprocess.PIPE, bufsize=0)


def next_event(reader: subprocess.Popen[bytes], timeout: float = 15) -> dict:  # type: ignore[type-arg]
    """The next event line, or a failure (not a hang) if none comes in time."""
    assert reader.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([reader.stdout], [], [], max(0, deadline - time.monotonic()))
        assert ready, f"no event within {timeout} s (so far {line!r})"
        line += reader.stdout.read(1)
    return json.loads(line)  # type: ignore[no-any-return]


def test_nbdkit_memory_over_a_unix_socket(mnt: Mount, servers: list[Server], tmp_path: Path) -> None:
    sock = images(mnt) / "mem.sock"
    nbdkit(servers, sock, "memory", "64M")
    assert "nbd" in os.listdir(mnt.p("handlers"))
    assert not _mapped(mnt, "libnbd.so")  # registered without loading the library
    data = device(mnt, "n", f"nbd/unix:{sock}", 32 * MiB)
    assert _mapped(mnt, "libnbd.so")  # loaded by the first device that uses it
    r = mnt.sh(
        f"head -c 4194304 /dev/urandom > {tmp_path}/r && dd if={tmp_path}/r of={data} bs=1M conv=notrunc,fsync "
        f"status=none && cmp -n 4194304 {tmp_path}/r {data} "
        f"&& nbdcopy 'nbd+unix:///?socket={sock}' {tmp_path}/served && cmp -n 4194304 {tmp_path}/r {tmp_path}/served"
    )
    assert r.returncode == 0, r.stderr  # in the device and in the server, byte for byte
    assert mnt.sh("echo '1048576 1048576' > devices/n/unmap").returncode == 0
    assert mnt.sh(f"cmp -i 1048576 -n 1048576 {data} /dev/zero").returncode == 0  # unmapped reads zeros
    stats = dict(line.split() for line in mnt.p("devices", "n", "stats").read_text().splitlines())
    assert stats["errors"] == "0" and int(stats["write_bytes"]) >= 4 * MiB


def _send_buffers(pid: int) -> list[int]:
    """The send buffers (bytes) of `pid`'s Unix sockets, as ss reports them."""
    out = subprocess.run(["ss", "-Hnmpx"], capture_output=True, text=True, check=True).stdout
    return [
        int(m.group(1))
        for line in out.splitlines()
        if f"pid={pid}," in line and (m := re.search(r"tb(\d+)", line))
    ]


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (Debian: iproute2)")
@pytest.mark.skipif(os.geteuid() != 0, reason="a daemon that is not root gets what net.core.wmem_max allows")
def test_a_unix_socket_to_the_server_has_room_for_whole_requests(mnt: Mount, servers: list[Server]) -> None:
    # Through the default 208 KiB send buffer a 1 MiB write takes five rounds (see UNIX_SNDBUF).
    sock = images(mnt) / "buf.sock"
    nbdkit(servers, sock, "memory", "64M")
    assert max(_send_buffers(mnt.pid)) < 2 * MiB  # the mount's own: FUSE, the notify pipes
    device(mnt, "u", f"nbd/unix:{sock}", 32 * MiB)
    assert max(_send_buffers(mnt.pid)) == 2 * UNIX_SNDBUF  # (the kernel doubles what is asked)


def test_a_tcp_socket_keeps_its_own_buffer_tuning() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as c,
    ):
        before = c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        _widen(c.fileno())
        assert c.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == before  # set, it would stop autotuning
    a, b = socket.socketpair()
    with a, b:
        _widen(a.fileno())
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 212992  # past the default


def test_reads_and_writes_keep_no_buffer(mnt: Mount, servers: list[Server]) -> None:
    # libnbd 1.14's nbd.Buffer wrapper leaked the buffer of every aio call: the daemon grew by
    # the size of each request (64 MiB a pass below, 350 MiB after a bench's 4 KiB reads).
    sock = images(mnt) / "leak.sock"
    nbdkit(servers, sock, "memory", "64M")
    data = device(mnt, "l", f"nbd/unix:{sock}", 32 * MiB)

    def one_pass() -> None:
        r = mnt.sh(
            f"dd if={data} of=/dev/null bs=4k iflag=direct status=none && "
            f"dd if=/dev/zero of={data} bs=4k count=4096 oflag=direct conv=notrunc status=none"
        )
        assert r.returncode == 0, r.stderr

    one_pass()  # the heap's working set
    before = rss_kib(mnt.pid) / 1024
    one_pass()  # 8,192 reads and 4,096 writes of 4 KiB: 48 MiB if each kept its buffer
    assert rss_kib(mnt.pid) / 1024 - before < 8


def test_nbdkit_file_over_tcp_with_a_filesystem(mnt: Mount, servers: list[Server], tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    os.truncate(disk, 128 * MiB)  # sparse
    port = _free_port()
    argv = ["nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", str(port), "file", str(disk)]
    servers.append(Server(argv, port=port))
    data = device(mnt, "t", f"nbd/nbd://127.0.0.1:{port}", 128 * MiB)
    assert run(f"mkfs.ext4 -q -F {data}", timeout=300).returncode == 0
    r = run(f"e2fsck -f -n {data}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert mnt.sh("echo 0 > devices/t/enable").returncode == 0  # flushed and disconnected
    r = run(f"e2fsck -f -n {disk}", timeout=300)  # the server's own file holds the filesystem
    assert r.returncode == 0, r.stdout + r.stderr


def test_fio_verify_on_qemu_storage_daemon(mnt: Mount, servers: list[Server], tmp_path: Path) -> None:
    raw = tmp_path / "qsd.raw"
    raw.write_bytes(b"")
    os.truncate(raw, 64 * MiB)  # sparse
    sock = images(mnt) / "qsd.sock"
    argv = [
        *("qemu-storage-daemon", "--blockdev", f"driver=file,node-name=f,filename={raw}"),
        *("--nbd-server", f"addr.type=unix,addr.path={sock}"),
        *("--export", "type=nbd,id=e,node-name=f,name=,writable=on"),
    ]
    servers.append(Server(argv, socket_path=sock))
    data = device(mnt, "q", f"nbd/unix:{sock}", 64 * MiB)
    fio_verify(data, tmp_path, "--ioengine=libaio", "--iodepth=16")  # many commands in flight at once
    assert "errors 0" in mnt.p("devices/q/stats").read_text()


def test_what_nbd_may_not_reach_is_refused_with_its_reason(
    mnt: Mount, servers: list[Server], tmp_path: Path
) -> None:
    outside = tmp_path / "outside.sock"
    nbdkit(servers, outside, "memory", "64M")
    r = mnt.sh(f"mkdir devices/x && echo nbd/unix:{outside} > devices/x/config")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    assert "outside the image dirs" in mnt.p("devices", "x", "last_error").read_text()
    (images(mnt) / "link.sock").symlink_to(outside)  # inside by name, outside in fact
    r = mnt.sh(
        f"echo nbd/unix:{images(mnt)}/link.sock > devices/x/config && echo 1048576 > devices/x/size "
        "&& echo 1 > devices/x/enable"
    )
    assert r.returncode != 0
    assert "symlink" in mnt.p("devices", "x", "last_error").read_text()
    small = images(mnt) / "small.sock"
    nbdkit(servers, small, "memory", "1M")
    r = mnt.sh(
        f"echo nbd/unix:{small} > devices/x/config && echo 2097152 > devices/x/size && echo 1 > devices/x/enable"
    )
    assert r.returncode != 0
    assert "fewer than size" in mnt.p("devices", "x", "last_error").read_text()
    for bad in ("nbd/nbds://h/e", "nbd/unix:rel.sock", "nbd/nbd://h/e?socket=/x"):
        r = mnt.sh(f"echo '{bad}' > handlers/nbd/check_config")
        assert r.returncode != 0, bad


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_server_that_goes_away_is_reconnected(
    mnt: Mount, servers: list[Server], tmp_path: Path, how: signal.Signals
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(8 * MiB))
    sock = images(mnt) / "f.sock"
    server = nbdkit(servers, sock, "file", str(disk))
    data = device(mnt, "f", f"nbd/unix:{sock}", 8 * MiB)
    assert mnt.sh(f"printf kept | dd of={data} conv=notrunc,fsync status=none").returncode == 0
    reader = events(mnt, "f")
    try:
        time.sleep(0.2)
        server.proc.send_signal(how)
        if how == signal.SIGTERM:  # nbdkit answers ESHUTDOWN, and waits for us to let go
            mnt.sh(f"dd if={data} of=/dev/null bs=4k count=1 status=none")
        assert next_event(reader)["event"] == "conn_lost"
        server.kill()  # gone by now: its socket with it
        wait_for(lambda: "recovering 1" in mnt.p("devices", "f", "status").read_text(), 5)
        busy = mnt.sh(f"dd if={data} of=/dev/null bs=4k count=1 status=none")
        assert busy.returncode != 0 and "busy" in busy.stderr.lower()
        nbdkit(servers, sock, "file", str(disk))
        back = next_event(reader)
        assert back["event"] == "reopened" and back["attempts"] >= 1
    finally:
        reader.kill()
    r = mnt.sh(f"dd if={data} bs=4 count=1 status=none")
    assert r.returncode == 0 and r.stdout == "kept"


def test_qcow_image_made_unmapped_grown_and_read_by_qemu_img(mnt: Mount, tmp_path: Path) -> None:
    image = images(mnt) / "q.qcow2"
    data = device(mnt, "q", f"qcow/{image}", 64 * MiB)
    r = mnt.sh(
        f"head -c 8388608 /dev/urandom > {tmp_path}/r && dd if={tmp_path}/r of={data} bs=1M conv=notrunc,fsync "
        f"status=none && cmp -n 8388608 {tmp_path}/r {data}"
    )
    assert r.returncode == 0, r.stderr
    assert mnt.sh("echo '0 4194304' > devices/q/unmap").returncode == 0
    assert mnt.sh(f"cmp -n 4194304 {data} /dev/zero").returncode == 0
    assert len(qemu_servers(mnt)) == 1
    assert mnt.sh("echo 0 > devices/q/enable").returncode == 0
    assert qemu_servers(mnt) == []  # its server is gone, the image unlocked
    check = run(f"qemu-img check {image}")
    assert check.returncode == 0 and "No errors" in check.stdout, check.stdout + check.stderr
    extents = json.loads(run(f"qemu-img map --output=json {image}").stdout)
    assert not extents[0]["data"] and extents[0]["start"] == 0 and extents[0]["length"] >= 4 * MiB  # a hole
    copy = tmp_path / "copy.raw"
    copy.write_bytes(bytes(4 * MiB) + (tmp_path / "r").read_bytes()[4 * MiB :])
    os.truncate(copy, 64 * MiB)
    same = run(f"qemu-img compare -f qcow2 -F raw {image} {copy}")
    assert same.returncode == 0, same.stdout + same.stderr
    assert mnt.sh("echo 1 > devices/q/enable && echo 134217728 > devices/q/size").returncode == 0
    assert mnt.sh(f"cmp -i 4194304:4194304 -n 4194304 {data} {tmp_path}/r").returncode == 0
    assert mnt.sh(f"dd if={data} of=/dev/null bs=1M skip=127 count=1 status=none").returncode == 0
    assert mnt.sh("echo 0 > devices/q/enable").returncode == 0
    info = json.loads(run(f"qemu-img info --output=json {image}").stdout)
    assert info["virtual-size"] == 128 * MiB


def test_qcow_refuses_what_is_not_its_own(mnt: Mount, tmp_path: Path) -> None:
    raw = images(mnt) / "plain.raw"
    raw.write_bytes(bytes(MiB))
    r = mnt.sh(
        f"mkdir devices/q && echo qcow/{raw} > devices/q/config && echo 1048576 > devices/q/size && echo 1 > devices/q/enable"
    )
    assert r.returncode != 0
    assert "not qcow2" in mnt.p("devices", "q", "last_error").read_text()
    assert raw.read_bytes() == bytes(MiB)  # refused, not rewritten
    (images(mnt) / "link.qcow2").symlink_to(tmp_path / "elsewhere.qcow2")
    r = mnt.sh(f"echo qcow/{images(mnt)}/link.qcow2 > devices/q/config && echo 1 > devices/q/enable")
    assert r.returncode != 0 and not (tmp_path / "elsewhere.qcow2").exists()
    r = mnt.sh("echo qcow//etc/passwd > devices/q/config")
    assert r.returncode != 0 and "outside the image dirs" in mnt.p("devices", "q", "last_error").read_text()


def test_qcow_with_a_filesystem_and_its_server_killed(mnt: Mount, tmp_path: Path) -> None:
    image = images(mnt) / "fs.qcow2"
    data = device(mnt, "q", f"qcow/{image}", 128 * MiB)
    assert run(f"mkfs.ext4 -q -F {data}", timeout=300).returncode == 0
    reader = events(mnt, "q")
    try:
        time.sleep(0.2)
        (server,) = qemu_servers(mnt)
        os.kill(server, signal.SIGKILL)
        assert next_event(reader)["event"] == "conn_lost"
        assert next_event(reader)["event"] == "reopened"  # a new server on the same image
    finally:
        reader.kill()
    r = run(f"e2fsck -f -n {data}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def qemu_servers(mnt: Mount) -> list[int]:
    """The daemon's qemu-storage-daemon children."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == mnt.pid and b"qemu-storage-daemon" in cmdline:
            found.append(int(pid))
    return found


def test_a_write_answered_early_that_the_server_fails_fails_the_next_fsync(
    mnt: Mount, servers: list[Server], tmp_path: Path
) -> None:
    """With the write cache on, a write is answered before the server's reply (a write-back
    cache): the server's failure of it comes out at the next fsync, once; with it off, at the
    write itself."""
    trigger = tmp_path / "fail-writes"
    sock = images(mnt) / "e.sock"
    failing = ("error-pwrite=EIO", "error-pwrite-rate=1", f"error-file={trigger}")
    nbdkit(servers, sock, "--filter=error", "memory", str(8 * MiB), *failing)
    data = device(mnt, "e", f"nbd/unix:{sock}", 8 * MiB)
    dd = f"dd if=/dev/urandom of={data} bs=4k count=4 oflag=direct conv=notrunc status=none"
    assert mnt.sh(f"{dd} conv=fsync").returncode == 0
    trigger.touch()
    assert mnt.sh(dd).returncode == 0  # answered early: the server's EIO is still to come
    failed = mnt.sh(f"{dd} conv=fsync")
    assert failed.returncode != 0 and "Input/output error" in failed.stderr, failed.stderr
    trigger.unlink()
    assert mnt.sh(f"{dd} conv=fsync").returncode == 0  # reported once, as a disk does
    assert mnt.sh("echo 0 > devices/e/write_cache").returncode == 0
    trigger.touch()
    through = mnt.sh(dd)
    assert through.returncode != 0 and "Input/output error" in through.stderr, through.stderr
