"""handlers/ and devices/ through a real mount: data file, scsi, unmap, lock, resize, restore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Mount, run, vfs_scsi, wait_for

MiB = 1 << 20


def make_device(mnt: Mount, name: str, config: str, size: int = 64 * MiB, enable: bool = True) -> Path:
    d = mnt.p("devices", name)
    r = mnt.sh(
        f"mkdir devices/{name} && echo '{config}' > devices/{name}/config && echo {size} > devices/{name}/size"
        + (f" && echo 1 > devices/{name}/enable" if enable else "")
    )
    assert r.returncode == 0, r.stderr + mnt.p("devices", name, "last_error").read_text()
    return d


def stat_of(mnt: Mount, dev: str, key: str) -> int:
    return int(dict(line.split() for line in mnt.p("devices", dev, "stats").read_text().splitlines())[key])


def image(mnt: Mount, name: str) -> str:
    return f"file/{mnt.state_dir}/images/{name}"


def test_handlers_tree(mnt: Mount) -> None:
    assert sorted(os.listdir(mnt.p("handlers"))) == ["file", "load", "nbd", "qcow", "ram", "rbd"]
    r = mnt.sh(
        "cat handlers/file/name handlers/file/subtype handlers/file/nr_threads handlers/file/ops handlers/ram/ops"
    )
    assert r.stdout.splitlines() == [
        "File-backed device",
        "file",
        "0",
        "check_config reconfig read write flush unmap lend_read lend_write read_now write_now flush_now lock unlock get_lock_tag get_lock_state",
        "check_config reconfig flush unmap lend flush_now",
    ]
    r = mnt.sh(
        f"exec 3<>handlers/file/check_config; echo '{image(mnt, 'x.img')}' >&3; cat <&3; "
        "echo 'file//etc/passwd' >&3; cat <&3"
    )
    assert r.stdout.splitlines()[0] == "ok"
    assert "outside the image dirs" in r.stdout.splitlines()[1] and "Invalid argument" in r.stderr


def test_dd_64mib_random_and_cmp_for_ram_and_file(mnt: Mount, tmp_path: Path) -> None:
    make_device(mnt, "r", "ram/")
    make_device(mnt, "f", image(mnt, "f.img"))
    src = tmp_path / "rand"
    src.write_bytes(os.urandom(64 * MiB))
    for dev in ("r", "f"):
        r = mnt.sh(
            f"dd if={src} of=devices/{dev}/data bs=1M status=none && cmp {src} devices/{dev}/data && echo same"
        )
        assert r.stdout == "same\n", r.stderr
        assert os.stat(mnt.p("devices", dev, "data")).st_size == 64 * MiB
    img = Path(f"{mnt.state_dir}/images/f.img")
    assert img.read_bytes() == src.read_bytes()
    r = mnt.sh("head -c 65M /dev/zero | dd of=devices/r/data bs=1M conv=notrunc status=none")
    assert "No space left" in r.stderr
    stats = mnt.p("devices/f/stats").read_text()
    assert f"write_bytes {64 * MiB}" in stats and "errors 0" in stats


def shm_mount(tmp_path: Path, mounts: list[Mount], images: Path) -> Mount:
    m = Mount(tmp_path, "shm", extra=("--image-dir", str(images)))
    mounts.append(m)
    return m.start()


def test_file_image_on_tmpfs_completes_inline(tmp_path: Path, mounts: list[Mount], shm_dir: Path) -> None:
    """Images on tmpfs take the handler's inline path for every size, flushes and unmaps;
    partial blocks are copied into the mapping, with no read-modify-write."""
    m = shm_mount(tmp_path, mounts, shm_dir)
    make_device(m, "f", f"file/{shm_dir}/f.img", 16 * MiB)
    src = tmp_path / "rand"
    src.write_bytes(os.urandom(16 * MiB))
    assert m.sh(f"dd if={src} of=devices/f/data bs=1M oflag=direct status=none").returncode == 0
    reads = stat_of(m, "f", "read_ops")
    r = m.sh(
        f"dd if={src} of=devices/f/data bs=3000 count=7 seek=1001 skip=1001 conv=notrunc,fsync status=none"
    )
    assert r.returncode == 0, r.stderr
    assert stat_of(m, "f", "read_ops") == reads
    r = m.sh(f"cmp {src} devices/f/data && echo same")
    assert r.stdout == "same\n", r.stderr
    assert (shm_dir / "f.img").read_bytes() == src.read_bytes()
    assert m.sh(f"echo '512 {MiB}' > devices/f/unmap").returncode == 0
    assert m.p("devices/f/data").read_bytes()[512 : 512 + MiB] == bytes(MiB)
    stats = m.p("devices/f/stats").read_text()
    assert "errors 0" in stats and "flush_ops 1" in stats
    m.stop()


def _mapped(m: Mount, img: Path) -> bool:
    assert m.proc is not None
    return str(img) in Path(f"/proc/{m.proc.pid}/maps").read_text()


def test_file_on_tmpfs_lends_reads_and_gives_the_image_back(
    tmp_path: Path, mounts: list[Mount], shm_dir: Path
) -> None:
    """Reads of `data` reply from a mapping of an image on tmpfs, held under a lease, and
    writes copy into it: an open or truncate of the image from outside takes the mapping away
    first (a truncated mapping would be SIGBUS), at once rather than after
    fs.lease-break-time, and reads stay right. The image's mtime follows the writes."""
    img = shm_dir / "f.img"
    m = shm_mount(tmp_path, mounts, shm_dir)
    make_device(m, "f", f"file/{img}", 16 * MiB)
    src = tmp_path / "rand"
    src.write_bytes(os.urandom(16 * MiB))
    r = m.sh(f"dd if={src} of=devices/f/data bs=1M oflag=direct status=none && cmp {src} devices/f/data")
    assert r.returncode == 0, r.stderr
    assert _mapped(m, img)
    # The kernel sets the mtime on a page's first write through a mapping only; later ones
    # are the daemon's to set.
    write_1m = f"dd if={src} of=devices/f/data bs=1M count=1 oflag=direct conv=notrunc status=none"
    assert m.sh(write_1m).returncode == 0
    before = img.stat().st_mtime
    time.sleep(1.1)  # (MTIME_STEP)
    assert m.sh(write_1m).returncode == 0
    assert img.stat().st_mtime > before
    start = time.monotonic()
    os.truncate(img, 4 * MiB)  # waits for the lease, which the daemon gives back
    assert time.monotonic() - start < 10  # not the 45 s the kernel would wait
    assert not _mapped(m, img)
    data = m.p("devices/f/data").read_bytes()
    assert data[: 4 * MiB] == src.read_bytes()[: 4 * MiB] and data[4 * MiB :] == bytes(12 * MiB)
    time.sleep(1.2)  # LEASE_RETRY: lent again once nobody else has it open
    m.sh("dd if=devices/f/data of=/dev/null bs=1M count=1 status=none")
    assert _mapped(m, img)
    # A reader and a writer (of zeros) at full speed while the image is cut and grown from
    # outside, over and over: touching a mapping past the end would kill the daemon.
    loops = [
        subprocess.Popen(["sh", "-c", f"while :; do {dd} || exit 1; done"], cwd=m.path)
        for dd in (
            "dd if=devices/f/data of=/dev/null bs=64k status=none",
            "dd if=/dev/zero of=devices/f/data bs=1M count=2 oflag=direct conv=notrunc status=none",
        )
    ]
    try:
        for i in range(40):
            os.truncate(img, (i % 4) * MiB)
            if i % 8 == 0:
                run(f"truncate -s 2M {img}")  # GNU's opens O_NONBLOCK: may be EAGAIN
            time.sleep(0.05)
        assert [p.poll() for p in loops] == [None, None]
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert m.proc is not None and m.proc.poll() is None
    os.truncate(img, 16 * MiB)
    assert m.p("devices/f/data").read_bytes()[:MiB] == bytes(MiB)
    assert "errors 0" in m.p("devices/f/stats").read_text()
    m.stop()


