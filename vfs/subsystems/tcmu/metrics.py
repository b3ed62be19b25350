"""The TCMU devices' metrics: what each device's `stats` and `status` hold."""

from __future__ import annotations

from collections.abc import Iterator

from backends.tcmu.core import Tcmu
from backends.tcmu.device import Stats
from vfs.metrics import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

BOUNDS_S = [str(bound / 1e9) for bound in Stats.BOUNDS]


def collect(core: Tcmu) -> Iterator[Metric]:
    by_kind = ["device", "kind"]
    commands = CounterMetricFamily("vfs_tcmu_commands", "Commands completed, by kind", labels=by_kind)
    moved = CounterMetricFamily("vfs_tcmu_bytes", "Bytes moved by commands, by kind", labels=by_kind)
    errors = CounterMetricFamily("vfs_tcmu_errors", "Commands that failed", labels=["device"])
    timeouts = CounterMetricFamily(
        "vfs_tcmu_timeouts", "Commands slower than cmd_time_out", labels=["device"]
    )
    latency = HistogramMetricFamily("vfs_tcmu_latency_seconds", "Command latency", labels=["device"])
    in_flight = GaugeMetricFamily("vfs_tcmu_in_flight", "Commands in the handler now", labels=["device"])
    enabled = GaugeMetricFamily("vfs_tcmu_enabled", "1 while the device is enabled", labels=["device"])
    size = GaugeMetricFamily("vfs_tcmu_size_bytes", "The device's size", labels=["device"])
    recovering = GaugeMetricFamily(
        "vfs_tcmu_recovering", "1 while the handler reconnects to its backend", labels=["device"]
    )
    for name, dev in core.devices.items():
        s = dev.stats
        for kind in s.KINDS:
            commands.add_metric([name, kind], s.ops[kind])
            moved.add_metric([name, kind], s.bytes[kind])
        errors.add_metric([name], s.errors)
        timeouts.add_metric([name], s.timeouts)
        cumulative, total = [], 0
        for bound, count in zip([*BOUNDS_S, "+Inf"], s.buckets, strict=True):
            total += count
            cumulative.append((bound, total))
        latency.add_metric([name], cumulative, sum_value=s.latency_sum / 1e9)
        in_flight.add_metric([name], len(dev.engine.in_flight) if dev.engine else 0)
        enabled.add_metric([name], int(dev.enabled))
        size.add_metric([name], dev.size)
        recovering.add_metric([name], int(dev.recovering))
    yield from (commands, moved, errors, timeouts, latency, in_flight, enabled, size, recovering)
