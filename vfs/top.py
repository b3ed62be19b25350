"""`vfs top`: a live view of a mount — devices, channels, slots, sessions — drawn with rich.

Each refresh reads the mount's `metrics` file once and parses it with prometheus_client's own
parser; rates are the counters' differences between two refreshes, latency the histogram's.
So the view shows exactly what a Prometheus scrape would, and costs the daemon one read.
`q` or Ctrl-C quits.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def read(mnt: Path) -> Samples:
    """{sample name: {sorted labels: value}} from the mount's metrics file."""
    samples: Samples = defaultdict(dict)
    for family in text_string_to_metric_families((mnt / "metrics").read_text()):
        for s in family.samples:
            samples[s.name][tuple(sorted(s.labels.items()))] = s.value
    return samples


def by(samples: Samples, name: str, key: str) -> dict[str, float]:
    """{label `key`'s value: sample} for one sample name (summed over other labels)."""
    out: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, {}).items():
        out[dict(labels).get(key, "")] += value
    return out


def pick(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def rate(now: Samples, before: Samples | None, dt: float, name: str, **labels: str) -> float:
    if before is None or dt <= 0:
        return 0.0
    return max(0.0, pick(now, name, **labels) - pick(before, name, **labels)) / dt


def table(title: str, left: list[str], right: list[str]) -> Table:
    """Names and states flush left, numbers flush right."""
    out = Table(title=title, expand=True)
    for column in left:
        out.add_column(column)
    for column in right:
        out.add_column(column, justify="right")
    return out


def render(mnt: Path, now: Samples, before: Samples | None, dt: float) -> Group:
    up = pick(now, "vfs_uptime_seconds")
    rss = pick(now, "vfs_resident_memory_bytes") / 2**20
    requests = sum(now.get("vfs_fuse_requests_total", {}).values())
    earlier = sum(before.get("vfs_fuse_requests_total", {}).values()) if before else requests
    per_s = max(0.0, requests - earlier) / dt if dt > 0 else 0.0
    header = Text(
        f"vfs at {mnt}   up {int(up)} s   RSS {rss:.1f} MiB   FUSE {per_s:.0f} req/s   "
        f"refreshed every {dt:.1f} s   q quits",
        style="bold",
    )
    devices = table(
        "devices",
        ["device", "state"],
        ["read IOPS", "write IOPS", "read MB/s", "write MB/s", "avg latency µs", "in flight", "errors"],
    )
    for dev in sorted(by(now, "vfs_tcmu_enabled", "device")):
        lat_n = rate(now, before, dt, "vfs_tcmu_latency_seconds_count", device=dev)
        lat_s = rate(now, before, dt, "vfs_tcmu_latency_seconds_sum", device=dev)
        state = "enabled" if pick(now, "vfs_tcmu_enabled", device=dev) else "disabled"
        if pick(now, "vfs_tcmu_recovering", device=dev):
            state = "recovering"
        devices.add_row(
            dev,
            state,
            f"{rate(now, before, dt, 'vfs_tcmu_commands_total', device=dev, kind='read'):.0f}",
            f"{rate(now, before, dt, 'vfs_tcmu_commands_total', device=dev, kind='write'):.0f}",
            f"{rate(now, before, dt, 'vfs_tcmu_bytes_total', device=dev, kind='read') / 1e6:.1f}",
            f"{rate(now, before, dt, 'vfs_tcmu_bytes_total', device=dev, kind='write') / 1e6:.1f}",
            f"{lat_s / lat_n * 1e6:.0f}" if lat_n else "-",
            f"{pick(now, 'vfs_tcmu_in_flight', device=dev):.0f}",
            f"{pick(now, 'vfs_tcmu_errors_total', device=dev):.0f}",
        )
    channels = table(
        "channels",
        ["channel", "end", "state"],
        ["msgs/s out", "msgs/s in", "MB/s out", "MB/s in", "full-ring waits"],
    )
    for labels in sorted(now.get("vfs_v2v_connected", {})):
        ch, end = dict(labels)["channel"], dict(labels)["end"]
        channels.add_row(
            ch,
            end,
            "connected" if now["vfs_v2v_connected"][labels] else "-",
            f"{rate(now, before, dt, 'vfs_v2v_messages_sent_total', channel=ch, end=end):.0f}",
            f"{rate(now, before, dt, 'vfs_v2v_messages_received_total', channel=ch, end=end):.0f}",
            f"{rate(now, before, dt, 'vfs_v2v_bytes_sent_total', channel=ch, end=end) / 1e6:.2f}",
            f"{rate(now, before, dt, 'vfs_v2v_bytes_received_total', channel=ch, end=end) / 1e6:.2f}",
            f"{pick(now, 'vfs_v2v_full_ring_waits_total', channel=ch, end=end):.0f}",
        )
    slots = table("storage slots", ["slot"], ["worlds", "materialized blocks", "block size"])
    for slot, worlds in sorted(by(now, "vfs_storage_worlds", "slot").items()):
        blocks = pick(now, "vfs_storage_materialized_blocks", slot=slot)
        slots.add_row(
            slot,
            f"{worlds:.0f}",
            f"{blocks:.0f}",
            f"{pick(now, 'vfs_storage_block_size_bytes', slot=slot):.0f}",
        )
    sessions = table("management sessions", ["handle"], ["events", "call", "in flight", "dropped"])
    for handle in sorted(by(now, "vfs_mgmt_in_flight", "handle")):
        sessions.add_row(
            handle,
            f"{pick(now, 'vfs_mgmt_sessions', handle=handle, kind='events'):.0f}",
            f"{pick(now, 'vfs_mgmt_sessions', handle=handle, kind='call'):.0f}",
            f"{pick(now, 'vfs_mgmt_in_flight', handle=handle):.0f}",
            f"{pick(now, 'vfs_mgmt_events_dropped_total', handle=handle):.0f}",
        )
    return Group(header, devices, channels, slots, sessions)


def run(mnt: Path, interval: float, once: bool = False) -> int:
    """Refresh every `interval` seconds until q or Ctrl-C; with `once`, print one frame (its
    rates over one interval) and return."""
    before: Samples | None = None
    taken = time.monotonic()
    if once:
        before = read(mnt)
        time.sleep(interval)
    interactive = sys.stdin.isatty() and not once
    saved = termios.tcgetattr(sys.stdin) if interactive else None
    try:
        if interactive:
            tty.setcbreak(sys.stdin.fileno())  # single keys, no echo: `q` quits at once
        with Live(auto_refresh=False, screen=interactive, transient=False) as live:
            while True:
                now, now_t = read(mnt), time.monotonic()
                live.update(render(mnt, now, before, now_t - taken), refresh=True)
                if once:
                    return 0
                before, taken = now, now_t
                if _quit(interval if interactive else None, interval):
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)


def _quit(wait: float | None, interval: float) -> bool:
    """Wait a refresh interval; True if `q` was typed meanwhile."""
    if wait is None:
        time.sleep(interval)
        return False
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and os.read(sys.stdin.fileno(), 1) in (b"q", b"Q"):
            return True
    return False