def test_file_on_a_full_tmpfs_keeps_the_mount(tmp_path: Path, mounts: list[Mount]) -> None:
    """A sparse image on a tmpfs that is full: reading its holes through a mapping would have
    tmpfs allocate pages in the fault, and writing them too — SIGBUS, the mount gone. Holes
    read as zeros, a write into one fails with EIO (ENOSPC in the log), and writes into the
    image's pages still go through the mapping."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs of a fixed size needs root")
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    r = run(f"mount -t tmpfs -o size=4M vfs-test-tiny {tiny}")
    assert r.returncode == 0, r.stderr
    try:
        m = shm_mount(tmp_path, mounts, tiny)
        make_device(m, "f", f"file/{tiny}/f.img", 16 * MiB)
        src = tmp_path / "rand"
        src.write_bytes(os.urandom(2 * MiB))
        r = m.sh(f"dd if={src} of=devices/f/data bs=1M oflag=direct status=none")
        assert r.returncode == 0, r.stderr
        run(f"dd if=/dev/zero of={tiny}/filler bs=1M status=none")  # until ENOSPC
        data = m.p("devices/f/data").read_bytes()  # holes from 2 MiB on
        assert data[: 2 * MiB] == src.read_bytes() and data[2 * MiB :] == bytes(14 * MiB)
        r = m.sh("dd if=/dev/urandom of=devices/f/data bs=1M seek=8 count=1 oflag=direct status=none")
        assert r.returncode != 0 and "Input/output error" in r.stderr
        r = m.sh(f"dd if={src} of=devices/f/data bs=1M count=1 seek=1 oflag=direct conv=notrunc status=none")
        assert r.returncode == 0, r.stderr
        assert _mapped(m, tiny / "f.img")
        assert m.p("devices/f/data").read_bytes()[MiB : 2 * MiB] == src.read_bytes()[:MiB]
        # Pages the daemon knew were there, unmapped (holes again) and the space taken.
        assert m.sh(f"echo '{MiB} {MiB}' > devices/f/unmap").returncode == 0, m.p(
            "devices/f/last_error"
        ).read_text()
        run(f"dd if=/dev/zero of={tiny}/filler bs=1M oflag=append conv=notrunc status=none")
        assert m.p("devices/f/data").read_bytes()[MiB : 2 * MiB] == bytes(MiB)
        r = m.sh(f"dd if={src} of=devices/f/data bs=1M count=1 seek=1 oflag=direct conv=notrunc status=none")
        assert r.returncode != 0 and "Input/output error" in r.stderr
        assert m.proc is not None and m.proc.poll() is None
        m.stop()
    finally:
        run(f"umount -l {tiny}")


def test_unaligned_writes_read_modify_write(mnt: Mount, tmp_path: Path) -> None:
    make_device(mnt, "r", "ram/", 8 * MiB)
    src = tmp_path / "rand"
    src.write_bytes(os.urandom(1_000_000))
    mnt.sh("dd if=/dev/zero of=devices/r/data bs=1M count=8 conv=notrunc status=none")
    r = mnt.sh(
        f"dd if={src} of=devices/r/data bs=1000 seek=3 conv=notrunc status=none && "
        f"cmp <(dd if=devices/r/data bs=1000 skip=3 count=1000 status=none) {src} && echo same"
    )
    assert r.stdout == "same\n", r.stderr
    data = mnt.p("devices/r/data").read_bytes()
    assert data[:3000] == bytes(3000) and data[1_003_000:1_010_000] == bytes(7000)
    fd = os.open(mnt.p("devices/r/data"), os.O_RDWR)
    try:
        os.pwrite(fd, b"xyz", 511)  # across a block boundary
        assert os.pread(fd, 5, 510) == b"\0xyz\0"
    finally:
        os.close(fd)


def test_unmap_then_reads_are_zeros(mnt: Mount) -> None:
    make_device(mnt, "f", image(mnt, "u.img"), 16 * MiB)
    mnt.sh("head -c 16M /dev/urandom > devices/f/data")
    img = Path(f"{mnt.state_dir}/images/u.img")
    used = os.stat(img).st_blocks
    assert mnt.sh(f"echo '{4 * MiB} {8 * MiB}' > devices/f/unmap").returncode == 0
    data = mnt.p("devices/f/data").read_bytes()
    assert data[4 * MiB : 12 * MiB] == bytes(8 * MiB) and data[: 4 * MiB] != bytes(4 * MiB)
    assert os.stat(img).st_blocks < used  # holes were punched
    assert "Invalid argument" in mnt.sh("echo '100 512' > devices/f/unmap").stderr
    assert "multiples" in mnt.p("devices/f/last_error").read_text()
    assert vfs_scsi(mnt, "f", "unmap", "0", str(MiB))["status"] == "GOOD"
    assert mnt.p("devices/f/data").read_bytes()[:MiB] == bytes(MiB)


def test_mount_answers_during_long_commands_on_an_inline_handler(mnt: Mount) -> None:
    """FORMAT UNIT, WRITE SAME and UNMAP over all of a `ram` device (whose callouts complete
    inline) let other requests through between their 1 MiB pieces, not only at the end."""
    size = 512 * MiB
    make_device(mnt, "big", "ram/", size)
    blocks, pieces = size // 512, size // MiB

    def ops(kind: str) -> int:
        stats = dict(line.split() for line in mnt.p("devices/big/stats").read_text().splitlines())
        return int(stats[f"{kind}_ops"])

    for cdb, out, kind in (
        ("04 00 00 00 00 00", "", "write"),  # FORMAT UNIT
        (f"93 00 {0:016x} {blocks:08x} 00 00", "--out " + "ab" * 512, "write"),  # WRITE SAME(16)
        (f"93 08 {0:016x} {blocks:08x} 00 00", "--out " + "00" * 512, "unmap"),  # ... with UNMAP
    ):
        before = ops(kind)
        cmd = subprocess.Popen(
            f"{sys.executable} -m vfs scsi {mnt.p('devices', 'big')} raw {cdb} {out}",
            shell=True,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        # Read the stats as fast as the mount answers: a mount that answers only between
        # commands shows none or all of the pieces done, never a count in between.
        seen: set[int] = set()
        deadline = time.monotonic() + 120
        while cmd.poll() is None and time.monotonic() < deadline:
            seen.add(ops(kind) - before)
        assert any(0 < n < pieces for n in seen), (cdb, sorted(seen))
        out_text, _ = cmd.communicate(timeout=120)
        assert "GOOD" in out_text, out_text
        assert ops(kind) - before == pieces
    with open(mnt.p("devices/big/data"), "rb") as f:  # WRITE SAME wrote 0xab; the UNMAP freed it
        assert f.read(MiB) == bytes(MiB)
        f.seek(size - MiB)
        assert f.read() == bytes(MiB)


def test_caw_success_and_miscompare_through_vfs_scsi(mnt: Mount) -> None:
    make_device(mnt, "r", "ram/", 4 * MiB)
    mnt.sh("printf 'AAAA' | dd of=devices/r/data conv=notrunc status=none")
    ok = vfs_scsi(mnt, "r", "caw", "0", "41414141", "42424242")
    assert ok == {"status": "GOOD"}
    assert mnt.p("devices/r/data").read_bytes()[:4] == b"BBBB"
    bad = vfs_scsi(mnt, "r", "caw", "0", "42424243", "43434343")
    assert bad["status"] == "CHECK CONDITION"
    assert (
        bad["sense"]["key"] == "MISCOMPARE"
        and bad["sense"]["asc"] == "1d"
        and bad["sense"]["information"] == 3
    )
    assert mnt.p("devices/r/data").read_bytes()[:4] == b"BBBB"


def test_scsi_decoding_and_raw(mnt: Mount) -> None:
    make_device(mnt, "r", "ram/", 4 * MiB)
    inq = vfs_scsi(mnt, "r", "inquiry")
    assert inq["vendor"] == "LIO-ORG" and inq["product"] == "TCMU device"
    assert (
        vfs_scsi(mnt, "r", "inquiry", "--vpd", "80")["serial"]
        == mnt.p("devices/r/status").read_text().split("serial ")[1].split()[0]
    )
    b0 = vfs_scsi(mnt, "r", "inquiry", "--vpd", "b0")
    assert b0["max_compare_and_write"] == 1 and b0["max_unmap_descriptors"] == 4
    cap = vfs_scsi(mnt, "r", "readcap")
    assert cap["bytes"] == 4 * MiB and cap["block_size"] == 512 and cap["lbpme"]
    assert vfs_scsi(mnt, "r", "tur") == {"status": "GOOD"} and vfs_scsi(mnt, "r", "sync") == {
        "status": "GOOD"
    }
    bad = vfs_scsi(mnt, "r", "raw", "c7", "00", "00", "00", "00", "00")
    assert (
        bad["sense"]["key"] == "ILLEGAL REQUEST"
        and bad["sense"]["meaning"] == "invalid command operation code"
    )
    r = run(
        f"{sys.executable} -m vfs scsi {mnt.p('devices/r')} raw 28 00 00 00 00 00 00 00 01 00 --in 512",
        cwd=REPO,
    )
    assert r.returncode == 0 and "status: GOOD" in r.stdout
    r = run(
        f"{sys.executable} -m vfs scsi {mnt.p('devices/r')} readcap --json", cwd=REPO
    )  # options after too
    assert r.returncode == 0 and json.loads(r.stdout)["bytes"] == 4 * MiB
    r = run(f"{sys.executable} -m vfs scsi {mnt.p('devices/nosuch')} readcap", cwd=REPO)
    assert (
        r.returncode == 2
        and r.stderr
        == f"vfs scsi: {mnt.p('devices/nosuch')} is not a device directory (one like /mnt/vfs/devices/d0)\n"
    )


def test_scsi_file_framing_from_python(mnt: Mount) -> None:
    from backends.tcmu import sg

    make_device(mnt, "r", "ram/", 4 * MiB)
    fd = os.open(mnt.p("devices/r/scsi"), os.O_RDWR)
    try:
        os.write(fd, sg.encode_request(bytes([0x12, 0, 0, 0, 36, 0]), b"", 36))
        status, sense, data = sg.decode_response(os.read(fd, 4096))
        assert status == 0 and sense == b"" and data[8:15] == b"LIO-ORG"
        try:
            os.write(fd, b"nonsense")
            raise AssertionError("bad framing accepted")
        except OSError as e:
            assert e.errno == 22
        assert b"header" in os.read(fd, 4096)
    finally:
        os.close(fd)


def test_resize_while_enabled_and_unit_attention(mnt: Mount) -> None:
    make_device(mnt, "f", image(mnt, "grow.img"), 8 * MiB)
    events = subprocess.Popen(["cat", str(mnt.p("devices/f/events"))], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        assert mnt.sh(f"echo {16 * MiB} > devices/f/size").returncode == 0
        assert events.stdout is not None
        event = json.loads(events.stdout.readline())
        assert event["event"] == "capacity_changed" and event["size"] == 16 * MiB and event["device"] == "f"
    finally:
        events.kill()
        events.wait()
    assert os.stat(mnt.p("devices/f/data")).st_size == 16 * MiB
    assert os.stat(f"{mnt.state_dir}/images/grow.img").st_size == 16 * MiB
    ua = vfs_scsi(mnt, "f", "tur")
    assert (
        ua["status"] == "CHECK CONDITION"
        and ua["sense"]["key"] == "UNIT ATTENTION"
        and ua["sense"]["asc"] == "2a"
    )
    assert vfs_scsi(mnt, "f", "tur") == {"status": "GOOD"}
    assert vfs_scsi(mnt, "f", "readcap")["bytes"] == 16 * MiB
    assert "Device or resource busy" in mnt.sh("echo 4096 > devices/f/block_size").stderr


def test_resizes_under_writes_lose_nothing(mnt: Mount) -> None:
    """A ram device grown step by step while a writer keeps overwriting its first 8 MiB and a
    reader reads it (reads are views of the memory that each resize remaps): every write that
    returned is in the device afterwards, every read and every resize succeeds."""
    make_device(mnt, "g", "ram/", 16 * MiB)

    def until_stopped(script: str, **kw: Any) -> subprocess.Popen[Any]:
        """A Python loop on the device's data file that runs until the stop file appears."""
        argv = [sys.executable, "-c", script, str(mnt.p("devices/g/data")), str(mnt.state_dir / "stop")]
        return subprocess.Popen(argv, **kw)

    reader = until_stopped(
        "import os, random, sys\n"
        "fd, n = os.open(sys.argv[1], os.O_RDONLY), 0\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    assert len(os.pread(fd, 1 << 20, random.randrange(16) << 20)) == 1 << 20\n"
        "    n += 1\n"
        "print(n)\n",
        stdout=subprocess.PIPE,
        text=True,
    )
    writer = until_stopped(
        "import os, random, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "model = bytearray(8 << 20)\n"
        "sys.stdout.write('go\\n'); sys.stdout.flush()\n"
        "while sys.stdin.read(1) == '':\n"
        "    pass\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    off = random.randrange(2048) * 4096\n"
        "    block = os.urandom(4096)\n"
        "    os.pwrite(fd, block, off)\n"
        "    model[off:off + 4096] = block\n"
        "sys.stdout.buffer.write(model)\n",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin is not None and writer.stdout is not None
    assert writer.stdout.readline() == b"go\n"
    writer.stdin.write(b"x")
    writer.stdin.close()
    for step in range(1, 9):
        r = mnt.sh(f"echo {(16 + 8 * step) * MiB} > devices/g/size")
        assert r.returncode == 0, r.stderr
    (mnt.state_dir / "stop").touch()
    model = writer.stdout.read()
    assert writer.wait(30) == 0
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0 and int(out) > 0
    assert mnt.p("devices/g/data").read_bytes()[: 8 * MiB] == model
    # shrink, then grow: the kept part stays, the part given up comes back as zeros
    assert mnt.sh(f"echo {4 * MiB} > devices/g/size && echo {8 * MiB} > devices/g/size").returncode == 0
    data = mnt.p("devices/g/data").read_bytes()
    assert data[: 4 * MiB] == model[: 4 * MiB] and data[4 * MiB :] == bytes(4 * MiB)


def test_device_events_reach_the_tcmu_handle(mnt: Mount) -> None:
    make_device(mnt, "r", "ram/", 4 * MiB)
    reader = subprocess.Popen(["cat", str(mnt.p("mgmt/tcmu/events"))], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        mnt.sh(f"echo {8 * MiB} > devices/r/size")
        assert reader.stdout is not None
        event = json.loads(reader.stdout.readline())
        assert event["callback"] == "event" and event["params"][:2] == ["r", "capacity_changed"]
        assert json.loads(event["params"][2]) == {"size": 8 * MiB}
    finally:
        reader.kill()
        reader.wait()
    assert os.listdir(mnt.p("mgmt/tcmu/instances")) == ["1"]
    assert mnt.p("mgmt/tcmu/instances/1/name").read_text() == "r\n"


def test_a_removed_devices_events_reader_drains_then_gets_enodev(mnt: Mount) -> None:
    make_device(mnt, "gone", "ram/", 4 * MiB)
    reader = subprocess.Popen(
        ["cat", str(mnt.p("devices/gone/events"))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        r = mnt.sh(
            f"echo {8 * MiB} > devices/gone/size && echo 0 > devices/gone/enable && rmdir devices/gone"
        )
        assert r.returncode == 0, r.stderr
        out, err = reader.communicate(timeout=10)
    finally:
        reader.kill()
        reader.wait()
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "capacity_changed" in events  # what was queued is read first
    assert reader.returncode != 0 and "No such device" in err


def test_cfgstring_outside_image_dirs_is_refused(mnt: Mount, tmp_path: Path) -> None:
    os.symlink("/etc", f"{mnt.state_dir}/images/escape")
    for config in (
        "file//etc/passwd",
        f"file/{mnt.state_dir}/images/escape/passwd",
        f"file/{mnt.state_dir}/images/../x",
    ):
        assert mnt.sh("mkdir devices/bad").returncode == 0
        r = mnt.sh(f"echo '{config}' > devices/bad/config")  # refused at the write, not at enable
        assert "Permission denied" in r.stderr, config
        assert "outside the image dirs" in mnt.p("devices/bad/last_error").read_text()
        assert mnt.p("devices/bad/config").read_text() in ("\n", "-\n", "")  # nothing staged
        assert mnt.sh("rmdir devices/bad").returncode == 0
    assert "Invalid argument" in mnt.sh("mkdir devices/x && echo nosuch/ > devices/x/config").stderr


def test_rmdir_enabled_device_is_busy(mnt: Mount) -> None:
    make_device(mnt, "r", "ram/", MiB)
    assert "Device or resource busy" in mnt.sh("rmdir devices/r").stderr
    assert "enabled" in mnt.p("devices/r/last_error").read_text()
    assert mnt.sh("echo 0 > devices/r/enable && rmdir devices/r").returncode == 0
    assert os.listdir(mnt.p("devices")) == []


def test_second_daemon_is_refused_the_write_lock(mnt: Mount, tmp_path: Path, mounts: list[Mount]) -> None:
    images = Path(f"{mnt.state_dir}/images")
    make_device(mnt, "f", image(mnt, "shared.img"), 4 * MiB)
    other = Mount(tmp_path, "other", extra=("--image-dir", str(images)))
    mounts.append(other)
    other.start()
    make_device(other, "f", f"file/{images}/shared.img", 4 * MiB)
    assert mnt.sh("echo 'lock 7' > devices/f/lock").returncode == 0
    assert mnt.p("devices/f/lock").read_text() == "write_locked 7\n"
    r = other.sh("echo 'lock 9' > devices/f/lock")
    assert "Device or resource busy" in r.stderr
    assert "held elsewhere (tag 7)" in other.p("devices/f/last_error").read_text()
    assert other.p("devices/f/lock").read_text() == "unlocked 7\n"  # the holder's tag, readable by both
    assert mnt.sh("echo unlock > devices/f/lock").returncode == 0
    assert other.sh("echo 'lock 9' > devices/f/lock").returncode == 0
    assert mnt.p("devices/f/lock").read_text() == "unlocked 9\n"


def test_device_restored_with_its_data_after_kill_9(mnt: Mount, tmp_path: Path) -> None:
    make_device(mnt, "f", image(mnt, "keep.img"), 8 * MiB)
    make_device(mnt, "staged", "ram/", MiB, enable=False)
    src = tmp_path / "rand"
    src.write_bytes(os.urandom(8 * MiB))
    assert mnt.sh(f"dd if={src} of=devices/f/data bs=1M status=none").returncode == 0
    os.kill(mnt.pid, signal.SIGKILL)
    mnt.proc.wait(5)  # type: ignore[union-attr]
    mnt.start()
    assert sorted(os.listdir(mnt.p("devices"))) == ["f", "staged"]
    assert (
        mnt.p("devices/f/enable").read_text() == "1\n" and mnt.p("devices/staged/enable").read_text() == "0\n"
    )
    assert mnt.p("devices/f/data").read_bytes() == src.read_bytes()
    assert mnt.p("devices/staged/config").read_text() == "ram/\n"
    # a clean stop keeps the devices enabled too
    mnt.stop()
    mnt.start()
    assert mnt.p("devices/f/enable").read_text() == "1\n"


def test_write_cache_off_and_fsync(mnt: Mount) -> None:
    make_device(mnt, "f", image(mnt, "wc.img"), 4 * MiB)
    assert (
        mnt.sh(
            "echo 0 > devices/f/write_cache && dd if=/dev/urandom of=devices/f/data bs=64k count=4 "
            "conv=notrunc status=none"
        ).returncode
        == 0
    )
    stats = mnt.p("devices/f/stats").read_text()
    assert "flush_ops 4" in stats  # each write made durable before it returned
    assert (
        mnt.sh("dd if=/dev/zero of=devices/f/data bs=4k count=1 conv=notrunc,fsync status=none").returncode
        == 0
    )
    # the write was flushed as it was written; the fsync then had nothing left to flush
    assert "flush_ops 5" in mnt.p("devices/f/stats").read_text()
    assert mnt.p("devices/f/write_cache").read_text() == "0\n"


def test_an_image_swapped_for_a_symlink_never_writes_outside(mnt: Mount, tmp_path: Path) -> None:
    """The attack: race.img flips between a file and a symlink to a file outside the image dirs
    while devices are configured, enabled and written (before: 91 of 2,000 enables escaped)."""
    images = Path(f"{mnt.state_dir}/images")
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret".ljust(4096, b"\0"))
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            (images / "real").write_bytes(b"")
            os.replace(images / "real", images / "race.img")
            (images / "swap").unlink(missing_ok=True)
            (images / "swap").symlink_to(outside)
            os.replace(images / "swap", images / "race.img")

    assert mnt.sh("mkdir devices/r && echo 4096 > devices/r/size").returncode == 0
    flipper = threading.Thread(target=flip)
    flipper.start()
    enabled = 0
    try:
        for _ in range(200):
            r = mnt.sh(
                f"echo 'file/{images}/race.img' > devices/r/config && echo 1 > devices/r/enable && echo on && "
                "printf pwned | dd of=devices/r/data conv=notrunc 2>/dev/null; echo 0 > devices/r/enable"
            )
            enabled += r.stdout.startswith("on")
    finally:
        stop.set()
        flipper.join()
    assert outside.read_bytes() == b"secret".ljust(4096, b"\0")
    assert 0 < enabled < 200  # both outcomes happened: the race was run


def test_tcmu_conf_is_followed_while_mounted(tmp_path: Path, mounts: list[Mount]) -> None:
    """tcmu-runner's tcmu.conf, edited with echo and sed while mounted, as an admin would."""
    conf = tmp_path / "tcmu.conf"
    conf.write_text('# Master TCMU configuration file\nlog_level = 2\n# log_dir = "/var/log"\n')
    m = Mount(tmp_path, extra=("--tcmu-conf", str(conf)))
    mounts.append(m.start())
    level = m.p("mgmt", "tcmu", "keys", "logLevel")
    assert level.read_text().strip() == "warning"
    assert run(f"sed -i 's/^log_level = 2/log_level = 4/' {conf}").returncode == 0
    wait_for(lambda: level.read_text().strip() == "debug")
    assert run(f"echo 'log_dir = \"{tmp_path}/logs\"' >> {conf}").returncode == 0
    wait_for(lambda: (tmp_path / "logs" / "vfs-tcmu.log").exists())
    make_device(m, "d", "ram/", MiB)
    assert "device d opened: ram/, 1048576 bytes" in (tmp_path / "logs" / "vfs-tcmu.log").read_text()
    assert run(f"sed -i 's/^log_level = 4/log_level = seven/' {conf}").returncode == 0
    wait_for(lambda: "log_level is 0..5" in m.log_text())
    assert level.read_text().strip() == "debug"  # a bad value keeps the level
