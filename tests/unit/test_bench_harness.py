"""The bench's arithmetic and table: ratios, missing references, samples the host stole from."""

from __future__ import annotations

import time
from collections.abc import Iterator

from bench.harness import Bench, Row, stolen


def test_a_ratio_above_one_means_we_do_better_whichever_way_the_unit_points() -> None:
    rate = Row("g", "rate", "ops/s", ours=[10, 30, 20], refs={"ref": [10, 10, 40]})
    assert rate.ratio("ref") == 2.0  # medians: 20 against 10
    latency = Row("g", "latency", "µs", higher_is_better=False, ours=[50], refs={"ref": [100]})
    assert latency.ratio("ref") == 2.0
    assert Row("g", "w", "x", ours=[1]).ratio("absent") is None


def test_the_table_names_a_reference_that_failed_and_what_the_host_stole() -> None:
    bench = Bench(runs=3, steal_limit=1.0)  # the real /proc/stat; keep every sample
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
    assert row.steals and all(0.0 <= s <= 1.0 for s in row.steals)  # /proc/stat has it on Linux
    md = bench.markdown()
    assert "| device | w | 2 | MB/s | ref 1 (x2.00); gone: n/a |  | steal ≤" in md
    assert "- gone could not run: failed: no qemu-storage-daemon" in md


def clock(*steals: float) -> Iterator[tuple[int, int]]:
    """(steal, total) ticks read before and after each sample: 100 ticks each, this share stolen."""
    steal = total = 0
    for share in steals:
        yield steal, total
        steal, total = steal + round(share * 100), total + 100
        yield steal, total


def test_a_sample_the_host_stole_from_is_taken_again_a_few_times_at_most() -> None:
    ticks = clock(0.50, 0.01, 0.02, 0.30, 0.40, 0.60, 0.0)
    bench = Bench(runs=2, steal_limit=0.05, retakes=2, ticks=lambda: next(ticks))
    figures = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    row = bench.measure(Row("g", "w", "x"), lambda: next(figures), {"ref": lambda: next(figures)})
    # ours: 50% stolen -> retaken, then 1% kept; ref: 2% kept; ours again: 30%, 40% retaken and
    # the third attempt kept whatever the host did (60%): a storm does not stall the bench.
    assert row.ours == [2.0, 6.0] and row.refs == {"ref": [3.0, 7.0]}
    assert row.retaken == 3 and row.steals == [0.01, 0.02, 0.60, 0.0]
    assert row.host() == "steal ≤60%, 3 retaken"


def test_steal_is_the_stolen_share_of_the_ticks_in_between() -> None:
    assert stolen((10, 1000), (60, 2000)) == 0.05
    assert stolen(None, (60, 2000)) is None
    assert stolen((10, 1000), (10, 1000)) is None  # no time passed: no share to give
