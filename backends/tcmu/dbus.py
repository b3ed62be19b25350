"""`org.kernel.TCMUService1` on the system bus, as tcmu-runner offers it (tcmu-handler.xml).

targetcli asks this service which handlers exist (ObjectManager.GetManagedObjects on
/org/kernel/TCMUService1: one object per subtype, with ConfigDesc) and whether a cfgstring is
good (CheckConfig) before it makes a `user:<subtype>` backstore in configfs; the kernel then
announces the device over netlink and KernelDevices serves it. ChangeMedium swaps the image
and size of a device. The wire is jeepney's; this module only answers calls.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

import trio
from jeepney import HeaderFields, Message, MessageType, new_error, new_method_return
from jeepney.bus_messages import message_bus
from jeepney.io.trio import open_dbus_connection

from backends.errors import VfsError
from backends.tcmu.core import Tcmu

log = logging.getLogger("vfs.tcmu.dbus")

BUS_NAME = "org.kernel.TCMUService1"
ROOT = "/org/kernel/TCMUService1"
IFACE = "org.kernel.TCMUService1"
MANAGER = "org.kernel.TCMUService1.HandlerManager1"
MANAGER_PATH = f"{ROOT}/HandlerManager1"
PROPS = "org.freedesktop.DBus.Properties"
OBJECTS = "org.freedesktop.DBus.ObjectManager"
INTROSPECT = "org.freedesktop.DBus.Introspectable"
PEER = "org.freedesktop.DBus.Peer"
ERR = "org.freedesktop.DBus.Error."
# (interface, method) -> the signature of its arguments
SIGNATURES = {
    (OBJECTS, "GetManagedObjects"): "",
    (PROPS, "Get"): "ss",
    (PROPS, "GetAll"): "s",
    (IFACE, "CheckConfig"): "s",
    (IFACE, "ChangeMedium"): "sts",
    (MANAGER, "RegisterHandler"): "ss",
}
PRIMARY_OWNER = 1
DO_NOT_QUEUE = 4

_SERVICE_XML = """  <interface name="org.kernel.TCMUService1">
    <property name="ConfigDesc" type="s" access="read"/>
    <method name="CheckConfig">
      <arg type="s" name="configstr" direction="in"/>
      <arg type="b" name="is_valid" direction="out"/>
      <arg type="s" name="message" direction="out"/>
    </method>
    <method name="ChangeMedium">
      <arg type="s" name="name" direction="in"/>
      <arg type="t" name="size" direction="in"/>
      <arg type="s" name="configstr" direction="in"/>
      <arg type="i" name="ret" direction="out"/>
      <arg type="s" name="message" direction="out"/>
    </method>
  </interface>
  <interface name="org.freedesktop.DBus.Properties">
    <method name="Get"><arg type="s" direction="in"/><arg type="s" direction="in"/>
      <arg type="v" direction="out"/></method>
    <method name="GetAll"><arg type="s" direction="in"/><arg type="a{sv}" direction="out"/></method>
  </interface>
"""
_MANAGER_XML = """  <interface name="org.kernel.TCMUService1.HandlerManager1">
    <method name="RegisterHandler">
      <arg type="s" name="subtype" direction="in"/>
      <arg type="s" name="cfgstr_desc" direction="in"/>
      <arg type="b" name="succeeded" direction="out"/>
      <arg type="s" name="message" direction="out"/>
    </method>
  </interface>
"""
_OBJECTS_XML = """  <interface name="org.freedesktop.DBus.ObjectManager">
    <method name="GetManagedObjects"><arg type="a{oa{sa{sv}}}" direction="out"/></method>
  </interface>
"""
_COMMON_XML = """  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg type="s" direction="out"/></method>
  </interface>
  <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>
