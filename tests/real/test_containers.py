"""Containers with a real runtime (podman + runc) and busybox inside: channel ends handed to two
containers, a device's data file, a container process's own storage block, events."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Mount, run, wait_for

IMAGE = "localhost/vfs-test-busybox"


def _runtime_problem() -> str | None:
    for tool in ("podman", "runc", "busybox"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: podman runc busybox-static)"
    return None


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox-static image made here (no registry): busybox --install -s into a rootfs."""
    problem = _runtime_problem()
    if problem:
        pytest.skip(problem)
    rootfs = tmp_path_factory.mktemp("rootfs")
    (rootfs / "bin").mkdir()
    shutil.copy(shutil.which("busybox") or "", rootfs / "bin" / "busybox")
    r = run(
        f"chroot {rootfs} /bin/busybox --install -s /bin && tar -C {rootfs} -c . | podman import - {IMAGE}"
    )
    if r.returncode != 0:
        pytest.skip(f"podman cannot import an image here: {r.stderr.strip()[-300:]}")
    r = subprocess.run(podman("true"), capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"podman with runc cannot start a container here: {r.stderr.strip()[-300:]}")
    return IMAGE


def podman(*args: str, volumes: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    argv = ["podman", "--runtime", "runc", "run", "--rm", "-i"]
    argv += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", *extra]
    for host, inside in (volumes or {}).items():
        argv += ["-v", f"{host}:{inside}"]
    return [*argv, IMAGE, *args]


def sh_in(
    script: str, volumes: dict[str, str], timeout: float = 60, **kw: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        podman("sh", "-c", script, volumes=volumes),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def vmnt(image: str, mnt: Mount) -> Iterator[Mount]:
    yield mnt


def test_two_containers_pass_a_message_and_a_stream(vmnt: Mount, tmp_path: Path) -> None:
    assert vmnt.sh("mkdir channels/c").returncode == 0
    listener = {str(vmnt.p("channels/c/listener")): "/end"}
    connector = {str(vmnt.p("channels/c/connector")): "/end"}
    data = os.urandom(3 * 1024 * 1024)
    (tmp_path / "src").write_bytes(data)
    # the stream: busybox dd in one container into busybox cat in the other
    with open(tmp_path / "out", "wb") as out:  # a file, not a pipe nobody reads while dd writes
        reader = subprocess.Popen(
            podman("sh", "-c", "cat /end/stream", volumes=listener), stdin=subprocess.DEVNULL, stdout=out
        )
    wait_for(lambda: (vmnt.p("channels/c/listener/state")).read_text() == "listening\n", timeout=30)
    with open(tmp_path / "src", "rb") as src:
        w = subprocess.run(
            podman("sh", "-c", "dd of=/end/stream bs=64k 2>/dev/null", volumes=connector),
            stdin=src,
            timeout=120,
        )
    assert w.returncode == 0
    assert reader.wait(60) == 0 and (tmp_path / "out").read_bytes() == data
    # a message: one write, one read, its boundary kept
    wait_for(lambda: "attached -" in (vmnt.p("channels/c/listener/status")).read_text())
    reader = subprocess.Popen(
        podman("sh", "-c", "head -c 100 /end/msg", volumes=listener),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    wait_for(lambda: (vmnt.p("channels/c/listener/state")).read_text() == "listening\n", timeout=30)
    w = sh_in("printf 'one message' > /end/msg", connector)
    assert w.returncode == 0, w.stderr
    out, _ = reader.communicate(timeout=60)
    assert out == b"one message"


def test_a_container_uses_a_device_with_busybox_dd(vmnt: Mount, tmp_path: Path) -> None:
    r = vmnt.sh(
        "mkdir devices/d && echo ram/ > devices/d/config && echo 8388608 > devices/d/size && echo 1 > devices/d/enable"
    )
    assert r.returncode == 0, r.stderr
    (tmp_path / "blob").write_bytes(os.urandom(1024 * 1024))
    vol = {str(vmnt.p("devices/d")): "/dev-d", str(tmp_path): "/host"}
    r = sh_in(
        "dd if=/host/blob of=/dev-d/data bs=4096 seek=256 conv=notrunc 2>/dev/null && "
        "dd if=/dev-d/data of=/host/back bs=4096 skip=256 count=256 2>/dev/null",
        vol,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back").read_bytes() == (tmp_path / "blob").read_bytes()
    with open(vmnt.p("devices/d/data"), "rb") as f:
        f.seek(1024 * 1024)
        assert f.read(1024 * 1024) == (tmp_path / "blob").read_bytes()  # the host sees the same


def test_a_container_process_block_is_seen_on_the_host_under_its_host_pid(vmnt: Mount) -> None:
    r = vmnt.sh("mkdir storage/s && echo 64 > storage/s/size && echo 1 > storage/s/enable")
    assert r.returncode == 0, r.stderr
    worker = subprocess.Popen(
        podman(
            "sh", "-c", "echo in-container > /s/self; exec sleep 30", volumes={str(vmnt.p("storage/s")): "/s"}
        ),
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: vmnt.p("storage/s/worlds").read_text().strip() != "", timeout=30)
        pid = int(vmnt.p("storage/s/worlds").read_text().split()[0])
        assert vmnt.p("worlds", str(pid), "s").read_bytes()[:13] == b"in-container\n"
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        assert comm in ("sh", "sleep")  # a host pid: the kernel's, not the container's 1
        assert pid != 1
    finally:
        worker.kill()
        worker.wait(30)
        run("podman ps -q --filter ancestor=" + IMAGE + " | xargs -r podman kill")


def test_events_read_with_busybox_in_a_container(vmnt: Mount) -> None:
    vol = {str(vmnt.p("mgmt/example")): "/mgmt"}
    fire = lambda: vmnt.p("mgmt/example/keys/message").write_text("boxed")  # noqa: E731
    # not `exec`ed by sh: a container's pid 1 ignores timeout's SIGTERM
    for reader in ("head -n1 /mgmt/events; true", "timeout 4 cat /mgmt/events; true"):
        proc = subprocess.Popen(
            podman("sh", "-c", reader, volumes=vol),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: any(os.scandir(vmnt.p("mgmt/example/sessions"))), timeout=30)
        threading.Timer(0.5, fire).start()
        out, _ = proc.communicate(timeout=60)
        assert '"params":["boxed",5]' in out, reader
        wait_for(lambda: not any(os.scandir(vmnt.p("mgmt/example/sessions"))))  # released


def test_a_container_keeps_reading_across_a_daemon_restart(
    image: str, tmp_path: Path, mounts: list[Mount], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole tree under a shared parent, and one channel end bound by vfs-bind: containers
    given those parents with rslave see the new mount and the renewed bind after a restart."""
    bind = REPO / "mountscripts" / "vfs-bind"
    monkeypatch.setenv("VFS_BINDS", str(tmp_path / "binds"))  # the daemons renew what it lists
    anchor, ends = tmp_path / "anchor", tmp_path / "ends"
    (ends / "end").mkdir(parents=True)
    anchor.mkdir()
    try:
        assert run(f"{bind} --shared {anchor}").returncode == 0
        m = Mount(anchor, "mnt", state_dir=tmp_path / "state")
        mounts.append(m)
        m.start()
        assert m.sh("mkdir channels/c").returncode == 0
        r = run(f"{bind} {m.p('channels/c/listener')} {ends}/end")
        assert r.returncode == 0, r.stderr
        loop = (
            "i=0; while [ $i -lt 50 ]; do "
            'if v=$(cat {0} 2>/dev/null); then echo "ok $v"; else echo err; fi; i=$((i+1)); sleep 0.2; done'
        )
        tree = subprocess.Popen(
            podman(
                "sh", "-c", loop.format("/vfs/mnt/status | grep '^pid'"), volumes={str(anchor): "/vfs:rslave"}
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        end = subprocess.Popen(
            podman("sh", "-c", loop.format("/ends/end/state"), volumes={str(ends): "/ends:rslave"}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(3)
        first = m.pid
        m.stop()
        time.sleep(1)
        m.start()
        assert m.pid != first
        tree_out, _ = tree.communicate(timeout=60)
        end_out, _ = end.communicate(timeout=60)
    finally:
        run(f"umount -R -l {ends}; umount -R -l {anchor}")
    pids = {line.split()[-1] for line in tree_out.splitlines() if line.startswith("ok")}
    assert pids == {str(first), str(m.pid)}, tree_out  # read before and after the restart
    assert tree_out.splitlines()[-1] == f"ok pid {m.pid}"
    assert end_out.splitlines()[0] == "ok unready" and end_out.splitlines()[-1] == "ok unready", end_out
    assert "err" in end_out  # the old bind went stale, and the new one was seen in the container
