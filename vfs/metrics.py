"""Prometheus metrics: the root `metrics` file and, with `vfs mount --metrics ADDR:PORT`, the
same over HTTP (docs/operations.md).

Nothing is counted twice: each subsystem adds a source that reads, when scraped, the counters
its `stats` and `status` files show and yields prometheus_client metric families; the library
writes its own text format. Sources run on the event loop, which owns those counters: the
HTTP endpoint is prometheus_client's server thread, and its collector hops to the loop to
read them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

log = logging.getLogger("vfs.metrics")
Source = Callable[[], Iterable[Metric]]
PAGE = os.sysconf("SC_PAGE_SIZE")

__all__ = ["CounterMetricFamily", "GaugeMetricFamily", "HistogramMetricFamily", "Metric", "Metrics", "Source"]


class Metrics:
    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]
        self._server: Any = None

    def add(self, source: Source) -> None:
        self.sources.append(source)

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            try:
                yield from list(source())  # whole or nothing: a failing source is left out
            except Exception:
                log.exception("metrics source %s failed", getattr(source, "__qualname__", source))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (GET /metrics); called on the event loop."""
        token = trio.lowlevel.current_trio_token()
        metrics = self

        class FromLoop:
            def collect(self) -> list[Metric]:
                return trio.from_thread.run_sync(lambda: list(metrics.collect()), trio_token=token)

        registry = CollectorRegistry(auto_describe=False)
        registry.register(FromLoop())  # type: ignore[arg-type]
        self._server, _ = start_http_server(port, addr=host, registry=registry)
        log.info("metrics served on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
