"""Channels as the toolstack defines them (ring orders, a transport) and the daemon's set of
them; each channel has a listener and a connector End (end.py)."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import trio

from backends.errors import VfsError
from backends.names import check_name
from backends.v2v.end import End
from backends.v2v.layout import MAX_ORDER
from backends.v2v.shm import ShmTransport
from backends.v2v.transport import ROLES, LocalTransport, Transport
from backends.values import parse_int

log = logging.getLogger("vfs.v2v")

MAX_CHANNELS = 16384  # the default limit; an idle channel costs a few KB


class Channel:
    """A channel as the toolstack defines it: ring orders and a transport, then two ends."""

    def __init__(self, core: V2v, name: str) -> None:
        check_name(name, "channel name")
        self.core = core
        self.name = name
        self.prod_order = 4
        self.cons_order = 4
        self.transport_spec = "local"
        self.transport: Transport = LocalTransport(self._wake, self.prod_order, self.cons_order)
        self.ends = {role: End(self, role) for role in ROLES}

    def _wake(self, role: str, states: bool) -> None:
        end = self.ends[role]
        if states:
            end.refresh()
        else:
            end.changed.fire()

    def in_use(self) -> bool:
        return any(e.attached for e in self.ends.values())

    def _staged(self, what: str) -> None:
        if self.in_use():
            raise VfsError(errno.EBUSY, f"{what} is set while no end is open")

    def set_order(self, which: str, text: str) -> None:
        self._staged(which)
        order = parse_int(text, which)
        if not 0 <= order <= MAX_ORDER:
            raise VfsError(errno.EINVAL, f"{which} is a page order 0..{MAX_ORDER}, not {order}")
        setattr(self, which.replace("_ring", ""), order)
        if isinstance(self.transport, LocalTransport):
            self.transport = LocalTransport(self._wake, self.prod_order, self.cons_order)
        self.core.changed(self)

    def set_transport(self, text: str) -> None:
        self._staged("transport")
        if text == "local":
            transport: Transport = LocalTransport(self._wake, self.prod_order, self.cons_order)
        elif text.startswith("shm:/") and len(text) > 5:
            transport = ShmTransport(self._wake, text[4:], self.name)
        else:
            raise VfsError(errno.EINVAL, f"transport is 'local' or 'shm:<absolute dir>', not {text!r}")
        self.transport.close()
        self.transport = transport
        self.transport_spec = text
        self.core.changed(self)

    def start(self, role: str) -> None:
        self.transport.start(self.core.nursery, role)

    def spawn(self, fn: Callable[[], Any]) -> None:
        self.core.nursery.start_soon(fn)

    def on_state(self, end: End) -> None:
        self.core.on_state(self, end)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.transport_spec,
            "prod_ring_order": self.prod_order,
            "cons_ring_order": self.cons_order,
            "listener": self.ends["listener"].state.label,
            "connector": self.ends["connector"].state.label,
            "error": next((e.error for e in self.ends.values() if e.error), "-"),
        }

    def definition(self) -> dict[str, Any]:
        return {
            "prod_ring_order": self.prod_order,
            "cons_ring_order": self.cons_order,
            "transport": self.transport_spec,
        }


class V2v:
    """All channels of one daemon."""

    def __init__(
        self,
        nursery: trio.Nursery,
        on_change: Callable[[Channel], None] | None = None,
        on_forget: Callable[[str], None] | None = None,
        on_state: Callable[[Channel, End], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.nursery = nursery
        self.on_event = on_event or (lambda record: None)  # every end's events, as they happen
        self._on_change = on_change or (lambda ch: None)
        self._on_forget = on_forget or (lambda name: None)
        self._on_state = on_state or (lambda ch, end: None)
        self.channels: dict[str, Channel] = {}
        self.max_channels = MAX_CHANNELS

    def create(self, name: str) -> Channel:
        if name in self.channels:
            raise VfsError(errno.EEXIST, f"channel {name} exists")
        if len(self.channels) >= self.max_channels:
            raise VfsError(
                errno.ENOSPC, f"{len(self.channels)} channels: the limit (mgmt/v2v/keys/maxChannels)"
            )
        ch = Channel(self, name)
        self.channels[name] = ch
        self.changed(ch)
        return ch

    def changed(self, ch: Channel) -> None:
        if self.channels.get(ch.name) is ch:
            self._on_change(ch)

    def on_state(self, ch: Channel, end: End) -> None:
        self._on_state(ch, end)

    def destroy(self, name: str) -> None:
        ch = self.channels.get(name)
        if ch is None:
            raise VfsError(errno.ENOENT, f"no channel {name}")
        if ch.in_use():
            raise VfsError(errno.EBUSY, f"channel {name} has an open end")
        ch.transport.close()
        del self.channels[name]
        self._on_forget(name)
