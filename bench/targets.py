"""What the bench measures against: our daemon, the minimal pyfuse3 file, tmpfs, and the tools
users would pick instead (qemu-storage-daemon's FUSE export, nbdfuse over nbdkit)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class UnavailableError(Exception):
    """A reference that cannot run here, with the reason the table prints."""


def _mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def _wait_mounted(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _mounted(path):
            return
        if proc.poll() is not None:
            raise UnavailableError(f"{what} exited with {proc.returncode}")
        time.sleep(0.05)
    raise UnavailableError(f"{what} did not mount within {timeout}s")


def _stop(proc: subprocess.Popen[bytes], path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Vfs:
    """Our daemon, foreground, on a private state dir (on /dev/shm unless told otherwise)."""

    def __init__(self, base: Path, state: Path | None = None, image_dir: Path | None = None) -> None:
        self.mnt = base / "vfs"
        self.mnt.mkdir(exist_ok=True)
        self.state = state or base / "vfs-state"
        self.image_dir = image_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Mount; the seconds until the mount answered (includes restoring saved objects)."""
        argv = [
            sys.executable,
            "-m",
            "vfs",
            "mount",
            "--foreground",
            str(self.mnt),
            "--state-dir",
            str(self.state),
            "--log-level",
            "warning",
        ]
        if self.image_dir:
            argv += ["--image-dir", str(self.image_dir)]
        read_end, write_end = os.pipe()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [*argv, "--ready-fd", str(write_end)],
            cwd=REPO,
            pass_fds=(write_end,),
            stdout=subprocess.DEVNULL,
            stderr=open(self.state.parent / "vfs.log", "ab"),
        )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as ready:
            while (line := ready.readline()).startswith(b"progress "):
                pass  # a restore of many objects reports its progress first
            if line.strip() != b"ready":
                raise RuntimeError(f"vfs did not mount; see {self.state.parent / 'vfs.log'}")
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
            self.proc = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sh(self, cmd: str) -> None:
        subprocess.run(["bash", "-c", cmd], cwd=self.mnt, check=True, capture_output=True)

    def device(self, name: str, config: str, size: int) -> Path:
        self.sh(
            f"mkdir devices/{name} && echo '{config}' > devices/{name}/config && echo {size} > "
            f"devices/{name}/size && echo 1 > devices/{name}/enable"
        )
        return self.mnt / "devices" / name / "data"


@contextmanager
def vfs(base: Path, **kw: Path) -> Iterator[Vfs]:
    v = Vfs(base, **kw)
    v.start()
    try:
        yield v
    finally:
        v.stop()
        subprocess.run(["fusermount3", "-u", "-z", str(v.mnt)], capture_output=True)


@contextmanager
def _serving(argv: list[str], point: Path, what: str) -> Iterator[None]:
    """Run a FUSE server until `point` is mounted; stop it and unmount on exit. Its output is
    dropped, not piped: an unread pipe would stall a chatty server mid-run (and the auto-unmount
    helpers' "not mounted" would land in the table)."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_mounted(point, proc, what)
        yield
    finally:
        _stop(proc, point)


@contextmanager
def minimal(base: Path, size: int) -> Iterator[Path]:
    mnt = base / "minimal"
    mnt.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "bench.minimal_fs", str(mnt), str(size)]
    with _serving(argv, mnt, "the minimal pyfuse3 file"):
        yield mnt


@contextmanager
def qsd_export(image: Path, base: Path, fmt: str = "raw") -> Iterator[Path]:
    """qemu-storage-daemon's FUSE export of `image` (a regular file as mount point)."""
    if shutil.which("qemu-storage-daemon") is None:
        raise UnavailableError("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
    point = base / f"qsd-{fmt}.img"
    point.touch()
    argv = [
        "qemu-storage-daemon",
        "--blockdev",
        f"driver=file,node-name=file,filename={image},discard=unmap",
        "--blockdev",
        f"driver={fmt},node-name=disk,file=file,discard=unmap",
        "--export",
        f"type=fuse,id=exp,node-name=disk,mountpoint={point},writable=on",
    ]
    with _serving(argv, point, "qemu-storage-daemon"):
        yield point


@contextmanager
def nbdfuse(image: Path, base: Path) -> Iterator[Path]:
    """nbdfuse over `nbdkit file` of `image`."""
    with nbdfuse_over(base, "file", str(image)) as path:
        yield path


@contextmanager
def nbdfuse_over(base: Path, *nbdkit: str) -> Iterator[Path]:
    """nbdfuse over `nbdkit <plugin> <args>` (socket-activated: nbdfuse starts the server)."""
    for tool, package in (("nbdfuse", "libnbd-bin"), ("nbdkit", "nbdkit")):
        if shutil.which(tool) is None:
            raise UnavailableError(f"{tool} is not installed (Debian: {package})")
    mnt = base / f"nbd-{nbdkit[0]}"
    mnt.mkdir(exist_ok=True)
    with _serving(["nbdfuse", str(mnt), "--socket-activation", "nbdkit", *nbdkit], mnt, "nbdfuse"):
        yield mnt / "nbd"


@contextmanager
def nbdkit_socket(sock: Path, *plugin: str) -> Iterator[Path]:
    """An nbdkit on a Unix socket, for a vfs `nbd` device to use."""
    if shutil.which("nbdkit") is None:
        raise UnavailableError("nbdkit is not installed (Debian: nbdkit)")
    proc = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), *plugin], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UnavailableError(f"nbdkit {plugin[0]} did not start")
            time.sleep(0.01)
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def ceph_cluster(root: Path, bench: Any) -> Iterator[Any]:
    """The tests' one-node Ceph cluster (tests/ceph.py), with $CEPH_CONF naming it for the
    daemons started meanwhile; None (and a note in the results) where it cannot run."""
    from tests import ceph

    reason = ceph.missing()
    cluster = ceph.Cluster(root)
    if reason is None:
        try:
            cluster.up()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            cluster.down()
            reason = f"the cluster did not start: {e}"
    if reason is not None:
        bench.notes.append(f"rbd rows not run: {reason}")
        yield None
        return
    old = os.environ.get("CEPH_CONF")
    os.environ["CEPH_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("CEPH_CONF", None)
        else:
            os.environ["CEPH_CONF"] = old
        cluster.down()


@contextmanager
def qsd_rbd_export(cluster: Any, image: str, size: int, base: Path) -> Iterator[Path]:
    """qemu-storage-daemon's rbd driver on `image` (made here) through its FUSE export; with
    cache.direct=on, which turns librbd's cache off as the rbd handler has it."""
    if shutil.which("qemu-storage-daemon") is None:
        raise UnavailableError("qemu-storage-daemon is not installed (Debian: qemu-system-common)")
    if not list(Path("/usr/lib/x86_64-linux-gnu/qemu").glob("block-rbd.so")):
        raise UnavailableError("qemu's rbd driver is not installed (Debian: qemu-block-extra)")
    cluster.run("rbd", "create", "--size", str(size >> 20), f"rbd/{image}")
    point = base / "qsd-rbd.img"
    point.touch()
    argv = [
        "qemu-storage-daemon",
        "--blockdev",
        f"driver=rbd,node-name=disk,pool=rbd,image={image},conf={cluster.conf},discard=unmap,cache.direct=on",
        "--export",
        f"type=fuse,id=exp,node-name=disk,mountpoint={point},writable=on",
    ]
    with _serving(argv, point, "qemu-storage-daemon (rbd)"):
        yield point
