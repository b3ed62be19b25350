"""The kernel's TCMU devices this daemon serves: found at start (a scan of /sys/class/uio, with
the ring reset as tcmu-runner's recovery does) and as the kernel announces them on netlink
(added, removed, reconfigured), each served by the vfs device of the same name — made for it
when there is none — through that device's one engine.
"""

from __future__ import annotations

import errno
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from backends.errors import VfsError
from backends.tcmu import netlink, uio
from backends.tcmu.kernel import KernelPort
from backends.tcmu.ring import Ring, RingError

if TYPE_CHECKING:
    from backends.tcmu.core import Tcmu
    from backends.tcmu.device import Device

log = logging.getLogger("vfs.tcmu")


class KernelDevices:
    def __init__(self, core: Tcmu, nursery: trio.Nursery, create: Callable[[str], Device]) -> None:
        self.core = core
        self.nursery = nursery
        self.create = create
        self.served: dict[str, tuple[uio.UioDevice, uio.Serving]] = {}
        self.made: set[str] = set()  # devices made for the kernel: they go when it removes them
        self.exported: set[str] = set()  # devices this daemon gave the kernel (devices/<d>/kernel)
        self.state = "starting"

    async def run(self) -> None:
        try:
            nl = netlink.TcmuNetlink()
        except (OSError, VfsError) as e:
            self.state = f"off: {getattr(e, 'reason', e)}"
            log.info("the kernel's TCMU is not served: %s", self.state)
            return
        try:
            nl.set_features()
            for info in uio.scan():
                try:
                    await self.attach(info, recover=True)
                except VfsError as e:
                    log.error("kernel device %s not served: %s", info.name, e.reason)
                except Exception:
                    log.exception("kernel device %s not served", info.name)
            self.state = "on"
            while True:
                for event in await nl.receive():
                    nl.reply(event, await self.handle(event))
        finally:
            nl.close()

    async def handle(self, event: netlink.Event) -> int:
        """0, or the negative errno the kernel gives whoever changed configfs."""
        parsed = uio.parse_name(event.device)
        if parsed is None:
            return -errno.EINVAL
        _, name, _ = parsed
        try:
            if event.cmd == netlink.ADDED_DEVICE:
                if event.minor is None:
                    raise VfsError(errno.EINVAL, "an added device without its uio minor")
                info = uio.info(event.minor)
                if info is None:
                    raise VfsError(errno.ENODEV, f"no /sys/class/uio/uio{event.minor}")
                await self.attach(info)
            elif event.cmd == netlink.REMOVED_DEVICE:
                await self.detach(name)
            elif event.cmd == netlink.RECONFIG_DEVICE:
                await self.reconfig(name, event)
            return 0
        except Exception as e:  # the kernel waits for an answer: it always gets one
            if not isinstance(e, VfsError):
                log.exception("kernel device %s", name)
                e = VfsError(errno.EIO, f"internal error ({type(e).__name__}: {e}); see the daemon log")
            log.error("kernel device %s: %s", name, e.reason)
            dev = self.core.devices.get(name)
            if dev is not None:
                dev.emit("kernel_refused", reason=e.reason)
            return -e.errno

    async def attach(self, info: uio.UioInfo, recover: bool = False) -> None:
        if info.subtype not in self.core.handlers:
            raise VfsError(
                errno.ENOENT, f"no handler for {info.config!r} (have: {', '.join(self.core.handlers)})"
            )
        if info.name in self.served:
            raise VfsError(errno.EEXIST, f"{info.name} is served already")
        dev = self.core.devices.get(info.name)
        if dev is None:
            dev = self.create(info.name)
            self.made.add(info.name)
        if dev.enabled and dev.config != info.config:
            raise VfsError(errno.EBUSY, f"device {info.name} is enabled with {dev.config}, not {info.config}")
        if not dev.enabled:
            await dev.set_config(info.config)
            dev.set_block_size(str(uio.block_size(info)))
            await dev.set_size(str(uio.device_size(info)))
            await self.core.enable(dev)
        if recover:  # a ring a dead daemon left: commands in it are failed BUSY, to be retried
            _action(info, "block_dev", "1")
            _action(info, "reset_ring", "1")
        try:
            device = uio.UioDevice(info)
            try:
                port = KernelPort(
                    dev,
                    Ring(device.mem),
                    device.kick,
                    f"uio{info.index}",
                    lambda: _action(info, "reset_ring", "2"),
                )
            except RingError as e:
                device.close()
                raise VfsError(errno.EPROTO, f"uio{info.index}: {e}") from None
        finally:
            if recover:
                _action(info, "block_dev", "0")
        dev.kernel = port
        serving = uio.spawn_serving(self.nursery, device, port, lambda: self._ended(info.name, device))
        self.served[info.name] = (device, serving)
        log.info("serving kernel device %s (uio%d, %s)", info.name, info.index, info.config)
        dev.emit("kernel_attached", uio=f"uio{info.index}")

    def _ended(self, name: str, device: uio.UioDevice) -> None:
        if self.served.get(name, (None,))[0] is device:
            del self.served[name]
        device.close()

    async def detach(self, name: str) -> None:
        served = self.served.pop(name, None)
        dev = self.core.devices.get(name)
        if served is not None:
            await served[1].stop()  # before the device may close: the ring's thread uses it
        if dev is None:
            return
        dev.kernel = None
        dev.emit("kernel_detached")
        log.info("the kernel removed device %s", name)
        if name in self.made:
            self.made.discard(name)
            await self.core.disable(dev)
            self.core.destroy_device(name)

    async def reconfig(self, name: str, event: netlink.Event) -> None:
        dev = self.core.devices.get(name)
        if dev is None or name not in self.served:
            raise VfsError(errno.ENODEV, f"{name} is not served here")
        if event.dev_size is not None:
            await dev.set_size(str(event.dev_size))
        elif event.dev_cfg is not None:
            await dev.set_config(event.dev_cfg)
        elif event.writecache is not None:
            await dev.set_write_cache(str(event.writecache))

    async def close(self) -> None:
        """The daemon stops: the rings stay with the kernel (a new daemon recovers them)."""
        for name in list(self.served):
            _, serving = self.served.pop(name)
            serving.scope.cancel()
        for dev in self.core.devices.values():  # a serving task the stop cancelled first left it set
            dev.kernel = None

    # ---- from the tree: export a device to the kernel ---------------------------------------

    async def export(self, dev: Device, loop: bool) -> None:
        """Make the configfs device user_0/<name> for `dev` (the kernel then announces it and
        it is served here) and, with `loop`, a tcm_loop LUN over it, so /dev/sdX appears. The
        configfs writes run on a worker thread: the kernel holds `enable` until this daemon
        answers its netlink message, which the event loop must stay free to do."""
        if self.state != "on":
            raise VfsError(errno.ENODEV, f"the kernel's TCMU is not served ({self.state})")
        if not dev.enabled:
            raise VfsError(errno.EINVAL, "enable the device first: the kernel uses it as it is")
        if dev.name in self.served:
            raise VfsError(errno.EEXIST, f"{dev.name} is the kernel's already ({dev.kernel.uio_name})")
        path = uio.CONFIGFS / f"user_{HBA}" / dev.name
        control = f"dev_config={dev.config},dev_size={dev.size},hw_block_size={dev.block_size}"
        await trio.to_thread.run_sync(_make_user_device, path, control)
        if loop:
            await trio.to_thread.run_sync(_make_loop_lun, path, dev.name)
        self.exported.add(dev.name)

    async def unexport(self, dev: Device) -> None:
        if dev.name not in self.exported:
            raise VfsError(errno.ENOENT, f"{dev.name} was not exported from here; remove it in configfs")
        await trio.to_thread.run_sync(_remove_loop_lun, dev.name)
        await trio.to_thread.run_sync(_remove_user_device, uio.CONFIGFS / f"user_{HBA}" / dev.name)
        self.exported.discard(dev.name)


