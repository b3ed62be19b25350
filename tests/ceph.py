"""A real one-node Ceph cluster for the rbd tests, made from Debian's ceph 16 packages by hand
(no cephadm): one mon, one mgr, one OSD on BlueStore in a sparse file, pool `rbd` of size 1,
auth off, everything under one directory and on one free loopback port. Up in ~10 s."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

DAEMONS = ("ceph-mon", "ceph-mgr", "ceph-osd", "monmaptool", "rbd", "ceph")


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return f"{', '.join(absent)} not installed (setup-debian --test: ceph-mon ceph-mgr ceph-osd)"
    return None


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "ceph.conf"
        self.env = {**os.environ, "CEPH_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 60) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()[-500:]}")
        return r.stdout

    def up(self) -> Cluster:
        shutil.rmtree(self.root, ignore_errors=True)
        for d in ("mon", "osd/osd.0", "mgr/mgr.x", "run", "log"):
            (self.root / d).mkdir(parents=True)
        fsid = str(uuid.uuid4())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        r = self.root
        self.conf.write_text(
            f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{port}
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 2147483648
bluestore fsck on mkfs = false
bluestore cache size = 67108864
osd memory target = 536870912
run dir = {r}/run
log file = {r}/log/$name.log
pid file = {r}/run/$name.pid
mon data = {r}/mon/$name
osd data = {r}/osd/$name
mgr data = {r}/mgr/$name
ms bind ipv6 = false
[client]
rbd cache = false
[mon]
mon data avail crit = 1
admin socket = {r}/run/$name.asok
[osd]
admin socket = {r}/run/$name.asok
[mgr]
admin socket = {r}/run/$name.asok
"""
        )
        self.run(
            "monmaptool", "--create", "--add", "a", f"v2:127.0.0.1:{port}", "--fsid", fsid, str(r / "monmap")
        )
        self.run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(r / "monmap"))
        self.run("ceph-mon", "-i", "a")
        self.run("ceph", "-s", "--connect-timeout", "20")
        self.run("ceph-mgr", "-i", "x")
        osd = self.run("ceph", "osd", "create").strip()
        assert osd == "0", osd
        self.run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", str(uuid.uuid4()), timeout=120)
        self.start_osd()
        self.run("ceph", "osd", "pool", "create", "rbd", "8")
        self.run("rbd", "pool", "init", "rbd", timeout=120)
        return self

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.root / "run" / f"{name}.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start_osd(self) -> None:
        self.run("ceph-osd", "-i", "0")
        deadline = time.monotonic() + 60
        while "1 up" not in self.run("ceph", "osd", "stat"):
            if time.monotonic() > deadline:
                raise RuntimeError("osd.0 did not come up")
            time.sleep(0.5)

    def stop_osd(self) -> None:
        pid = self.pid("osd.0")
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            while self.pid("osd.0") is not None:
                time.sleep(0.1)

    def down(self) -> None:
        for name in ("osd.0", "mgr.x", "mon.a"):
            pid = self.pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
