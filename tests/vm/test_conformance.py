"""libiscsi's conformance suite (iscsi-test-cu) against a vfs `file` device the kernel uses
through a tcm_loop LUN: the whole SCSI family (215 tests), every test passing but the known
failures of the layers below (tests/vm/conformance.py). The whole family in one run takes
~100 s under TCG; a subset in separate runs took longer (each run costs ~10 s to start)."""

from __future__ import annotations

import shutil

import pytest

from tests.vm.conformance import OUTSIDE, parse
from tests.vm.test_kernel_tcmu import boot


def test_iscsi_test_cu_on_a_kernel_disk_served_by_vfs() -> None:
    if shutil.which("iscsi-test-cu") is None:
        pytest.skip("iscsi-test-cu is not installed (Debian: libiscsi-bin)")
    r = boot(
        """
start_vfs
SD=$(disk d0 file//tmp/img/d0.img $((64 << 20)))
wait_for 10 "[ -c /dev/sg0 ]"
conformance /dev/sg0 SCSI
grep -E '^kernel_(commands|bad_entries)' $MNT/devices/d0/status
"""
    )
    assert r.rc == 0, r.output[-4000:]
    results = parse(r.output)
    assert results.ran == 215, r.output[-4000:]
    assert sorted(results.failed) == sorted(OUTSIDE), r.output[-6000:]
    assert results.passed == results.ran - len(OUTSIDE)
    assert "kernel_bad_entries 0" in r.output
