"""World storage's metrics: what each slot's `status` and the root of `worlds/` hold."""

from __future__ import annotations

from collections.abc import Iterator

from backends.worldstorage.core import WorldStorage
from vfs.metrics import GaugeMetricFamily, Metric


def collect(core: WorldStorage) -> Iterator[Metric]:
    worlds = GaugeMetricFamily("vfs_storage_worlds", "Worlds with a block in the slot", labels=["slot"])
    blocks = GaugeMetricFamily(
        "vfs_storage_materialized_blocks", "Blocks whose memory exists (touched)", labels=["slot"]
    )
    size = GaugeMetricFamily("vfs_storage_block_size_bytes", "The slot's block size", labels=["slot"])
    for name, slot in core.slots.items():
        status = slot.status()
        worlds.add_metric([name], status["worlds"])
        blocks.add_metric([name], status["materialized"])
        size.add_metric([name], slot.size)
    yield from (worlds, blocks, size)
    yield GaugeMetricFamily("vfs_worlds", "Processes watched as worlds", value=len(core.worlds))
