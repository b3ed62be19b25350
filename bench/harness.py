"""Medians of alternating runs, ratios against references, and the table in three forms.

On a shared host the hypervisor takes CPU time away from this machine (steal, in /proc/stat),
and that noise slows ours and the references unevenly — the ratios alone do not show it. So
every sample is timed for steal too: one the host stole more than a limit of is taken again (a
few times at most, the same rule for ours and every reference), and each row says how many
were retaken and the worst steal among the samples it kept.
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
    steals: list[float] = field(default_factory=list)  # host steal during each kept sample
    retaken: int = 0  # samples taken again because the host stole too much during them

    def host(self) -> str:
        """The worst steal among the kept samples, and how many were retaken."""
        if not self.steals:
            return ""
        retaken = f", {self.retaken} retaken" if self.retaken else ""
        return f"steal ≤{max(self.steals):.0%}{retaken}"

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


RETAKES = 3  # per sample, at most: a storm on the host can last minutes, the bench should not


class Bench:
    def __init__(
        self,
        runs: int,
        steal_limit: float = 0.05,
        retakes: int = RETAKES,
        ticks: Callable[[], tuple[int, int] | None] = cpu_times,
    ) -> None:
        self.runs = runs
        self.steal_limit = steal_limit
        self.retakes = retakes
        self.ticks = ticks
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def _sample(self, row: Row, fn: Callable[[], float]) -> float:
        """One figure, taken again (up to `retakes` times) while the host steals more than
        `steal_limit` of the CPU during it."""
        retaken = 0
        while True:
            before = self.ticks()
            value = fn()
            share = stolen(before, self.ticks())
            if share is None or share <= self.steal_limit or retaken == self.retakes:
                break
            retaken += 1
        row.retaken += retaken
        if share is not None:
            row.steals.append(share)
        return value

    def measure(self, row: Row, ours: Callable[[], float], refs: dict[str, Callable[[], float]]) -> Row:
        """`runs` rounds; in each, ours then every reference once — so drift hits all alike."""
        for _ in range(self.runs):
            row.ours.append(self._sample(row, ours))
            for name, fn in refs.items():
                if name in row.missing:
                    continue
                try:
                    row.refs.setdefault(name, []).append(self._sample(row, fn))
                except Exception as e:  # a reference failing is reported, not fatal
                    row.missing[name] = f"failed: {e}"
                    row.refs.pop(name, None)
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
        if row.steals:
            parts.append(f"({row.host()})")
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
            out.append(
                f"| {row.group} | {row.workload} | {self.fmt(row.median(row.ours))} | {row.unit} "
                f"| {'; '.join(refs)} | {row.target} | {row.host()} |"
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