"""


class TcmuService:
    """Answers the bus for `core`; `state` is "on", or "off: why" (shown as the tcmu `dbus` key)."""

    def __init__(self, core: Tcmu) -> None:
        self.core = core
        self.state = "starting"

    async def run(self, bus: str = "SYSTEM") -> None:
        try:
            conn = await open_dbus_connection(bus)
        except (OSError, ValueError, KeyError) as e:  # no bus at the address, or no address at all
            self.state = f"off: no system bus ({e})"
            log.info("org.kernel.TCMUService1 is not offered: %s", self.state)
            return
        async with conn:
            async with conn.router() as router:
                reply = await router.send_and_get_reply(message_bus.RequestName(BUS_NAME, DO_NOT_QUEUE))
            if reply.header.message_type is MessageType.error:
                self.state = f"off: the bus refused {BUS_NAME}: {reply.body[0] if reply.body else ''}"
            elif reply.body[0] != PRIMARY_OWNER:
                self.state = f"off: {BUS_NAME} is owned by another daemon (tcmu-runner?)"
            if self.state != "starting":
                log.warning("%s", self.state)
                return
            self.state = "on"
            log.info("offering %s on the system bus", BUS_NAME)
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        msg = await conn.receive()
                    except trio.EndOfChannel:
                        self.state = "off: the system bus went away"
                        log.warning("%s", self.state)
                        return
                    if msg.header.message_type is MessageType.method_call:
                        nursery.start_soon(self._answer, conn, msg)

    async def _answer(self, conn: Any, msg: Message) -> None:
        try:
            reply = await self.call(msg)
        except Exception:  # a caller's bad message never ends the service
            log.exception("D-Bus call %s", msg.header.fields.get(HeaderFields.member))
            reply = _error(msg, "Failed", "internal error; see the daemon log")
        try:
            await conn.send(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def call(self, msg: Message) -> Message:
        """The reply to one method call (sans-IO apart from ChangeMedium's device work)."""
        fields = msg.header.fields
        path = fields.get(HeaderFields.path, "")
        iface = fields.get(HeaderFields.interface, "")
        member = fields.get(HeaderFields.member, "")
        signature = fields.get(HeaderFields.signature, "")
        body = msg.body
        if member == "Introspect" and iface in ("", INTROSPECT):
            xml = self.introspect(path)
            if xml is None:
                return _error(msg, "UnknownObject", f"no object {path}")
            return new_method_return(msg, "s", (xml,))
        if member == "Ping" and iface in ("", PEER):
            return new_method_return(msg)
        handler = self._handler_at(path)
        key = (iface, member)
        if iface == "":  # a call without an interface names its method alone
            key = next((k for k in SIGNATURES if k[1] == member), key)
        if key not in SIGNATURES:
            return _error(msg, "UnknownMethod", f"no method {iface}.{member} here")
        if signature != SIGNATURES[key]:
            return _error(msg, "InvalidArgs", f"{member} takes ({SIGNATURES[key]}), not ({signature})")
        if key == (OBJECTS, "GetManagedObjects") and path == ROOT:
            objects = {f"{ROOT}/{sub}": {IFACE: self._props(sub)} for sub in sorted(self.core.handlers)}
            return new_method_return(msg, "a{oa{sa{sv}}}", (objects,))
        if key == (MANAGER, "RegisterHandler") and path == MANAGER_PATH:
            # tcmu-runner's D-Bus handlers answer CheckConfig only and cannot open a device; here a
            # handler is a Python class that serves I/O.
            reason = "vfs loads handlers as Python classes: echo package.module:Class > handlers/load"
            return new_method_return(msg, "bs", (False, reason))
        if handler is None:
            return _error(msg, "UnknownObject", f"no object {path} with {iface}")
        if key == (PROPS, "Get"):
            props = self._props(handler) if body[0] == IFACE else {}
            if body[1] not in props:
                return _error(msg, "UnknownProperty", f"no property {body[0]}.{body[1]}")
            return new_method_return(msg, "v", (props[body[1]],))
        if key == (PROPS, "GetAll"):
            return new_method_return(msg, "a{sv}", (self._props(handler) if body[0] == IFACE else {},))
        if key == (IFACE, "CheckConfig"):
            reason = self.check_config(handler, body[0])
            return new_method_return(msg, "bs", (reason is None, reason or "success"))
        if key == (IFACE, "ChangeMedium"):
            rc, text = await self.change_medium(handler, *body)
            return new_method_return(msg, "is", (rc, text))
        return _error(msg, "UnknownMethod", f"no method {iface}.{member} at {path}")

    # ---- the objects --------------------------------------------------------------------------

    def _handler_at(self, path: str) -> str | None:
        sub = path.removeprefix(ROOT + "/")
        return sub if path.startswith(ROOT + "/") and sub in self.core.handlers else None

    def _props(self, subtype: str) -> dict[str, tuple[str, str]]:
        return {"ConfigDesc": ("s", self.core.handlers[subtype].cfg_desc)}

    def introspect(self, path: str) -> str | None:
        head = '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        head += ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node>\n'
        parents = {"/": "org", "/org": "kernel", "/org/kernel": "TCMUService1"}
        if path in parents:
            return f'{head}{_COMMON_XML}  <node name="{parents[path]}"/>\n</node>\n'
        if path == ROOT:
            kids = "".join(
                f'  <node name="{s}"/>\n' for s in ["HandlerManager1", *sorted(self.core.handlers)]
            )
            return f"{head}{_COMMON_XML}{_OBJECTS_XML}{kids}</node>\n"
        if path == MANAGER_PATH:
            return f"{head}{_COMMON_XML}{_MANAGER_XML}</node>\n"
        if self._handler_at(path):
            return f"{head}{_COMMON_XML}{_SERVICE_XML}</node>\n"
        return None

    # ---- the methods --------------------------------------------------------------------------

    def check_config(self, subtype: str, cfgstring: str) -> str | None:
        """tcmu-runner passes the whole `<subtype>/<rest>` string; a string for another
        handler is refused here, as its handler's check would."""
        if cfgstring.split("/", 1)[0] != subtype:
            return f"{cfgstring!r} is not a {subtype} config (it starts with {subtype}/)"
        try:
            self.core.handlers[subtype].confine(cfgstring)
        except VfsError as e:
            return e.reason
        return self.core.check_config(cfgstring)

    async def change_medium(self, subtype: str, name: str, size: int, cfgstring: str) -> tuple[int, str]:
        dev = self.core.devices.get(name)
        if dev is None:
            return -errno.ENOENT, f"no device {name}"
        reason = self.check_config(subtype, cfgstring)
        if reason is not None:
            return -errno.EINVAL, reason
        try:
            await self.core.change_medium(dev, cfgstring, size)
        except VfsError as e:
            return -e.errno, e.reason
        return 0, "success"


def _error(msg: Message, name: str, text: str) -> Message:
    return new_error(msg, ERR + name, "s", (text,))
