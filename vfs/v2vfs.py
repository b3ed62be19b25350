"""The face of v2v: `channels/<name>/...` with a listener/ and a connector/ end (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from backends.events import EventQueue
from backends.notify import Changed
from backends.v2v.channel import Channel, End, V2v
from backends.values import parse_bool
from vfs.attrs import ValueFile, flat_keyed
from vfs.nodes import Caller, Node
from vfs.objects import Collection, ObjectDir
from vfs.streams import QueueStream, StreamFile


class Attachment:
    """One open of stream, msg or records: attaches (listen or connect) on open, disconnects on close."""

    def __init__(self, end: End, kind: str) -> None:
        end.attach(kind)
        self.end = end
        self.kind = kind
        self.changed: Changed = end.changed

    def readable(self) -> bool:
        return self.end.stream_readable() if self.kind == "stream" else self.end.msg_readable()

    def read_now(self, size: int) -> bytes:
        if self.kind == "stream":
            return self.end.stream_read(size)
        return self.end.msg_read(size, records=self.kind == "records")

    def writable(self, size: int) -> bool:
        if self.kind == "stream":
            return self.end.stream_writable(size)
        return self.end.msg_writable(size, records=self.kind == "records")

    def write_now(self, data: memoryview) -> int:
        if self.kind == "stream":
            return self.end.stream_write(data)
        return self.end.msg_write(data, records=self.kind == "records")

    async def close(self) -> None:
        await self.end.detach()


def end_dir(end: End) -> Node:
    def attach(kind: str) -> Callable[[int, Caller], Attachment]:
        return lambda flags, caller: Attachment(end, kind)

    def open_events(flags: int, caller: Caller) -> QueueStream:
        queue = EventQueue()
        end.subscribers.add(queue)
        return QueueStream(queue, lambda: end.subscribers.discard(queue))

    def set_fast(text: str) -> None:
        end.set_fast_receive(parse_bool(text, "fast_receive"))

    return ObjectDir(
        end.status,
        {
            "state": ValueFile(lambda: end.state.label),
            "remote_state": ValueFile(lambda: end.remote_state.label),
            **{
                kind: StreamFile(attach(kind), readable=True, writable=True)
                for kind in ("stream", "msg", "records")
            },
            "fast_receive": ValueFile(lambda: "1" if end.fast else "0", set_fast),
            "bytes_available": ValueFile(lambda: str(end.bytes_available())),
            "events": StreamFile(open_events),
            "stats": ValueFile(lambda: flat_keyed(end.stats.as_dict())),
        },
    )


def channel_dir(ch: Channel) -> Node:
    def order(which: str) -> ValueFile:
        return ValueFile(
            lambda: str(getattr(ch, which.replace("_ring", ""))), lambda text: ch.set_order(which, text)
        )

    return ObjectDir(
        ch.status,
        {
            "prod_ring_order": order("prod_ring_order"),
            "cons_ring_order": order("cons_ring_order"),
            "transport": ValueFile(lambda: ch.transport_spec, ch.set_transport),
            "listener": end_dir(ch.ends["listener"]),
            "connector": end_dir(ch.ends["connector"]),
        },
    )


def channels_dir(core: V2v, create: Callable[[str], Any], destroy: Callable[[str], Any]) -> Node:
    return Collection(
        lambda: core.channels,
        lambda name, ch: channel_dir(ch),
        create=create,
        destroy=destroy,
        cache_names=True,  # these objects go only by rmdir, which the kernel itself sees
    )
