"""What a handler reports from wherever it notices (tcmu_notify_lock_lost,
tcmu_notify_conn_lost), and the reopen that follows a lost connection: the device is closed
and opened again once a second until it opens, as tcmu-runner's recovery does; meanwhile its
commands get BUSY, which initiators retry, and `data` gives EBUSY."""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from backends.tcmu.core import Tcmu
    from backends.tcmu.device import Device

log = logging.getLogger("vfs.tcmu")
RETRY = 1.0  # seconds between reopen attempts


def from_any_thread(core: Tcmu, fn: object) -> None:
    """Run `fn()` on the event loop soon, from the loop's thread or any other; never blocks."""
    assert core.token is not None, "no device was enabled: nothing can report yet"
    core.token.run_sync_soon(fn)  # type: ignore[arg-type]


def lock_lost(core: Tcmu, dev: Device) -> None:
    log.warning("device %s: its handler lost the lock to another client", dev.name)
    dev.emit("lock_lost")
    _report(dev)


def conn_lost(core: Tcmu, dev: Device) -> None:
    log.warning("device %s: its handler lost its connection; reopening", dev.name)
    dev.emit("conn_lost")
    _report(dev)
    if dev.enabled and not dev.recovering:
        dev.recovering = True
        core.spawn(reopen, core, dev)


def _report(dev: Device) -> None:
    handler = dev.handler
    if handler is not None and handler.report_event is not None:
        try:
            handler.report_event(dev)
        except Exception:
            log.exception("handler %s failed in report_event", handler.subtype)


async def reopen(core: Tcmu, dev: Device) -> None:
    handler, engine = dev.handler, dev.engine
    try:
        if handler is None or engine is None:
            return
        async with engine.paused():  # those in flight end first (the handler fails or finishes them)
            try:
                await core.run_callout(handler.open_blocks, handler.close, dev)
            except Exception:
                log.exception("handler %s failed in close", handler.subtype)
            dev.opened = False
            tries = 0
            while dev.enabled and not dev.removed and not core.closing:
                tries += 1
                try:
                    rc = await core.run_callout(handler.open_blocks, handler.open, dev, True)
                except Exception as e:
                    rc = -errno.EIO
                    log.error("device %s: reopen failed: %s: %s", dev.name, type(e).__name__, e)
                if rc == 0:
                    dev.opened = True
                    break
                await trio.sleep(RETRY)
        if dev.opened:
            log.info("device %s reopened after %d attempt(s)", dev.name, tries)
            dev.emit("reopened", attempts=tries)
    finally:
        dev.recovering = False
