"""A test-only tree under `<mnt>/test/`, mounted by the real daemon with `--module tests.nodetree`.

It exercises every node kind before the subsystems exist; it uses the same node classes the
subsystems use, not a second implementation.
"""

from __future__ import annotations

from errno import EINVAL
from typing import Any

from backends.errors import VfsError
from backends.events import EventQueue
from vfs.daemon import Context
from vfs.tree.data import DataFile
from vfs.tree.nodes import StaticDir, Symlink
from vfs.tree.objects import Collection, ObjectDir
from vfs.tree.streams import QueueStream, StreamFile
from vfs.tree.transactions import TxFile
from vfs.tree.values import ValueFile, constant


class Hub:
    """Broadcasts to every open `events`; each open has its own queue (and its own seq)."""

    def __init__(self) -> None:
        self.sessions: set[EventQueue] = set()

    def open(self) -> QueueStream:
        queue = EventQueue()
        self.sessions.add(queue)
        return QueueStream(queue, lambda: self.sessions.discard(queue))

    def fire(self, text: str) -> None:
        for queue in list(self.sessions):
            queue.deliver({"event": text})


class Memory:
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)

    def size(self) -> int:
        return len(self.buf)

    async def read(self, off: int, size: int) -> memoryview:
        return memoryview(self.buf)[off : off + size]

    async def write(self, off: int, data: bytes) -> int:
        self.buf[off : off + len(data)] = data
        return len(data)

    async def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Upper:
    async def request(self, data: bytes) -> bytes:
        if data.strip() == b"fail":
            raise VfsError(EINVAL, "the request asked to fail")
        return data.upper()

    def close(self) -> None:
        pass


def setup(ctx: Context) -> None:
    state: dict[str, Any] = {"value": "initial", "number": 7, "actions": 0}
    objects: dict[str, dict[str, str]] = {}
    hub = Hub()
    memory = Memory(1 << 20)

    def set_value(text: str) -> None:
        if text == "bad":
            raise VfsError(EINVAL, "'bad' is not an acceptable value")
        state["value"] = text

    def set_number(text: str) -> None:
        try:
            state["number"] = int(text, 0)
        except ValueError:
            raise VfsError(EINVAL, f"not an integer: {text!r}") from None

    def act(text: str) -> None:
        state["actions"] += 1

    def boom() -> str:
        raise RuntimeError("injected failure")

    def make_object(name: str, obj: dict[str, str]) -> ObjectDir:
        return ObjectDir(
            lambda: {"name": name, "value": obj["value"]},
            {"value": ValueFile(lambda: obj["value"], lambda v: obj.__setitem__("value", v))},
        )

    def create(name: str) -> None:
        objects[name] = {"value": ""}

    def destroy(name: str) -> None:
        del objects[name]

    def spawn(names: str) -> None:
        """Create objects out of band (as a core would), not through mkdir."""
        for name in names.split():
            objects[name] = {"value": "spawned"}

    def vanish(names: str) -> None:
        for name in names.split():
            objects.pop(name, None)

    from backends.mgmt import ApiSignature

    scratch: dict[str, Any] = {}

    def handle_up(version: str) -> None:
        """Register a handle out of band, as a module would at any time."""
        sig = ApiSignature("scratch", "test", (int(version or 1), 0, 0, 0))
        scratch["handle"] = ctx.mgmt.init(sig)

    def handle_down(_: str) -> None:
        scratch.pop("handle").destroy()

    tree = ObjectDir(
        lambda: {"value": state["value"], "actions": state["actions"], "sessions": len(hub.sessions)},
        {
            "value": ValueFile(lambda: state["value"], set_value),
            "number": ValueFile(lambda: str(state["number"]), set_number),
            "ro": constant("read only"),
            "action": ValueFile(None, act),
            "fire": ValueFile(None, hub.fire),
            "boom": ValueFile(boom),
            "events": StreamFile(lambda flags, caller: hub.open()),
            "data": DataFile(lambda flags, caller: memory, memory.size),
            "tx": TxFile(lambda caller: Upper()),
            "me": Symlink(lambda caller: str(caller.pid)),
            "objects": Collection(lambda: objects, make_object, create, destroy),
            "empty": StaticDir(),
            "spawn": ValueFile(None, spawn),
            "handle_up": ValueFile(None, handle_up),
            "handle_down": ValueFile(None, handle_down),
            "vanish": ValueFile(None, vanish),
        },
    )
    ctx.root.add("test", tree)
