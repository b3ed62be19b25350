"""The `vfs` management handle: the daemon's own keys (`logLevel`, live and persistent)."""

from __future__ import annotations

import logging
import time
from typing import Any

from backends.mgmt import ApiSignature, KeyType, MgmtError, Status
from vfs import __version__
from vfs.context import Context

LEVELS = ("debug", "info", "warning", "error")


def setup(ctx: Context) -> None:
    started = time.time()
    version = tuple(int(p) for p in __version__.split(".")) + (0,)
    handle = ctx.mgmt.init(ApiSignature("vfs", "vfs", version[:4]))

    def get_level(_: Any) -> str:
        return logging.getLevelName(logging.getLogger().level).lower()

    def set_level(_: Any, value: str) -> None:
        if value.lower() not in LEVELS:
            raise MgmtError(Status.BAD_PARAM, f"logLevel is one of {', '.join(LEVELS)}, not {value!r}")
        logging.getLogger().setLevel(value.upper())

    handle.add_key(
        KeyType.STRING,
        "logLevel",
        get_level,
        set_level,
        persistent=True,
        description="daemon log level: debug, info, warning or error",
    )
    handle.add_key(
        KeyType.LONG,
        "uptime",
        lambda _: int(time.time() - started),
        None,
        description="seconds since the daemon started",
    )
    handle.add_key(
        KeyType.STRING,
        "stateDir",
        lambda _: str(ctx.options.state_dir),
        None,
        description="where definitions persist",
    )
