"""TCMU (tcmu-runner.h): pluggable backstore handlers behind a SCSI command engine.

core = Tcmu(spawn)
core.register_handler(RamHandler(HandlerContext()))
dev = core.create_device("d0"); await dev.set_config("ram/"); await dev.set_size("67108864")
await core.enable(dev)
response = await dev.engine.execute(cdb, data_out, data_in_len)   # any SCSI command
data = await dev.engine.read(lba, blocks)                          # the data file's path
"""

from backends.tcmu.core import Tcmu
from backends.tcmu.device import Device
from backends.tcmu.engine import Engine
from backends.tcmu.frontend import Response
from backends.tcmu.handler import INVALID_LOCK_TAG, Command, Handler, HandlerContext, LockState, Reconfig
from backends.tcmu.status import CommandError, Sts

__all__ = [
    "INVALID_LOCK_TAG",
    "Command",
    "CommandError",
    "Device",
    "Engine",
    "Handler",
    "HandlerContext",
    "LockState",
    "Reconfig",
    "Response",
    "Sts",
    "Tcmu",
]