HBA = 0
LOOPBACK = Path("/sys/kernel/config/target/loopback")


def _wwn(name: str, salt: str) -> str:
    return "naa.5001405" + hashlib.sha1(f"{salt}:{name}".encode()).hexdigest()[:9]


def _checked(what: str, fn: Callable[[], object]) -> None:
    try:
        fn()
    except OSError as e:
        raise VfsError(e.errno or errno.EIO, f"{what}: {e.strerror}") from None


def _make_user_device(path: Path, control: str) -> None:
    if not path.parent.parent.is_dir():
        raise VfsError(errno.ENODEV, f"no {path.parent.parent} (modprobe target_core_user)")
    _checked(f"mkdir {path}", lambda: path.mkdir(parents=True))
    try:
        _checked(f"{path}/control", lambda: (path / "control").write_text(control))
        _checked(f"{path}/enable", lambda: (path / "enable").write_text("1"))
    except VfsError:
        path.rmdir()
        raise


def _make_loop_lun(device: Path, name: str) -> None:
    if not LOOPBACK.is_dir() and not LOOPBACK.parent.is_dir():
        raise VfsError(errno.ENODEV, "no target/ in configfs (modprobe tcm_loop)")
    tpg = LOOPBACK / _wwn(name, "target") / "tpgt_1"
    _checked(f"mkdir {tpg}/lun/lun_0", lambda: (tpg / "lun/lun_0").mkdir(parents=True))
    _checked(f"{tpg}/nexus", lambda: (tpg / "nexus").write_text(_wwn(name, "initiator")))
    _checked(f"link {tpg}/lun/lun_0", lambda: (tpg / "lun/lun_0" / name).symlink_to(device))


def _remove_loop_lun(name: str) -> None:
    target = LOOPBACK / _wwn(name, "target")
    tpg = target / "tpgt_1"
    if not target.exists():
        return
    for step in (
        lambda: (tpg / "lun/lun_0" / name).unlink(missing_ok=True),
        lambda: (tpg / "lun/lun_0").rmdir(),
        lambda: (tpg / "nexus").write_text("NULL"),  # tcm_loop drops its I_T nexus, once no LUN
        lambda: tpg.rmdir(),
        lambda: target.rmdir(),
    ):
        _checked(f"removing {target}", step)


def _remove_user_device(path: Path) -> None:
    if path.exists():
        _checked(f"rmdir {path}", path.rmdir)


def _action(info: uio.UioInfo, name: str, value: str) -> bool:
    path: Path = info.configfs / "action" / name
    try:
        path.write_text(value)
        return True
    except OSError as e:
        log.warning("%s: %s", path, e.strerror)
        return False
