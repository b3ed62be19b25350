"""The workload groups: device data path, channels, keys and small files, scale (the kernel
group is bench/kernel.py). Long because each group lists its workloads, references and targets
in one place, which is what a reader of the results looks for."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.harness import Bench, Row
from bench.targets import (
    REPO,
    UnavailableError,
    Vfs,
    ceph_cluster,
    minimal,
    nbdfuse,
    nbdfuse_over,
    nbdkit_socket,
    qsd_export,
    qsd_rbd_export,
    rss_kib,
    vfs,
)

MiB = 1 << 20


def fio(
    path: Path,
    rw: str,
    bs: str,
    direct: bool,
    size: int,
    jobs: int = 1,
    runtime: float | None = None,
    fsync: bool = False,
) -> tuple[float, float]:
    """(MB/s, IOPS) from one fio run on `path`."""
    argv = [
        "fio",
        "--name=b",
        f"--filename={path}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--direct={int(direct)}",
        f"--size={size}",
        "--ioengine=psync",
        f"--numjobs={jobs}",
        "--group_reporting",
        "--output-format=json",
        "--randrepeat=0",
        "--norandommap",
    ]
    if runtime:
        argv += ["--time_based", f"--runtime={runtime}"]
    if fsync:
        argv += ["--fsync=1"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(
            r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"fio exit {r.returncode}"
        )
    job = json.loads(r.stdout[r.stdout.index("{") :])["jobs"][0]
    side = job["read"] if "read" in rw else job["write"]
    return side["bw_bytes"] / 1e6, side["iops"]


Case = tuple[str, str, dict[str, Any], int]  # label, unit, fio's arguments, (MB/s, IOPS) index


def fio_cases(size: int, runtime: float, quick: bool) -> list[Case]:
    """The data path's fio workloads, each with its label and unit. Each runs for `runtime`
    seconds, going round its file again as needed: one pass of 256 MiB takes under 0.1 s at
    these speeds, where a hiccup of a few ms moves a row by 10 %."""
    every: dict[str, Any] = dict(size=size, runtime=runtime)
    return [
        ("seq read 1MiB direct", "MB/s", dict(rw="read", bs="1M", direct=True, **every), 0),
        ("seq write 1MiB direct", "MB/s", dict(rw="write", bs="1M", direct=True, **every), 0),
        ("seq read 1MiB buffered", "MB/s", dict(rw="read", bs="1M", direct=False, **every), 0),
        ("seq write 1MiB buffered", "MB/s", dict(rw="write", bs="1M", direct=False, **every), 0),
        ("rand read 4KiB direct 1 job", "MB/s", dict(rw="randread", bs="4k", direct=True, **every), 0),
        ("rand write 4KiB direct 1 job", "MB/s", dict(rw="randwrite", bs="4k", direct=True, **every), 0),
        (
            "rand read 4KiB direct 4 jobs",
            "MB/s",
            dict(rw="randread", bs="4k", direct=True, jobs=4, **every),
            0,
        ),
        (
            "rand write 4KiB direct 4 jobs",
            "MB/s",
            dict(rw="randwrite", bs="4k", direct=True, jobs=4, **every),
            0,
        ),
        (
            "fsync each 4KiB write",
            "IOPS",
            dict(
                rw="write", bs="4k", direct=False, size=MiB if quick else 8 * MiB, fsync=True, runtime=runtime
            ),
            1,
        ),
    ]


def fill(paths: list[Path], size: int, *dd: str) -> None:
    """Write `size` bytes of zeros over each of `paths` with dd."""
    for p in paths:
        argv = ["dd", "if=/dev/zero", f"of={p}", "bs=1M", f"count={size // MiB}", "conv=notrunc", *dd]
        subprocess.run([*argv, "status=none"], check=True)


def device_path(bench: Bench, base: Path, quick: bool) -> None:
    size = 16 * MiB if quick else 256 * MiB
    runtime = 0.5 if quick else 3
    shm = Path("/dev/shm") / f"vfs-bench-{os.getpid()}"
    shm.mkdir()
    images = shm / "images"
    images.mkdir()
    try:
        for name in ("tmpfs.img", "qsd.img", "nbd.img"):
            with open(shm / name, "wb") as f:
                f.truncate(size)
            subprocess.run(
                [
                    "dd",
                    "if=/dev/zero",
                    f"of={shm / name}",
                    "bs=1M",
                    f"count={size // MiB}",
                    "conv=notrunc",
                    "status=none",
                ],
                check=True,
            )
        with ExitStack() as stack:
            ours = stack.enter_context(vfs(base, state=shm / "state", image_dir=images))
            targets = {
                "ram": ours.device("ram0", "ram/", size),
                "file": ours.device("file0", f"file/{images}/ours.img", size),
            }
            refs: dict[str, Path] = {"tmpfs": shm / "tmpfs.img"}
            missing: dict[str, str] = {}
            for name, make in (
                ("qsd-fuse", lambda: qsd_export(shm / "qsd.img", base)),
                ("nbdfuse", lambda: nbdfuse(shm / "nbd.img", base)),
            ):
                try:
                    refs[name] = stack.enter_context(make())
                except UnavailableError as e:
                    missing[name] = str(e)
            refs["pyfuse3-min"] = stack.enter_context(minimal(base, size)) / "data"
            fill([*targets.values(), *refs.values()], size)  # pre-fault: no first-touch costs inside runs
            cases = fio_cases(size, runtime, quick)
            targets_for = {
                "seq": "≥2× qsd-fuse and nbdfuse; ≥0.8× pyfuse3-min",
                "rand": "≥1.0× qsd-fuse and nbdfuse",
            }
            for kind, ours_path in targets.items():
                for label, unit, args, index in cases:
                    row = Row(
                        "device",
                        f"{label} ({kind})",
                        unit,
                        missing=dict(missing),
                        target=targets_for.get(label.split()[0], ""),
                    )

                    def run(p: Path, args: dict[str, Any] = args, index: int = index) -> float:
                        return fio(p, **args)[index]

                    bench.measure(
                        row, lambda p=ours_path: run(p), {n: (lambda p=p: run(p)) for n, p in refs.items()}
                    )
    finally:
        shutil.rmtree(shm, ignore_errors=True)


HANDLER_ROWS = (
    "seq read 1MiB direct",
    "seq write 1MiB direct",
    "rand read 4KiB direct 4 jobs",
    "rand write 4KiB direct 4 jobs",
)


def handlers(bench: Bench, base: Path, quick: bool) -> None:
    """The `qcow`, `nbd` and `rbd` handlers against what a user would pick instead for the same
    job: qemu-storage-daemon's FUSE export of a qcow2 image, nbdfuse over the same nbdkit
    plugin, and qemu-storage-daemon's rbd driver through its FUSE export on the same one-node
    Ceph cluster (tests/ceph.py). Each side has its own image or server of the same kind and
    size; the qcow2 images are on /dev/shm."""
    size = 16 * MiB if quick else 256 * MiB
    runtime = 0.5 if quick else 3
    shm = Path("/dev/shm") / f"vfs-bench-h-{os.getpid()}"
    images = shm / "images"
    images.mkdir(parents=True)
    try:
        qcow = shm / "ref.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), str(size)], check=True)
        with ExitStack() as stack:
            refs: dict[str, dict[str, Path]] = {"qcow": {}, "nbd": {}, "rbd": {}}
            missing: dict[str, dict[str, str]] = {"qcow": {}, "nbd": {}, "rbd": {}}
            cluster = stack.enter_context(ceph_cluster(base / "ceph", bench))
            for kind, name, make in (
                ("qcow", "qsd-fuse qcow2", lambda: qsd_export(qcow, base, fmt="qcow2")),
                ("nbd", "nbdfuse", lambda: nbdfuse_over(base, "memory", str(size))),
                ("rbd", "qsd-fuse rbd", lambda: qsd_rbd_export(cluster, "ref", size, base)),
            ):
                if kind == "rbd" and cluster is None:
                    continue
                try:
                    refs[kind][name] = stack.enter_context(make())
                except UnavailableError as e:
                    missing[kind][name] = str(e)
            sock = stack.enter_context(nbdkit_socket(images / "mem.sock", "memory", str(size)))
            ours = stack.enter_context(vfs(base, state=shm / "state", image_dir=images))  # stops first
            targets = {
                "qcow": ours.device("qcow0", f"qcow/{images}/ours.qcow2", size),
                "nbd": ours.device("nbd0", f"nbd/unix:{sock}", size),
            }
            if cluster is not None:
                cluster.run("rbd", "create", "--size", str(size // MiB), "rbd/ours")
                targets["rbd"] = ours.device("rbd0", "rbd/rbd/ours", size)
            # every cluster allocated first: runs measure I/O, not allocation
            fill([*targets.values(), *(p for r in refs.values() for p in r.values())], size, "oflag=direct")
            cases = [c for c in fio_cases(size, runtime, quick) if c[0] in HANDLER_ROWS]
            for kind, path in targets.items():
                for label, unit, args, index in cases:
                    row = Row(
                        "handlers", f"{label} ({kind})", unit, missing=dict(missing[kind]), target="≥1.0×"
                    )

                    def run(p: Path, args: dict[str, Any] = args, index: int = index) -> float:
                        return fio(p, **args)[index]

                    bench.measure(
                        row, lambda p=path: run(p), {n: (lambda p=p: run(p)) for n, p in refs[kind].items()}
                    )
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def ipc(*args: str) -> float:
    r = subprocess.run(
        [sys.executable, "-m", "bench.ipc", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip()[-200:])
    return float(r.stdout.strip())


def pair(reader_args: list[str], writer_args: list[str]) -> float:
    """Start the reader, then the writer; seconds from the writer's first transfer (its file
    open) until both are done, as the helpers report them — interpreter start-up not counted,
    as the pipe and socket references, timed inside one process, do not count it either."""
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.ipc", *reader_args], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.2)  # the reader listens first
    writer = subprocess.run(
        [sys.executable, "-m", "bench.ipc", *writer_args], cwd=REPO, capture_output=True, text=True
    )
    out, _ = reader.communicate(timeout=600)
    if writer.returncode or reader.returncode:
        raise RuntimeError(writer.stderr[-300:])
    w_start, w_end = map(float, writer.stdout.split())
    r_end = float(out.split()[1])
    return max(w_end, r_end) - w_start


def channels(bench: Bench, base: Path, quick: bool) -> None:
    total = 16 * MiB if quick else 256 * MiB
    msgs = 2000 if quick else 20000
    rounds = 500 if quick else 5000
    with vfs(base) as ours, minimal(base, MiB) as mini:
        ch = ours.mnt / "channels" / "b"
        ours.sh(  # order 4 (64 KiB rings): the largest v2v's connect accepts
            "mkdir channels/b && echo 4 > channels/b/prod_ring_order && echo 4 > channels/b/cons_ring_order"
        )
        count = total // MiB
        row = Row("channels", "stream, 1 MiB writes", "MB/s", target="≥0.5× pipe")
        bench.measure(
            row,
            lambda: (
                total
                / 1e6
                / pair(
                    ["read", f"{ch}/listener/stream", str(MiB), str(count)],
                    ["write", f"{ch}/connector/stream", str(MiB), str(count)],
                )
            ),
            {"pipe": lambda: total / 1e6 / ipc("local", "pipe", "stream", str(MiB), str(count))},
        )

        def msg_rate(reader: Path, writer: Path, size: int) -> float:
            amounts = [str(size), str(msgs)]
            return msgs / pair(["read", str(reader), *amounts], ["write", str(writer), *amounts])

        for size in (64, 4096):
            row = Row(
                "channels", f"msg one way, {size} B", "msg/s", target="≥10,000 msg/s" if size == 64 else ""
            )
            bench.measure(
                row,
                lambda s=size: msg_rate(ch / "listener/msg", ch / "connector/msg", s),
                {
                    "pipe": lambda s=size: msgs / ipc("local", "pipe", "msg", str(s), str(msgs)),
                    "seqpacket": lambda s=size: msgs / ipc("local", "seqpacket", "msg", str(s), str(msgs)),
                    # the binding's ceiling for a blocking message file (bench/minimal_fs.py)
                    "pyfuse3-min": lambda s=size: msg_rate(mini / "msg", mini / "msg", s),
                },
            )
        row = Row("channels", "msg ping-pong, 64 B", "µs/rtt", higher_is_better=False)

        def ours_rtt() -> float:
            elapsed = pair(
                ["echo", f"{ch}/listener/msg", "64", str(rounds)],
                ["pingpong", f"{ch}/connector/msg", "64", str(rounds)],
            )
            return elapsed / rounds * 1e6

        bench.measure(
            row,
            ours_rtt,
            {
                "pipe": lambda: ipc("local", "pipe", "pingpong", "64", str(rounds)) / rounds * 1e6,
                "seqpacket": lambda: ipc("local", "seqpacket", "pingpong", "64", str(rounds)) / rounds * 1e6,
            },
        )


def _loop(n: int, fn: Any) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def _get(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    os.read(fd, 4096)
    os.close(fd)


def _set(path: Path, value: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, value)
    os.close(fd)


def keys(bench: Bench, base: Path, quick: bool) -> None:
    n = 500 if quick else 5000
    entries = 500 if quick else 10000
    tmp = base / "tmpfs-keys"
    shm = Path("/dev/shm") / f"vfs-bench-keys-{os.getpid()}"
    shm.mkdir()
    try:
        (shm / "key").write_text("42\n")
        with vfs(base) as ours, minimal(base, MiB) as mini:
            key = ours.mnt / "mgmt/example/keys/counter"
            bench.measure(
                Row("keys", "LONG key get (open/read/close)", "ops/s", target="≥0.8× pyfuse3-min"),
                lambda: _loop(n, lambda: _get(key)),
                {
                    "pyfuse3-min": lambda: _loop(n, lambda: _get(mini / "key")),
                    "tmpfs": lambda: _loop(n, lambda: _get(shm / "key")),
                },
            )
            bench.measure(
                Row("keys", "LONG key set (open/write/close)", "ops/s"),
                lambda: _loop(n, lambda: _set(key, b"7\n")),
                {
                    "pyfuse3-min": lambda: _loop(n, lambda: _set(mini / "key", b"7\n")),
                    "tmpfs": lambda: _loop(n, lambda: _set(shm / "key", b"7\n")),
                },
            )
            ours.sh("mkdir devices/d0")
            (shm / "d0").mkdir()
            bench.measure(
                Row("keys", "stat of a device directory", "ops/s"),
                lambda: _loop(n, lambda: os.stat(ours.mnt / "devices/d0")),
                {
                    "pyfuse3-min": lambda: _loop(n, lambda: os.stat(mini)),
                    "tmpfs": lambda: _loop(n, lambda: os.stat(shm / "d0")),
                },
            )
            ours.sh(f"for i in $(seq 1 {entries - 1}); do mkdir devices/n$i; done")
            (shm / "many").mkdir()
            for i in range(entries):
                (shm / "many" / f"n{i}").mkdir()

            def ls(path: Path) -> float:
                start = time.perf_counter()
                subprocess.run(["ls", "-l", str(path)], stdout=subprocess.DEVNULL, check=True)
                return time.perf_counter() - start

            bench.measure(
                Row(
                    "keys",
                    f"ls -l devices/ ({entries} entries)",
                    "s",
                    higher_is_better=False,
                    target="< 1 s at 10,000",
                ),
                lambda: ls(ours.mnt / "devices"),
                {"tmpfs": lambda: ls(shm / "many")},
            )
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def scale(bench: Bench, base: Path, quick: bool) -> None:
    sizes = (100, 400) if quick else (1000, 10000)
    per_item: dict[str, list[float]] = {}
    for n in sizes:
        state = Path("/dev/shm") / f"vfs-bench-scale-{os.getpid()}-{n}"
        state.mkdir()
        work = base / f"scale-{n}"
        work.mkdir()
        try:
            ours = Vfs(work, state=state / "state")
            ours.start()
            try:
                t0 = time.perf_counter()
                ours.sh(
                    f"for i in $(seq 1 {n}); do mkdir devices/d$i && echo ram/ > devices/d$i/config && "
                    f"echo 1048576 > devices/d$i/size && echo 1 > devices/d$i/enable; done"
                )
                create = time.perf_counter() - t0
                t0 = time.perf_counter()
                subprocess.run(["ls", "-l", str(ours.mnt / "devices")], stdout=subprocess.DEVNULL, check=True)
                listing = time.perf_counter() - t0
                rss_devices = rss_kib(ours.pid) / 1024
            finally:
                ours.stop()
            restore = ours.start()
            try:
                rss_restored = rss_kib(ours.pid) / 1024
                slots, worlds = max(1, n // 100), 100
                t0 = time.perf_counter()
                ours.sh(
                    f"for s in $(seq 1 {slots}); do mkdir storage/s$s && echo 64 > storage/s$s/size && "
                    f"echo 1 > storage/s$s/enable; done"
                )
                script = (
                    "import os,sys,time\n"
                    f"for s in range(1,{slots}+1):\n"
                    f"    fd = os.open('{ours.mnt}/storage/s%d/self' % s, os.O_WRONLY)\n"
                    "    os.write(fd, b'x'); os.close(fd)\n"
                    "sys.stdout.write('ok\\n'); sys.stdout.flush(); time.sleep(600)\n"
                )
                procs = [
                    subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
                    for _ in range(worlds)
                ]
                for p in procs:
                    assert p.stdout is not None
                    p.stdout.readline()
                blocks_time = time.perf_counter() - t0
                rss_blocks = rss_kib(ours.pid) / 1024
                for p in procs:
                    p.kill()
                    p.wait()
                chans = max(1, n // 10)
                t0 = time.perf_counter()
                ours.sh(f"for i in $(seq 1 {chans}); do mkdir channels/c$i; done")
                chan_time = time.perf_counter() - t0
                t0 = time.perf_counter()
                subprocess.run(
                    ["ls", "-l", str(ours.mnt / "channels")], stdout=subprocess.DEVNULL, check=True
                )
                chan_ls = time.perf_counter() - t0
                rss_all = rss_kib(ours.pid) / 1024
            finally:
                ours.stop()
            try:
                restore_all = ours.start()  # devices, slots and channels come back together
            finally:
                ours.stop()
                subprocess.run(["fusermount3", "-u", "-z", str(ours.mnt)], capture_output=True)
            idle = Vfs(work, state=state / "idle-channels")  # channels alone, none open
            idle.start()
            try:
                idle.sh(f"mkdir $(seq -f channels/i%g 1 {n}) && ls channels > /dev/null")
                rss_idle = rss_kib(idle.pid) / 1024
            finally:
                idle.stop()
        finally:
            shutil.rmtree(state, ignore_errors=True)
        big = n == sizes[-1]
        for label, value, unit, target in [
            (f"create {n} ram devices", create, "s", ""),
            (f"restore {n} devices at mount", restore, "s", "< 3 s at 10,000" if big else ""),
            (f"ls -l devices/ ({n})", listing, "s", "< 1 s at 10,000" if big else ""),
            (f"RSS with {n} devices", rss_devices, "MiB", "< 300 MiB" if big else ""),
            (f"RSS after restore ({n})", rss_restored, "MiB", ""),
            (f"{slots * worlds} blocks in {slots} slots", blocks_time, "s", ""),
            (f"RSS with {slots * worlds} blocks", rss_blocks, "MiB", ""),
            (f"create {chans} channels", chan_time, "s", ""),
            (f"ls -l channels/ ({chans})", chan_ls, "s", ""),
            (f"RSS, everything ({n})", rss_all, "MiB", "< 300 MiB" if big else ""),
            (f"restore everything at mount ({n})", restore_all, "s", ""),
            (
                f"RSS with {n} idle channels",
                rss_idle,
                "MiB",
                "< 100 MiB at 10,000" if big else "",
            ),
        ]:
            bench.single(Row("scale", label, unit, higher_is_better=False, ours=[value], target=target))
        per_item.setdefault("create", []).append(create / n)
        per_item.setdefault("restore", []).append(restore / n)
        per_item.setdefault("ls", []).append(listing / n)
    for what, costs in per_item.items():
        growth = costs[-1] / costs[0] if costs[0] else 0
        bench.single(
            Row(
                "scale",
                f"{what}: cost per item, {sizes[-1]} vs {sizes[0]}",
                "x",
                higher_is_better=False,
                ours=[growth],
                target="≈1 (linear)",
            )
        )
