"""The kernel group: fio through the kernel's sd in the test VM (bench/kernel_guest.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.harness import Bench, Row
from bench.targets import REPO


def kernel(bench: Bench, base: Path, quick: bool) -> None:
    """fio through the kernel's sd on a tcm_loop LUN in the test VM: a vfs ram device served
    through target_core_user's ring against the in-kernel rd_mcp ramdisk, both in one VM, the
    same rounds alternating. TCG emulates the guest's CPU, so the figures are small; the ratio
    is what compares (and what the next step sets beside tcmu-runner's)."""
    from tests.vm import vm

    workloads = [("randread 4k qd1", "IOPS"), ("randread 4k qd16", "IOPS"), ("randwrite 4k qd16", "IOPS"),
                 ("read 1M qd4", "MB/s"), ("write 1M qd4", "MB/s")]  # fmt: skip
    try:
        vm.artefacts()
    except vm.VmUnavailableError as e:
        for label, unit in workloads:
            bench.single(Row("kernel", f"{label} (vfs ram)", unit, missing={"VM": str(e)}))
        return
    runs, runtime = (1, 2) if quick else (bench.runs, 10)
    script = (
        f"export REPO={str(REPO)!r} PY={sys.executable!r} RUNS={runs} RUNTIME={runtime}\n"
        f". {REPO}/bench/kernel_guest.sh\n"
    )
    result = vm.run(script, timeout=3600, cwd=str(REPO))
    samples = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    for label, unit in workloads:
        row = Row("kernel", f"{label} (vfs ram)", unit, target="the ratio to tcmu-runner: next issue")
        key = "iops" if unit == "IOPS" else "mbps"
        for s in samples:
            if s["workload"] == label:
                (row.ours if s["target"] == "vfs" else row.refs.setdefault("kernel rd_mcp", [])).append(
                    s[key]
                )
        if not row.ours:
            row.missing["vfs"] = f"the VM run gave no samples (rc {result.rc}): {result.output[-300:]!r}"
        bench.single(row)
