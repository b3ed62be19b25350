"""The root of the tree: `version`, the root `status`, and the top-level directories."""

from __future__ import annotations

import os
import time
from typing import Any

import vfs
from vfs.tree.nodes import StaticDir
from vfs.tree.objects import ObjectDir
from vfs.tree.values import constant

README = """This is a vfs mount: kernel-style systems as files and directories.

  version     the daemon's version            status   pid, mount point, state dir, uptime, counters
  metrics     Prometheus text of it all       last_error  why the last refused request was refused
  events      every object's events as JSON Lines, as they happen (cat events | jq .)
  mgmt/       management handles (vmkapi mgmt): keys, instances, events, call
  storage/    per-world storage slots (mkdir a slot, enable it; each process reads storage/<slot>/self)
  worlds/     the processes that hold blocks, by pid; gone with the process
  handlers/   TCMU backstore handlers (file, nbd, qcow, ram, rbd, ...); handlers/load adds one
  devices/    TCMU devices: mkdir, write config and size, echo 1 > enable, then data is the disk
  channels/   v2v channels: NC2 shared-memory rings as stream and message files per end

Each object directory has its own status and last_error. `vfs --help` and `vfs manpage` for the
command; the files are documented in docs/ of the source: docs/tcmu.md, docs/v2v.md,
docs/storage.md, docs/mgmt.md, docs/operations.md (permissions, persistence, metrics).
"""


class Root(ObjectDir):
    """`top_level` names the subsystems' directories: each stays, empty, if its subsystem
    fails to set up, so the tree's shape never depends on what loaded."""

    def __init__(self, mountpoint: str, state_dir: str, top_level: list[str]) -> None:
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.started = time.time()
        self.counters: dict[str, Any] = {}
        super().__init__(self.status)
        self.add("version", constant(vfs.__version__))
        self.add("README", constant(README))
        for name in top_level:
            self.add(name, StaticDir())

    def status(self) -> dict[str, Any]:
        return {
            "version": vfs.__version__,
            "pid": os.getpid(),
            "mountpoint": self.mountpoint,
            "state_dir": self.state_dir,
            "uptime": int(time.time() - self.started),
            **{k: v() if callable(v) else v for k, v in self.counters.items()},
        }
