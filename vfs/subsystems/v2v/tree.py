"""The face of v2v: `channels/<name>/...` with a listener/ and a connector/ end (docs/v2v.md)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from backends.notify import Changed
from backends.v2v import Channel, End, V2v
from backends.values import parse_bool
from vfs.tree.nodes import Caller, Node
from vfs.tree.objects import Collection, LazyObjectDir, ObjectDir
from vfs.tree.streams import QueueStream, StreamFile
from vfs.tree.values import ValueFile, flat_keyed


class Attachment:
    """One open of stream, msg or records: attaches (listen or connect) on open, disconnects on
    close. The end's calls for the kind are bound once here: they run several times a message."""

    def __init__(self, end: End, kind: str) -> None:
        end.attach(kind)
        self.end = end
        self.changed: Changed = end.changed
        self.readable: Callable[[], bool]
        self.read_now: Callable[[int], bytes]
        self.writable: Callable[[int], bool]
        self.write_now: Callable[[memoryview], int]
        self.gather = kind == "stream"  # bytes, no boundaries: a read may take several ringfuls
        if kind == "stream":
            self.readable, self.read_now = end.stream_readable, end.stream_read
            self.writable, self.write_now = end.stream_writable, end.stream_write
        else:
            records = kind == "records"
            self.readable = end.msg_readable
            self.read_now = partial(end.msg_read, records=records)
            self.writable = partial(end.msg_writable, records=records)
            self.write_now = partial(end.msg_write, records=records)

    async def close(self) -> None:
        await self.end.detach()


def end_dir(end: End) -> Node:
    def attach(kind: str) -> Callable[[int, Caller], Attachment]:
        return lambda flags, caller: Attachment(end, kind)

    def open_events(flags: int, caller: Caller) -> QueueStream:
        queue = end.events.subscribe()
        return QueueStream(queue, lambda: end.events.unsubscribe(queue))

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
    # A partial, not a closure: all an idle channel's node keeps of the entries it has not made.
    return LazyObjectDir(ch.status, partial(channel_entries, ch))


def channel_entries(ch: Channel) -> dict[str, Node]:
    def order(which: str) -> ValueFile:
        return ValueFile(
            lambda: str(getattr(ch, which.replace("_ring", ""))), lambda text: ch.set_order(which, text)
        )

    return {
        "prod_ring_order": order("prod_ring_order"),
        "cons_ring_order": order("cons_ring_order"),
        "transport": ValueFile(lambda: ch.transport_spec, ch.set_transport),
        "listener": end_dir(ch.ends["listener"]),
        "connector": end_dir(ch.ends["connector"]),
    }


def channels_dir(core: V2v, create: Callable[[str], Any], destroy: Callable[[str], Any]) -> Node:
    return Collection(
        lambda: core.channels,
        lambda name, ch: channel_dir(ch),
        create=create,
        destroy=destroy,
        cache_names=True,  # these objects go only by rmdir, which the kernel itself sees
    )
