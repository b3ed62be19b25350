"""The root of the tree: `version`, the root `status`, and the top-level directories."""

from __future__ import annotations

import os
import time
from typing import Any

import vfs
from vfs.tree.nodes import StaticDir
from vfs.tree.objects import ObjectDir
from vfs.tree.values import constant


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
