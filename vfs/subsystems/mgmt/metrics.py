"""The management handles' metrics: sessions, calls in flight, callbacks dropped."""

from __future__ import annotations

from collections.abc import Iterator

from backends.mgmt import Registry
from vfs.metrics import CounterMetricFamily, GaugeMetricFamily, Metric


def collect(registry: Registry) -> Iterator[Metric]:
    sessions = GaugeMetricFamily("vfs_mgmt_sessions", "Open sessions, by kind", labels=["handle", "kind"])
    in_flight = GaugeMetricFamily("vfs_mgmt_in_flight", "Calls running now", labels=["handle"])
    dropped = CounterMetricFamily(
        "vfs_mgmt_events_dropped", "Callbacks dropped because a session read too slowly", labels=["handle"]
    )
    for name, handle in registry.handles.items():
        live = list(handle.sessions.values())
        listening = sum(1 for s in live if s.listening)
        sessions.add_metric([name, "events"], listening)
        sessions.add_metric([name, "call"], len(live) - listening)
        in_flight.add_metric([name], handle.in_flight)
        dropped.add_metric([name], handle.dropped + sum(s.dropped for s in live))
    yield from (sessions, in_flight, dropped)
