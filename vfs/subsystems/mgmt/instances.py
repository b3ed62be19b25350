"""One management instance per named object of a subsystem (a device, a slot, a channel)."""

from __future__ import annotations

import itertools

from backends.mgmt import NO_INSTANCE_ID, Handle


class Instances:
    def __init__(self, handle: Handle) -> None:
        self.handle = handle
        self._ids: dict[str, int] = {}
        self._next = itertools.count(1)

    def add(self, name: str) -> None:
        instance_id = next(self._next)
        self.handle.register_instance(instance_id, name)
        self._ids[name] = instance_id

    def remove(self, name: str) -> None:
        self.handle.unregister_instance(self._ids.pop(name))

    def id(self, name: str) -> int:  # noqa: A003
        return self._ids.get(name, NO_INSTANCE_ID)
