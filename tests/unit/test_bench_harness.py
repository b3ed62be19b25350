"""The bench's arithmetic and table: ratios, missing references, host steal."""

from __future__ import annotations

import time

from bench.harness import Bench, Row, stolen


def test_a_ratio_above_one_means_we_do_better_whichever_way_the_unit_points() -> None:
    rate = Row("g", "rate", "ops/s", ours=[10, 30, 20], refs={"ref": [10, 10, 40]})
    assert rate.ratio("ref") == 2.0  # medians: 20 against 10
    latency = Row("g", "latency", "µs", higher_is_better=False, ours=[50], refs={"ref": [100]})
    assert latency.ratio("ref") == 2.0
    assert Row("g", "w", "x", ours=[1]).ratio("absent") is None


def test_the_table_names_a_reference_that_failed_and_what_the_host_stole() -> None:
    bench = Bench(runs=3)
    calls: list[str] = []

    def broken() -> float:
        calls.append("broken")
        raise RuntimeError("no qemu-storage-daemon")

    def ours() -> float:
        time.sleep(0.03)  # long enough for the kernel's CPU tick counters to move
        return 2.0

    row = bench.measure(Row("device", "w", "MB/s"), ours, {"ref": lambda: 1.0, "gone": broken})
    assert row.ours == [2.0] * 3 and row.refs == {"ref": [1.0] * 3}
    assert calls == ["broken"]  # tried once, then reported instead of retried
    assert row.steal is not None and 0.0 <= row.steal <= 1.0  # /proc/stat has it on Linux
    md = bench.markdown()
    assert "| device | w | 2 | MB/s | ref 1 (x2.00); gone: n/a |  |" in md
    assert "- gone could not run: failed: no qemu-storage-daemon" in md
    assert md.splitlines()[2].endswith(f"| {row.steal:.0%} |")


def test_steal_is_the_stolen_share_of_the_ticks_in_between() -> None:
    assert stolen((10, 1000), (60, 2000)) == 0.05
    assert stolen(None, (60, 2000)) is None
    assert stolen((10, 1000), (10, 1000)) is None  # no time passed: no share to give
