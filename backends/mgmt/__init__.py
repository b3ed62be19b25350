"""Management handles (vmkapi mgmt): the module API.

    from backends.mgmt import ApiSignature, CallbackInfo, Param, ParmType, Location, KeyType
    handle = registry.init(ApiSignature("mydrv", "acme", (1, 0, 0, 0), callbacks), cookie=...)
    handle.add_key(KeyType.LONG, "logLevel", get, set, persistent=True)
    handle.register_instance(1, "adapter0")
    handle.invoke(Envelope(instance_id=1), "linkChanged", 1, "up")   # to user space

See README "Writing a module" and vfs/modules/example.py.
"""

from backends.mgmt.handle import CallResult, Handle, Instance, Key
from backends.mgmt.registry import KeyStore, Registry
from backends.mgmt.session import Session
from backends.mgmt.status import MgmtError, Status
from backends.mgmt.types import (
    KEY_STRING_MAXLEN,
    MAX_CALLBACK_PARMS,
    MAX_INSTANCES,
    MAX_KEYS,
    NO_INSTANCE_ID,
    SESSION_ID_ALL,
    ApiSignature,
    CallbackInfo,
    Cookies,
    Envelope,
    KeyType,
    Location,
    Param,
    ParmType,
    Ref,
    parse_version,
)

__all__ = [
    "KEY_STRING_MAXLEN",
    "MAX_CALLBACK_PARMS",
    "MAX_INSTANCES",
    "MAX_KEYS",
    "NO_INSTANCE_ID",
    "SESSION_ID_ALL",
    "ApiSignature",
    "CallResult",
    "CallbackInfo",
    "Cookies",
    "Envelope",
    "Handle",
    "Instance",
    "Key",
    "KeyStore",
    "KeyType",
    "Location",
    "MgmtError",
    "Param",
    "ParmType",
    "Ref",
    "Registry",
    "Session",
    "Status",
    "parse_version",
]
