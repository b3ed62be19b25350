"""Medians of alternating runs, ratios against references, and the table in three forms.

Each measured row also says how much CPU time the hypervisor took away from this machine
while it ran (steal, from /proc/stat): on a shared host that is the noise that moves ours and
the references' figures unevenly, which the ratios alone do not show.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Row:
    group: str
    workload: str
    unit: str
    higher_is_better: bool = True
    ours: list[float] = field(default_factory=list)
    refs: dict[str, list[float]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # reference -> why it could not run
    target: str = ""  # a goal, printed beside the figures
    steal: float | None = None  # share of CPU time stolen by the host while the row ran

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def ratio(self, ref: str) -> float | None:
        """>1 means we do better, whichever way the unit points."""
        ours, theirs = self.median(self.ours), self.median(self.refs.get(ref, []))
        if not ours or not theirs:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) ticks of all CPUs since boot, or None where /proc/stat does not say."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:9]  # user nice system idle iowait irq softirq steal
    except OSError:
        return None
    if len(fields) < 8:
        return None
    ticks = [int(v) for v in fields]
    return ticks[7], sum(ticks)


def stolen(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class Bench:
    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def measure(self, row: Row, ours: Callable[[], float], refs: dict[str, Callable[[], float]]) -> Row:
        """`runs` rounds; in each, ours then every reference once — so drift hits all alike."""
        start = cpu_times()
        for _ in range(self.runs):
            row.ours.append(ours())
            for name, fn in refs.items():
                if name in row.missing:
                    continue
                try:
                    row.refs.setdefault(name, []).append(fn())
                except Exception as e:  # a reference failing is reported, not fatal
                    row.missing[name] = f"failed: {e}"
                    row.refs.pop(name, None)
        row.steal = stolen(start, cpu_times())
        self.rows.append(row)
        print(self.line(row), flush=True)
        return row

    def single(self, row: Row) -> Row:
        self.rows.append(row)
        print(self.line(row), flush=True)
        return row

    @staticmethod
    def fmt(value: float | None) -> str:
        if value is None:
            return "-"
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"

    def line(self, row: Row) -> str:
        parts = [f"{row.group:<9} {row.workload:<34} {self.fmt(row.median(row.ours)):>10} {row.unit:<7}"]
        parts.extend(self._ref(row, name) for name in row.refs)
        parts.extend(f"{name}: n/a" for name in row.missing)
        if row.target:
            parts.append(f"[target {row.target}]")
        if row.steal is not None:
            parts.append(f"(steal {row.steal:.0%})")
        return "  ".join(parts)

    def _ref(self, row: Row, name: str) -> str:
        ratio = row.ratio(name)
        value = self.fmt(row.median(row.refs[name]))
        return f"{name} {value} (x{ratio:.2f})" if ratio else f"{name} {value}"

    def markdown(self) -> str:
        out = [
            "| group | workload | ours | unit | references (value, our ratio: >1 = we do better) "
            "| target | host steal |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            refs = [self._ref(row, name) for name in row.refs] + [f"{n}: n/a" for n in row.missing]
            steal = "" if row.steal is None else f"{row.steal:.0%}"
            out.append(
                f"| {row.group} | {row.workload} | {self.fmt(row.median(row.ours))} | {row.unit} "
                f"| {'; '.join(refs)} | {row.target} | {steal} |"
            )
        missing = {name: why for row in self.rows for name, why in row.missing.items()}
        if missing:
            out.append("")
            out.extend(f"- {name} could not run: {why}" for name, why in sorted(missing.items()))
        out.extend(f"- {note}" for note in self.notes)
        return "\n".join(out) + "\n"

    def chart(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self.rows if r.refs]
        labels, series = [], {}
        for r in rows:
            labels.append(f"{r.group}: {r.workload}")
            for name in r.refs:
                series.setdefault(name, {})[len(labels) - 1] = r.ratio(name) or 0
        fig, ax = plt.subplots(figsize=(12, max(4, 0.35 * len(labels) * max(1, len(series)) / 2 + 2)))
        height = 0.8 / max(1, len(series))
        for i, (name, values) in enumerate(sorted(series.items())):
            ys = [j + i * height for j in values]
            ax.barh(ys, list(values.values()), height=height, label=name)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("our ratio to the reference (>1: we do better)")
        ax.invert_yaxis()
        if series:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
