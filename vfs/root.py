"""The root of the tree: `version`, the root `status`, and the six top-level directories."""

from __future__ import annotations

import os
import time
from typing import Any

import vfs
from vfs.attrs import constant
from vfs.nodes import StaticDir
from vfs.objects import ObjectDir

TOP_LEVEL = ("mgmt", "storage", "worlds", "handlers", "devices", "channels")


class Root(ObjectDir):
    def __init__(self, mountpoint: str, state_dir: str) -> None:
        self.mountpoint = mountpoint
        self.state_dir = state_dir
        self.started = time.time()
        self.counters: dict[str, Any] = {}
        super().__init__(self.status)
        self.add("version", constant(vfs.__version__))
        for name in TOP_LEVEL:
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
