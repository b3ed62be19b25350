"""The kernel group: fio through the kernel's sd in the test VM (bench/kernel_guest.sh)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.harness import Bench, Row
from bench.targets import REPO


def kernel(bench: Bench, base: Path, quick: bool) -> None:
    """fio through the kernel's sd on tcm_loop LUNs in the test VM: a vfs `file` device served
    through target_core_user's ring, Debian's tcmu-runner on the same kind of image (its qcow
    handler on a raw file), and the in-kernel rd_mcp ramdisk as the ceiling, round by round in
    one VM. TCG emulates the guest's CPU, so the figures are small; the ratios compare. The
    full run also counts libiscsi's SCSI family on both TCMU disks."""
    from tests.vm import vm
    from tests.vm.conformance import parse

    shapes = [("randread", "4k", 1), ("randwrite", "4k", 1), ("randread", "4k", 16), ("randwrite", "4k", 16),
              ("read", "1M", 4), ("write", "1M", 4)]  # fmt: skip
    workloads = [(f"{rw} {bs} qd{qd}", "IOPS" if bs == "4k" else "MB/s") for rw, bs, qd in shapes]
    try:
        vm.artefacts()
    except vm.VmUnavailableError as e:
        for label, unit in workloads:
            bench.single(Row("kernel", f"{label} (vfs file)", unit, missing={"VM": str(e)}))
        return
    runs, runtime = (1, 2) if quick else (min(bench.runs, 3), 8)  # 3 rounds: ~10 min in the VM
    script = (
        f"export REPO={str(REPO)!r} PY={sys.executable!r} RUNS={runs} RUNTIME={runtime}"
        f" CONFORMANCE={0 if quick else 1}\n. {REPO}/bench/kernel_guest.sh\n"
    )
    result = vm.run(script, timeout=3600, cwd=str(REPO))
    samples = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    for label, unit in workloads:
        row = Row("kernel", f"{label} (vfs file)", unit, target="≥ 1.0× tcmu-runner")
        key = "iops" if unit == "IOPS" else "mbps"
        for s in samples:
            if s["workload"] == label:
                name = {"vfs": None, "rd_mcp": "kernel rd_mcp"}.get(s["target"], s["target"])
                (row.ours if name is None else row.refs.setdefault(name, [])).append(s[key])
        if not row.ours:
            row.missing["vfs"] = f"the VM run gave no samples (rc {result.rc}): {result.output[-300:]!r}"
        elif "tcmu-runner" not in row.refs:
            row.missing["tcmu-runner"] = "not installed (Debian: tcmu-runner; ./setup-debian --bench)"
        bench.single(row)
    if quick:
        return
    ours, theirs = parse(result.output, "CONF-vfs"), parse(result.output, "CONF-tcmu-runner")
    row = Row("kernel", "iscsi-test-cu SCSI family (of 215)", "passed", target="more than tcmu-runner")
    if ours.ran:
        row.ours.append(ours.passed)
    if theirs.ran:
        row.refs["tcmu-runner"] = [theirs.passed]
    bench.single(row)
    for name, r in (("vfs", ours), ("tcmu-runner", theirs)):
        failed = ", ".join(sorted(r.failed)) or "none"
        bench.notes.append(f"iscsi-test-cu SCSI on {name}: {r.passed} of {r.ran} passed; failed: {failed}")
