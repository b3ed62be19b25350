"""The v2v channels' metrics: what each end's `stats` and `status` hold."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

from backends.v2v.channel import V2v
from backends.v2v.end import State
from backends.v2v.ring import RingStats
from vfs.metrics import CounterMetricFamily, GaugeMetricFamily, Metric

HELP = {
    "messages_sent": "Messages this end put on its ring",
    "messages_received": "Messages this end took off its peer's ring",
    "bytes_sent": "Payload bytes sent",
    "bytes_received": "Payload bytes received",
    "notifications_sent": "Event-channel notifications sent to the peer",
    "notifications_suppressed": "Notifications the peer's event threshold made unnecessary",
    "pads": "Padding records written at the ring's end",
    "full_ring_waits": "Times a writer waited for room on a full ring",
    "dropped_messages": "Messages unread when their session ended",
    "dropped_bytes": "Bytes of those messages",
}


def collect(core: V2v) -> Iterator[Metric]:
    labels = ["channel", "end"]
    counters = {
        f.name: CounterMetricFamily(f"vfs_v2v_{f.name}", HELP.get(f.name, f.name), labels=labels)
        for f in fields(RingStats)
    }
    connected = GaugeMetricFamily("vfs_v2v_connected", "1 while the end is connected", labels=labels)
    for name, channel in core.channels.items():
        for role, end in channel.ends.items():
            for key, value in end.stats.as_dict().items():
                counters[key].add_metric([name, role], value)
            connected.add_metric([name, role], int(end.state is State.CONNECTED))
    yield from counters.values()
    yield connected
