"""Run the benchmarks: `python -m bench [--quick] [--only GROUP,...] [--runs N] [--results DIR]`.

Prints one table (each workload, our figure, each reference's figure and our ratio to it:
>1 means we do better), medians of alternating runs; writes results.md and results.png. A full
run (every group, not --quick) also writes bench/RESULTS.md, the table the repository keeps.
Installs nothing: a reference that cannot run is listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from bench import kernel, workloads
from bench.harness import RETAKES, Bench

GROUPS = {
    "device": workloads.device_path,
    "handlers": workloads.handlers,
    "channels": workloads.channels,
    "keys": workloads.keys,
    "scale": workloads.scale,
    "kernel": kernel.kernel,
}


def machine() -> str:
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    system = f"Linux {platform.release()}, Python {platform.python_version()}"
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, {system}"


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, one run: checks the bench runs, not speed"
    )
    p.add_argument("--runs", type=int, help="alternating runs per workload (default 5, --quick 1)")
    p.add_argument("--only", help=f"comma-separated groups: {', '.join(GROUPS)}")
    p.add_argument("--results", default="bench/results", help="where results.md and results.png go")
    p.add_argument(
        "--steal-limit",
        type=float,
        help=f"retake a sample (up to {RETAKES} times) when the host stole more than this %% of the CPU"
        " during it (default 5, --quick 100: keep every sample)",
    )
    args = p.parse_args()
    if shutil.which("fio") is None:
        print("bench: fio is needed for the device workloads (Debian: fio)")
        return 2
    runs = args.runs or (1 if args.quick else 5)
    steal_limit = args.steal_limit if args.steal_limit is not None else (100 if args.quick else 5)
    bench = Bench(runs, steal_limit=steal_limit / 100)
    groups = args.only.split(",") if args.only else list(GROUPS)
    started = time.time()
    mode = " (quick)" if args.quick else ""
    header = f"{datetime.date.today()} — {machine()} — {runs} run(s) per workload{mode}"
    if steal_limit < 100:
        header += f"; samples the host stole > {steal_limit:g}% of the CPU from retaken up to {RETAKES}×"
    print(header)
    with tempfile.TemporaryDirectory(prefix="vfs-bench-") as tmp:
        for group in groups:
            GROUPS[group](bench, Path(tmp), args.quick)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    table = f"{header}\n\n{bench.markdown()}"
    (out / "results.md").write_text(table)
    if not args.quick and not args.only:
        kept = Path(__file__).parent / "RESULTS.md"
        kept.write_text(f"# Latest full run (`python -m bench`)\n\n{table}")
        print(f"wrote {kept}")
    bench.chart(out / "results.png")
    print(f"\n{len(bench.rows)} rows in {time.time() - started:.0f}s; wrote {out}/results.md and results.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
