"""libiscsi's iscsi-test-cu against a LUN in the test VM: its results as CONF lines (from
guest.sh's `conformance`), and the failures known to lie outside vfs, with the layer that owns
each. A failure list is compared, not the exit status (it is 1 whenever anything fails)."""

from __future__ import annotations

from dataclasses import dataclass, field

# Failures of the SCSI family over tcm_loop that vfs cannot change, and why (measured on
# Debian's 6.1 kernel; tcmu-runner 1.5.4 fails these as well, among its 35).
OUTSIDE = {
    "PrinReadKeys.Truncate": "LIO core: persistent reservations are emulated by the kernel for TCMU",
    "PrinReportCapabilities.Simple": "LIO core: persistent reservations",
    "ProutClear.Simple": "LIO core: persistent reservations",
    "ProutRegister.Simple": "LIO core: persistent reservations",
    "ProutReserve.Simple": "LIO core: persistent reservations",
    "WriteSame16.Unmap": "transport: its READ16 of 65536 blocks (32 MiB) is refused by SG_IO"
    " (tcm_loop's max_sectors); the WRITE SAME itself succeeds",
}


# Over LIO's iSCSI target (same kernel), besides: the engine answers COMPARE AND WRITE of more
# than MAXIMUM COMPARE AND WRITE LENGTH blocks, and a miscompare, with CHECK CONDITION (the
# device's `errors` counts each; over tcm_loop both tests pass), yet the iSCSI initiator sees GOOD.
# tcmu-runner fails these two over iSCSI as well.
OUTSIDE_ISCSI = {
    "CompareAndWrite.Simple": "LIO's iSCSI target: the TCMU device's CHECK CONDITION reaches the initiator as GOOD",
    "CompareAndWrite.Miscompare": "LIO's iSCSI target: as CompareAndWrite.Simple",
}


@dataclass
class Results:
    ran: int = 0
    passed: int = 0
    failed: list[str] = field(default_factory=list)


def parse(output: str, tag: str = "CONF") -> Results:
    """The CONF lines of one target (`tag` tells targets apart in one run)."""
    r = Results()
    for line in output.splitlines():
        words = line.split()
        if len(words) >= 5 and words[0] == tag and words[1] == "ran":
            r.ran += int(words[2])
            r.passed += int(words[4])
        elif len(words) == 3 and words[0] == tag and words[1] == "fail":
            r.failed.append(words[2])
    return r
