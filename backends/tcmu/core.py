"""All handlers and devices of one daemon (what tcmu-runner's main loop and libtcmu manage)."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from backends.errors import VfsError
from backends.names import check_name
from backends.tcmu.device import DEFAULT_MAX_XFER_BYTES, Device
from backends.tcmu.engine import Engine
from backends.tcmu.handler import Handler

log = logging.getLogger("vfs.tcmu")
RESERVED_SUBTYPES = {"load"}  # handlers/load is how handlers are loaded at run time


class Tcmu:
    """`spawn(fn, *args)` starts background tasks; `on_change(dev)`/`on_forget(name)` persist
    definitions; `on_event(dev, record)` hears every device event (for the mgmt handle)."""

    def __init__(
        self,
        spawn: Callable[..., None],
        on_change: Callable[[Device], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
        on_event: Callable[[Device, dict[str, Any]], None] | None = None,
    ) -> None:
        self.spawn = spawn
        self._on_change = on_change or (lambda dev: None)
        self._on_forget = on_forget or (lambda name: None)
        self.on_event = on_event or (lambda dev, record: None)
        self.handlers: dict[str, Handler] = {}
        self.devices: dict[str, Device] = {}
        self.closing = False  # at shutdown devices close, but their saved state stays "enabled"
        self._watching = False
        self.kernel_devices: Any = None  # KernelDevices, where the daemon serves the kernel
        self.token: trio.lowlevel.TrioToken | None = None  # for reports from handler threads

    # ---- handlers -----------------------------------------------------------------------------

    def register_handler(self, handler: Handler) -> None:
        """tcmur_register_handler: unique subtype; a failing init() rejects the handler."""
        subtype = handler.subtype
        if not subtype or "/" in subtype or not handler.name:
            raise VfsError(
                errno.EINVAL, f"handler {type(handler).__name__} needs a name and a subtype without '/'"
            )
        if subtype in self.handlers:
            raise VfsError(errno.EEXIST, f"a handler for subtype {subtype} is already registered")
        if subtype in RESERVED_SUBTYPES:
            raise VfsError(errno.EINVAL, f"{subtype} names a file of handlers/, not a handler")
        if handler.nr_threads < 0:
            raise VfsError(errno.EINVAL, f"handler {subtype}: nr_threads must be >= 0")
        if handler.init is not None:
            rc = handler.init()
            if rc:
                raise VfsError(errno.EIO, f"handler {subtype}: init() failed ({rc})")
        self.handlers[subtype] = handler

    def unregister_handler(self, subtype: str) -> None:
        """tcmur_unregister_handler: refused while a device uses it; destroy() runs after."""
        handler = self.handlers.get(subtype)
        if handler is None:
            raise VfsError(errno.ENOENT, f"no handler {subtype}")
        using = sorted(d.name for d in self.devices.values() if d.handler is handler)
        if using:
            raise VfsError(errno.EBUSY, f"handler {subtype} serves {', '.join(using)}: disable them first")
        del self.handlers[subtype]
        if handler.destroy is not None:
            try:
                handler.destroy()
            except Exception:
                log.exception("handler %s failed in destroy", subtype)

    def check_config(self, cfgstring: str) -> str | None:
        """None if `cfgstring` would open, else the reason."""
        subtype = cfgstring.split("/", 1)[0]
        handler = self.handlers.get(subtype)
        if handler is None or "/" not in cfgstring:
            known = ", ".join(self.handlers)
            return f"no handler for {cfgstring!r}: use <subtype>/<handler part> with one of {known}"
        if handler.check_config is None:
            return None
        return handler.check_config(cfgstring)

    # ---- devices ------------------------------------------------------------------------------

    def create_device(self, name: str) -> Device:
        check_name(name, "device name")
        if name in self.devices:
            raise VfsError(errno.EEXIST, f"device {name} exists")
        dev = Device(self, name)
        self.devices[name] = dev
        self._on_change(dev)
        return dev

    def changed(self, dev: Device) -> None:
        if not dev.removed and not self.closing:
            self._on_change(dev)

    def destroy_device(self, name: str) -> None:
        dev = self.devices.get(name)
        if dev is None:
            raise VfsError(errno.ENOENT, f"no device {name}")
        if dev.enabled:
            raise VfsError(errno.EBUSY, f"device {name} is enabled: echo 0 > enable first")
        dev.removed = True
        del self.devices[name]
        dev.events.end()
        self._on_forget(name)

    async def enable(self, dev: Device, reopen: bool = False) -> None:
        """check_config + open, as libtcmu's device_add and the runner's dev_added do."""
        if dev.enabled:
            return
        if not dev.config:
            raise VfsError(errno.EINVAL, "set config first (e.g. ram/ or file//path/in/an/image/dir)")
        if dev.size <= 0:
            raise VfsError(errno.EINVAL, "set size first (bytes, a multiple of block_size)")
        reason = self.check_config(dev.config)
        if reason is not None:
            raise VfsError(errno.EINVAL if "no handler" in reason else errno.EACCES, reason)
        handler = self.handlers[dev.config.split("/", 1)[0]]
        dev.handler = handler
        dev.num_lbas = dev.size // dev.block_size
        dev.max_xfer_len = max(1, DEFAULT_MAX_XFER_BYTES // dev.block_size)
        dev.opt_unmap_gran = dev.max_xfer_len
        dev.unmap_gran_align = 0
        dev.limiter = trio.CapacityLimiter(max(1, handler.nr_threads))
        try:
            rc = await self.run_callout(handler.open_blocks, handler.open, dev, reopen)
        except VfsError:
            dev.handler = None
            raise
        except OSError as e:  # no memory for a ram device, no space, a full filesystem: say so
            dev.handler = None
            reason = f"handler {handler.subtype} cannot open: {e.strerror}"
            raise VfsError(e.errno or errno.EIO, reason) from None
        except (OverflowError, MemoryError) as e:
            dev.handler = None
            reason = f"handler {handler.subtype} cannot open a device this large: {e}"
            raise VfsError(errno.EFBIG, reason) from None
        except Exception as e:
            dev.handler = None
            log.exception("handler %s open failed", handler.subtype)
            raise VfsError(errno.EIO, f"handler {handler.subtype} failed to open: {e}") from None
        if rc:
            dev.handler = None
            raise VfsError(
                -rc, f"handler {handler.subtype} could not open {dev.config}: {errno.errorcode.get(-rc, rc)}"
            )
        dev.size = dev.num_lbas * dev.block_size  # open may have changed the geometry
        dev.engine = Engine(dev)
        dev.enabled = dev.opened = True
        self.token = trio.lowlevel.current_trio_token()
        dev.opened_at = time.time()
        if not self._watching:
            self._watching = True
            self.spawn(self._watchdog)
        if reopen:
            dev.emit("reopened")
        log.info("device %s opened: %s, %d bytes", dev.name, dev.config, dev.size)
        self.changed(dev)

    @staticmethod
    async def run_callout(blocks: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """open/close on a worker thread where they may block (open_blocks), else inline."""
        return await trio.to_thread.run_sync(fn, *args) if blocks else fn(*args)

    async def change_medium(self, dev: Device, config: str, size: int) -> None:
        """A new image and size under a live device (D-Bus ChangeMedium): commands wait while
        the handler closes the old medium and opens the new one; if the new one cannot open,
        the old one is opened again and the reason raised. Initiators see a unit attention."""
        handler, engine = dev.handler, dev.engine
        if handler is None or engine is None:
            raise VfsError(errno.EINVAL, f"device {dev.name} is not enabled: write config and size instead")
        if not config.startswith(handler.subtype + "/"):
            raise VfsError(errno.EINVAL, f"device {dev.name} is a {handler.subtype} device, not {config}")
        reason = self.check_config(config)
        if reason is not None:
            raise VfsError(errno.EINVAL, reason)
        if size <= 0 or size % dev.block_size:
            raise VfsError(errno.EINVAL, f"size is a positive multiple of {dev.block_size}, not {size}")
        old = dev.config, dev.size
        async with engine.paused():
            await self.run_callout(handler.open_blocks, handler.close, dev)
            dev.config, dev.size, dev.num_lbas = config, size, size // dev.block_size
            try:
                rc = await self.run_callout(handler.open_blocks, handler.open, dev, False)
                failure = (
                    VfsError(-rc, f"cannot open {config}: {errno.errorcode.get(-rc, rc)}") if rc else None
                )
            except VfsError as e:
                failure = e
            except OSError as e:
                failure = VfsError(e.errno or errno.EIO, f"cannot open {config}: {e.strerror}")
            except (OverflowError, MemoryError) as e:  # a size past what the image can be
                failure = VfsError(errno.EFBIG, f"cannot open {config} at {size} bytes: {e}")
            if failure is not None:
                dev.config, dev.size = old
                dev.num_lbas = dev.size // dev.block_size
                if await self.run_callout(handler.open_blocks, handler.open, dev, True):
                    dev.emit("error", reason=f"the old medium {old[0]} did not open again")
                raise failure
        dev.size = dev.num_lbas * dev.block_size
        dev.pending_ua = True
        dev.emit("medium_changed", config=config, size=dev.size)
        self.changed(dev)

    async def disable(self, dev: Device) -> None:
        if not dev.enabled:
            return
        if dev.kernel is not None:
            raise VfsError(
                errno.EBUSY, f"the kernel uses {dev.name} ({dev.kernel.uio_name}): remove it in configfs"
            )
        engine, handler = dev.engine, dev.handler
        assert engine is not None and handler is not None
        dev.enabled = False  # no new commands; wait for those in flight, and for a reopen to stop
        with trio.move_on_after(30):
            while engine.in_flight or dev.recovering:
                await trio.sleep(0.01)
        try:
            if dev.opened:  # a reopen that never succeeded left it closed
                await self.run_callout(handler.open_blocks, handler.close, dev)
        finally:
            dev.opened = False
            dev.handler, dev.engine, dev.private = None, None, None
            self.changed(dev)

    async def _watchdog(self) -> None:
        """One task for all devices: report commands slower than their device's cmd_time_out,
        once each. Only devices with a time-out and commands in flight cost anything."""
        reported: set[tuple[str, int]] = set()
        while not self.closing:
            await trio.sleep(0.25)
            now = time.monotonic()
            live: set[tuple[str, int]] = set()
            for dev in list(self.devices.values()):
                engine = dev.engine
                if not dev.cmd_time_out or engine is None or not engine.in_flight:
                    continue
                for cid, (start, kind, cmd) in list(engine.in_flight.items()):
                    key = (dev.name, cid)
                    live.add(key)
                    if key not in reported and now - start > dev.cmd_time_out:
                        reported.add(key)
                        cmd.timed_out = True
                        dev.stats.timeouts += 1
                        dev.emit("cmd_timed_out", op=kind, seconds=round(now - start, 3))
                        if dev.handler is not None and dev.handler.report_event is not None:
                            dev.handler.report_event(dev)
            reported &= live

    async def shutdown(self) -> None:
        self.closing = True
        for dev in list(self.devices.values()):
            try:
                await self.disable(dev)
            except Exception:
                log.exception("closing device %s failed", dev.name)
        for handler in self.handlers.values():
            if handler.destroy is not None:
                handler.destroy()
