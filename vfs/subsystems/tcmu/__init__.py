"""TCMU in the daemon: handlers (built-ins, then `vfs.handlers` entry points), the device
core, `handlers/` and `devices/`, device persistence, and the `tcmu` management handle (one
instance per device; every device event is a user-side callback)."""

from __future__ import annotations

import json
import logging
from typing import Any

import trio

from backends.errors import VfsError
from backends.mgmt import (
    ApiSignature,
    CallbackInfo,
    Envelope,
    KeyType,
    Location,
    MgmtError,
    Param,
    ParmType,
    Status,
)
from backends.tcmu import Device, HandlerContext, Tcmu
from backends.tcmu.dbus import TcmuService
from backends.tcmu.kernel_devices import KernelDevices
from vfs.context import Context
from vfs.subsystems.mgmt.instances import Instances
from vfs.subsystems.tcmu import metrics
from vfs.subsystems.tcmu.conf import TcmuConf
from vfs.subsystems.tcmu.handlers import Handlers
from vfs.subsystems.tcmu.tree import tcmu_dirs

log = logging.getLogger("vfs.tcmu")

EVENT = 16
SIGNATURE = ApiSignature(
    "tcmu",
    "vfs",
    (1, 0, 0, 0),
    (
        CallbackInfo(
            EVENT,
            "event",
            Location.USER,
            synchronous=False,
            params=(
                Param(ParmType.IN, 32, "str", "device"),
                Param(ParmType.IN, 32, "str", "event"),
                Param(ParmType.IN, 1024, "str", "detail"),  # the event's other fields, as JSON
            ),
        ),
    ),
)
LEVELS = ("debug", "info", "warning", "error", "critical")


async def setup(ctx: Context) -> Tcmu:
    handle = ctx.mgmt.init(SIGNATURE, max_instances=None)
    instances = Instances(handle)

    def on_event(dev: Device, record: dict[str, Any]) -> None:
        ctx.events.publish({"object": f"devices/{dev.name}", **record})
        detail = json.dumps({k: v for k, v in record.items() if k not in ("event", "device")})
        handle.invoke(Envelope(instance_id=instances.id(dev.name)), EVENT, dev.name, record["event"], detail)

    restoring = [True]  # while definitions are read back, they are not written again

    def save(dev: Device) -> None:
        if not restoring[0]:
            ctx.store.save("devices", dev.name, dev.definition())

    tree: list[Any] = []  # the devices/ node, once made

    def forget(name: str) -> None:
        """A device is gone, whoever removed it (rmdir, the kernel, targetcli): its definition,
        its mgmt instance and any name the kernel still caches go with it."""
        ctx.store.delete("devices", name)
        instances.remove(name)
        ctx.events.publish({"event": "removed", "object": f"devices/{name}"})
        for devices_node in tree:
            devices_node.drop(name)

    core = Tcmu(ctx.nursery.start_soon, on_change=save, on_forget=forget, on_event=on_event)
    ctx.metrics.add(lambda: metrics.collect(core))
    handlers = Handlers(core, HandlerContext(image_dirs=list(ctx.options.image_dirs)), ctx.store)
    handlers.start()

    def create(name: str) -> Device:
        dev = core.create_device(name)
        instances.add(name)
        ctx.events.publish({"event": "created", "object": f"devices/{name}"})
        return dev

    tcmu_log = logging.getLogger("vfs.tcmu")

    def set_level(_: Any, value: str) -> None:
        if value.lower() not in LEVELS:
            raise MgmtError(Status.BAD_PARAM, f"logLevel is one of {', '.join(LEVELS)}, not {value!r}")
        tcmu_log.setLevel(value.upper())

    handle.add_key(
        KeyType.STRING,
        "logLevel",
        lambda _: logging.getLevelName(tcmu_log.getEffectiveLevel()).lower(),
        set_level,
        persistent=True,
        description="log level of the TCMU subsystem",
    )
    # tcmu-runner's /etc/tcmu/tcmu.conf, where there is one, followed as it changes
    conf = TcmuConf(ctx.options.tcmu_conf, lambda level: set_level(None, level))
    conf.load()
    ctx.nursery.start_soon(conf.follow)

    async def close_conf() -> None:
        conf.close()

    ctx.on_shutdown.append(close_conf)
    handle.add_key(KeyType.LONG, "devices", lambda _: len(core.devices), None, description="devices defined")
    handle.add_key(
        KeyType.STRING,
        "handlers",
        lambda _: " ".join(sorted(core.handlers)),
        None,
        description="installed handler subtypes",
    )

    await restore(ctx, core, create)
    restoring[0] = False
    # The kernel's target_core_user devices: served where the kernel offers them.
    kernel = KernelDevices(core, ctx.nursery, create)
    core.kernel_devices = kernel
    ctx.nursery.start_soon(kernel.run)
    handle.add_key(
        KeyType.STRING,
        "kernel",
        lambda _: kernel.state,
        None,
        description="serving the kernel's TCMU devices: on, or off and why",
    )
    # org.kernel.TCMUService1, so targetcli lists and checks `user:` backstores as it does
    # with tcmu-runner.
    service = TcmuService(core)
    ctx.nursery.start_soon(service.run)
    handle.add_key(
        KeyType.STRING,
        "dbus",
        lambda _: service.state,
        None,
        description="org.kernel.TCMUService1 on the system bus: on, or off and why",
    )
    handlers_dir, devices = tcmu_dirs(core, create, core.destroy_device, handlers)
    tree.append(devices)
    ctx.root.add("handlers", handlers_dir)
    ctx.root.add("devices", devices)
    ctx.root.counters["devices"] = lambda: len(core.devices)
    ctx.on_shutdown.append(core.shutdown)
    ctx.on_shutdown.append(kernel.close)  # hooks run last first: the kernel lets go, then devices close
    return core


async def restore(ctx: Any, core: Tcmu, create: Any) -> None:
    """Devices come back with their definitions; enabled ones are opened again (a reopen),
    several at once: a handler whose open blocks takes a thread hop for each."""
    to_enable: list[Device] = []
    for name, saved in ctx.restoring("devices"):
        try:
            dev = create(name)
            dev.serial = saved.get("serial", dev.serial)
            dev.block_size = int(saved.get("block_size", 512))
            if saved.get("config"):
                await dev.set_config(saved["config"])
            await dev.set_size(str(saved.get("size", 0)))
            await dev.set_write_cache("1" if saved.get("write_cache", True) else "0")
            dev.set_cmd_time_out(str(saved.get("cmd_time_out", 0)))
        except (VfsError, KeyError, ValueError) as e:
            log.error("saved device %s cannot be restored: %s", name, getattr(e, "reason", e))
            continue
        if saved.get("enabled"):
            to_enable.append(dev)

    async def reopen(dev: Device, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                await core.enable(dev, reopen=True)
            except VfsError as e:  # the saved definition keeps enabled=1: the next mount tries again
                log.error("device %s cannot be enabled again: %s", dev.name, e.reason)

    limiter = trio.CapacityLimiter(16)
    async with trio.open_nursery() as nursery:
        for dev in to_enable:
            nursery.start_soon(reopen, dev, limiter)
