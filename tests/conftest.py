"""Fixtures: a real `vfs mount --foreground` in a subprocess, driven by real programs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.terminal import Terminal

REPO = Path(__file__).resolve().parent.parent


def fuse_usable() -> str | None:
    """Why FUSE cannot be used here, or None. Only the kernel's refusal is a reason to skip."""
    if not os.path.exists("/dev/fuse"):
        return "the kernel offers no /dev/fuse"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"/dev/fuse cannot be opened: {e.strerror}"
    return None


def rss_kib(pid: int) -> int:
    """A process's resident memory, as /proc reports it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> float:
    """Poll until `predicate()` is true; the seconds it took. Fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout}s")


def run(
    cmd: str, cwd: Path | str | None = None, timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    """A bash command line, as a person would type it."""
    return subprocess.run(
        ["bash", "-c", cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )


def vfs_scsi(mnt: Mount, dev: str, *args: str, timeout: int = 60) -> dict:  # type: ignore[type-arg]
    """`vfs scsi devices/<dev> --json ARGS`, decoded; a hang ends at `timeout` (rc 124)."""
    r = run(
        f"timeout {timeout} {sys.executable} -m vfs scsi {mnt.p('devices', dev)} --json " + " ".join(args),
        cwd=REPO,
    )
    assert r.returncode in (0, 1), f"rc {r.returncode} (124: the command hung): {r.stderr}"
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def device(mnt: Mount, name: str, config: str, size: int) -> Path:
    """Make and enable devices/<name>; its data file."""
    r = mnt.sh(
        f"mkdir devices/{name} && echo '{config}' > devices/{name}/config && echo {size} > devices/{name}/size "
        f"&& echo 1 > devices/{name}/enable"
    )
    assert r.returncode == 0, r.stderr + mnt.p("devices", name, "last_error").read_text()
    return mnt.p("devices", name, "data")


def fio_verify(data: Path, tmp_path: Path, *extra: str, size: str = "64M") -> None:
    """fio random read/write with crc32c verification on `data`; asserts it found no error."""
    out = tmp_path / "fio.out"
    r = subprocess.run(
        [
            *("fio", "--name=verify", f"--filename={data}", "--rw=randrw", "--bs=4k", f"--size={size}"),
            *("--direct=1", "--ioengine=psync", "--numjobs=1", "--verify=crc32c", "--verify_fatal=1"),
            *("--io_size=16M", "--do_verify=1", "--randrepeat=0", f"--output={out}"),
            "--verify_state_save=0",  # fio would leave its state file in the current directory
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.read_text() if out.exists() else ""
    assert r.returncode == 0, r.stderr + text
    assert "err= 0" in text


class Mount:
    """One daemon serving one mount point; `stop()` leaves nothing mounted."""

    def __init__(
        self,
        base: Path,
        name: str = "mnt",
        modules: tuple[str, ...] = ("tests.nodetree",),
        state_dir: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.path = base / name
        self.path.mkdir(exist_ok=True)
        self.state_dir = state_dir or base / f"{name}-state"
        self.log = base / f"{name}.log"
        self.modules = modules
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "vfs",
            "mount",
            "--foreground",
            str(self.path),
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            "debug",
            *self.extra,
        ]
        for m in self.modules:
            argv += ["--module", m]
        return argv

    def start(self, timeout: float = 20) -> Mount:
        read_end, write_end = os.pipe()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv(), "--ready-fd", str(write_end)],
                cwd=REPO,
                stdout=log,
                stderr=log,
                pass_fds=(write_end,),
                start_new_session=True,
            )
        os.close(write_end)
        deadline = time.monotonic() + timeout
        with os.fdopen(read_end, "rb") as ready:
            os.set_blocking(ready.fileno(), False)
            while time.monotonic() < deadline:
                line = ready.readline()
                if line.strip() == b"ready":
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"mount did not become ready; log:\n{self.log.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def sh(self, cmd: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
        return run(cmd, cwd=self.path, timeout=timeout, **kw)

    def p(self, *parts: str) -> Path:
        return self.path.joinpath(*parts)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def fuse() -> None:
    """Skips the test where the kernel refuses FUSE — the only reason a mount test may skip."""
    reason = fuse_usable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def mounts(tmp_path: Path, fuse: None) -> Iterator[list[Mount]]:
    """Mounts a test starts register here; all are torn down, whatever happens."""
    started: list[Mount] = []
    yield started
    for m in started:
        m.stop()


@pytest.fixture
def shm_dir(tmp_path: Path, mounts: list[Mount]) -> Iterator[Path]:
    """A dir of the test's own on tmpfs (/dev/shm), removed after the test's mounts have
    stopped: a daemon removes what it made there (a v2v socket) as it ends."""
    d = Path("/dev/shm") / f"vfs-test-{os.getpid()}-{tmp_path.name}"
    d.mkdir()
    yield d
    for m in mounts:
        m.stop()
    shutil.rmtree(d)


@pytest.fixture
def mnt(tmp_path: Path, mounts: list[Mount]) -> Mount:
    m = Mount(tmp_path)
    mounts.append(m)
    return m.start()


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[list[Terminal]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (setup-debian --test)")
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()
