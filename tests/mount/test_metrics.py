"""The root `metrics` file and `--metrics` over HTTP, parsed with prometheus_client's own parser:
every object kind is there, and the values move with real I/O (dd, channel messages, a world
writing its block, an open events session)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, Mount, device, wait_for
from tests.mount.test_v2v import attached, channel
from tests.mount.test_worldstorage import make_slot, worker


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the exposition text."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return samples[(name, tuple(sorted(labels.items())))]  # type: ignore[no-any-return]


def test_every_kind_is_there_and_moves_with_io(mnt: Mount) -> None:
    assert oct(os.stat(mnt.p("metrics")).st_mode & 0o777) == "0o444"
    data = device(mnt, "d", "ram/", 1 << 20)
    before = scrape(mnt.p("metrics").read_text())
    assert value(before, "vfs_tcmu_commands_total", device="d", kind="write") == 0
    assert mnt.sh(f"dd if=/dev/urandom of={data} bs=4k count=10 conv=notrunc status=none").returncode == 0
    after = scrape(mnt.p("metrics").read_text())
    assert value(after, "vfs_tcmu_commands_total", device="d", kind="write") == 10
    assert value(after, "vfs_tcmu_bytes_total", device="d", kind="write") == 40960
    assert value(after, "vfs_tcmu_enabled", device="d") == 1
    count = value(after, "vfs_tcmu_latency_seconds_count", device="d")
    assert count >= 10 and value(after, "vfs_tcmu_latency_seconds_bucket", device="d", le="+Inf") == count
    assert value(after, "vfs_tcmu_latency_seconds_sum", device="d") > 0
    writes = value(after, "vfs_fuse_requests_total", op="write")
    assert writes >= 10 + value(before, "vfs_fuse_requests_total", op="write")
    assert value(after, "vfs_resident_memory_bytes") > 10 << 20

    ch = channel(mnt)
    with attached(ch / "listener/msg", ch / "connector/msg", os.O_RDONLY, os.O_WRONLY) as (lfd, cfd):
        for _ in range(5):
            os.write(cfd, b"hello")
            assert os.read(lfd, 100) == b"hello"
        live = scrape(mnt.p("metrics").read_text())
        assert value(live, "vfs_v2v_messages_sent_total", channel="c", end="connector") == 5
        assert value(live, "vfs_v2v_bytes_received_total", channel="c", end="listener") == 25
        assert value(live, "vfs_v2v_connected", channel="c", end="listener") == 1

    make_slot(mnt)
    world = worker(mnt, "hi")
    try:
        wait_for(lambda: value(scrape(mnt.p("metrics").read_text()), "vfs_storage_worlds", slot="s") == 1)
        assert value(scrape(mnt.p("metrics").read_text()), "vfs_worlds") >= 1
    finally:
        world.kill()
        world.wait()

    events = subprocess.Popen(["cat", str(mnt.p("mgmt", "tcmu", "events"))], stdout=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: (
                value(scrape(mnt.p("metrics").read_text()), "vfs_mgmt_sessions", handle="tcmu", kind="events")
                == 1
            )
        )
    finally:
        events.kill()
        events.wait()
    assert value(scrape(mnt.p("metrics").read_text()), "vfs_mgmt_events_dropped_total", handle="tcmu") == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_served_over_http_on_localhost_only_unless_told(tmp_path: Path, mounts: list[Mount]) -> None:
    port = _free_port()
    m = Mount(tmp_path, extra=("--metrics", str(port)))
    mounts.append(m.start())
    device(m, "d", "ram/", 1 << 20)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        assert answer.status == 200
        samples = scrape(answer.read().decode())
    assert value(samples, "vfs_tcmu_size_bytes", device="d") == 1 << 20
    assert f"metrics served on http://127.0.0.1:{port}/metrics" in m.log_text()
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
    assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]  # local address


@pytest.mark.parametrize("bad", ["nope", "70000", "host:"])
def test_a_bad_metrics_address_is_refused_before_mounting(tmp_path: Path, bad: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "vfs", "mount", str(tmp_path), "--metrics", bad],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "ADDR:]PORT" in r.stderr
