"""The `rbd` handler against a real single-node Ceph cluster (tests/ceph.py): dd + cmp with the
cluster's own `rbd export`, mkfs + e2fsck + loop mount, fio --verify, two daemons on one image
handing the exclusive lock over (a live holder fenced, a killed one broken), and the OSD
stopped and started under I/O."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ceph
from tests.conftest import Mount, device, fio_verify, run, wait_for

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph.Cluster]:
    reason = ceph.missing()
    if reason:
        pytest.skip(reason)
    c = ceph.Cluster(tmp_path_factory.mktemp("ceph"))
    try:
        c.up()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        c.down()
        pytest.skip(f"the Ceph cluster did not start here: {e}")
    old = os.environ.get("CEPH_CONF")
    os.environ["CEPH_CONF"] = str(c.conf)  # the daemons the tests start find the cluster by it
    yield c
    if old is None:
        os.environ.pop("CEPH_CONF", None)
    else:
        os.environ["CEPH_CONF"] = old
    c.down()


@pytest.fixture
def image(cluster: ceph.Cluster, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    cluster.run("rbd", "create", "--size", "128M", f"rbd/{name}")
    return name


def events(mnt: Mount, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", str(mnt.p("devices", name, "events"))], stdout=subprocess.PIPE, bufsize=0)


def wait_event(reader: subprocess.Popen[bytes], wanted: str, timeout: float = 60) -> dict:  # type: ignore[type-arg]
    """The first event named `wanted` (others are skipped), or a failure if none comes in time."""
    assert reader.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    while True:
        ready, _, _ = select.select([reader.stdout], [], [], max(0, deadline - time.monotonic()))
        assert ready, f"no {wanted} event within {timeout} s"
        line += reader.stdout.read(1)
        if line.endswith(b"\n"):
            record = json.loads(line)
            if record["event"] == wanted:
                return record  # type: ignore[no-any-return]
            line = b""


def test_dd_cmp_and_the_cluster_holds_the_bytes(
    mnt: Mount, cluster: ceph.Cluster, image: str, tmp_path: Path
) -> None:
    assert "rbd" in os.listdir(mnt.p("handlers"))
    data = device(mnt, "r", f"rbd/rbd/{image};osd_op_timeout=10", 128 * MiB)
    r = mnt.sh(
        f"head -c 8388608 /dev/urandom > {tmp_path}/r && dd if={tmp_path}/r of={data} bs=1M conv=notrunc,fsync "
        f"status=none && cmp -n 8388608 {tmp_path}/r {data}"
    )
    assert r.returncode == 0, r.stderr
    cluster.run("rbd", "export", "--no-progress", f"rbd/{image}", str(tmp_path / "exported"))
    assert (
        run(f"cmp -n 8388608 {tmp_path}/r {tmp_path}/exported").returncode == 0
    )  # on the OSD, byte for byte
    assert mnt.sh("echo '0 4194304' > devices/r/unmap").returncode == 0  # one whole object
    assert mnt.sh(f"cmp -n 4194304 {data} /dev/zero").returncode == 0
    assert mnt.sh("echo '4195328 8192' > devices/r/unmap").returncode == 0  # inside the next one
    assert mnt.sh(f"cmp -i 4195328 -n 8192 {data} /dev/zero").returncode == 0
    assert mnt.sh(f"cmp -i 4203520:4203520 -n 4096 {data} {tmp_path}/r").returncode == 0  # its neighbour kept
    bigger = mnt.sh("echo 268435456 > devices/r/size")  # the image is 128M: refused with the reason
    assert bigger.returncode != 0
    assert "refused the new size" in mnt.p("devices", "r", "last_error").read_text()
    cluster.run("rbd", "resize", "--size", "256M", f"rbd/{image}")
    assert mnt.sh("echo 268435456 > devices/r/size").returncode == 0  # grown on the cluster first


def test_refusals_name_their_reason(mnt: Mount, cluster: ceph.Cluster) -> None:
    for bad, why in (
        ("rbd/onlypool", "rbd takes rbd/<pool>/<image>"),
        ("rbd/rbd/x;conf=/etc/shadow", "conf= is not taken"),
        ("rbd/rbd/x;osd_op_timeout=soon", "osd_op_timeout=<seconds>"),
    ):
        r = mnt.sh(f"echo '{bad}' > handlers/rbd/check_config")
        assert r.returncode != 0, bad
        r = mnt.sh(f"mkdir -p devices/bad && echo '{bad}' > devices/bad/config")
        assert r.returncode != 0 and why in mnt.p("devices", "bad", "last_error").read_text(), bad
    r = mnt.sh(
        "echo 'rbd/rbd/nosuchimage' > devices/bad/config && echo 1048576 > devices/bad/size && echo 1 > devices/bad/enable"
    )
    assert r.returncode != 0
    assert "nosuchimage" in mnt.p("devices", "bad", "last_error").read_text()


def test_mkfs_e2fsck_and_a_loop_mount(mnt: Mount, cluster: ceph.Cluster, image: str, tmp_path: Path) -> None:
    data = device(mnt, "r", f"rbd/rbd/{image}", 128 * MiB)
    assert run(f"mkfs.ext4 -q -F {data}", timeout=300).returncode == 0
    r = run(f"e2fsck -f -n {data}", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    attach = run(f"losetup --find --show {data}")
    if attach.returncode != 0:
        pytest.skip(f"the kernel gave no loop device: {attach.stderr.strip()}")
    loop, target = attach.stdout.strip(), tmp_path / "fs"
    target.mkdir()
    try:
        assert run(f"mount {loop} {target}").returncode == 0
        try:
            (target / "file").write_bytes(os.urandom(MiB))
            kept = (target / "file").read_bytes()
        finally:
            assert run(f"umount {target}").returncode == 0
        assert run(f"mount {loop} {target}").returncode == 0
        try:
            assert (target / "file").read_bytes() == kept
        finally:
            run(f"umount {target}")
    finally:
        run(f"losetup -d {loop}")


def test_fio_verify(mnt: Mount, cluster: ceph.Cluster, image: str, tmp_path: Path) -> None:
    data = device(mnt, "r", f"rbd/rbd/{image}", 128 * MiB)
    fio_verify(data, tmp_path, "--ioengine=libaio", "--iodepth=16")
    assert "errors 0" in mnt.p("devices/r/stats").read_text()


def test_two_daemons_share_one_image_through_its_lock(
    tmp_path: Path, mounts: list[Mount], cluster: ceph.Cluster, image: str
) -> None:
    a, b = Mount(tmp_path, "a"), Mount(tmp_path, "b")
    mounts += [a.start(), b.start()]
    config = f"rbd/rbd/{image};osd_op_timeout=10"
    da, db = device(a, "r", config, 128 * MiB), device(b, "r", config, 128 * MiB)
    assert a.sh("echo 'lock 1' > devices/r/lock").returncode == 0
    assert a.p("devices", "r", "lock").read_text().split() == ["write_locked", "1"]
    assert a.sh(f"printf A | dd of={da} conv=notrunc,fsync status=none").returncode == 0
    refused = b.sh(f"printf B | dd of={db} conv=notrunc,fsync status=none")
    assert refused.returncode != 0 and "busy" in refused.stderr.lower()  # A holds it: B is told BUSY
    assert b.sh(f"dd if={db} bs=1 count=1 status=none").stdout == "A"  # reads need no lock

    reader = events(a, "r")
    try:
        assert b.sh("echo 'lock 2' > devices/r/lock").returncode == 0  # B takes over: A is fenced
        assert b.sh(f"printf B | dd of={db} conv=notrunc,fsync status=none").returncode == 0
        fenced = a.sh(f"printf a | dd of={da} conv=notrunc,fsync status=none")
        assert fenced.returncode != 0 and "busy" in fenced.stderr.lower()
        wait_event(reader, "lock_lost")
        wait_event(reader, "reopened")  # a blocklisted client comes back as a new one
    finally:
        reader.kill()
    assert a.sh(f"dd if={da} bs=1 count=1 status=none").stdout == "B"  # A never overwrote B

    os.kill(b.pid, signal.SIGKILL)  # the holder dies with the lock
    b.proc.wait()  # type: ignore[union-attr]
    assert a.sh("echo 'lock 3' > devices/r/lock").returncode == 0  # broken and taken
    assert a.sh(f"printf C | dd of={da} conv=notrunc,fsync status=none").returncode == 0
    assert a.p("devices", "r", "lock").read_text().split() == ["write_locked", "3"]
    meta = cluster.run("rbd", "image-meta", "get", f"rbd/{image}", "tcmu_rbd_locker_tag")
    assert meta.startswith("tcmu_tag=3,rbd_client=")  # tcmu-runner's format: it would read it too


def test_the_osd_stopped_and_started_under_io(
    mnt: Mount, cluster: ceph.Cluster, image: str, tmp_path: Path
) -> None:
    data = device(mnt, "r", f"rbd/rbd/{image};osd_op_timeout=5", 128 * MiB)
    kept = os.urandom(4 * MiB)
    (tmp_path / "kept").write_bytes(kept)
    assert mnt.sh(f"dd if={tmp_path}/kept of={data} bs=1M conv=notrunc,fsync status=none").returncode == 0
    writer = subprocess.Popen(  # I/O that goes on while the OSD is away, and after
        [
            "bash",
            "-c",
            f"for i in $(seq 1 400); do dd if=/dev/urandom of={data} bs=64k count=1 seek=$((64 + i % 64)) "
            "conv=notrunc status=none 2>/dev/null; sleep 0.05; done",
        ],
    )
    reader = events(mnt, "r")
    try:
        time.sleep(1)
        cluster.stop_osd()
        wait_event(reader, "conn_lost", timeout=30)  # the next op timed out after 5 s
        wait_for(lambda: "recovering 1" in mnt.p("devices", "r", "status").read_text(), 10)
        cluster.start_osd()
        back = wait_event(reader, "reopened", timeout=90)
        assert back["attempts"] >= 1
    finally:
        reader.kill()
        writer.wait(120)
    r = mnt.sh(f"cmp -n {4 * MiB} {tmp_path}/kept {data}")
    assert r.returncode == 0, r.stdout  # nothing written before the stop was lost
    assert (
        mnt.sh(f"printf done | dd of={data} bs=512 seek=100 conv=notrunc,fsync status=none").returncode == 0
    )
    assert mnt.sh(f"dd if={data} bs=512 skip=100 count=1 status=none | head -c 4").stdout == "done"
