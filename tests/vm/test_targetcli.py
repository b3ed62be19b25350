"""targetcli drives vfs as it drives tcmu-runner: in a VM with Debian's kernel and a system
bus, `user:` backstores are listed and checked over D-Bus (org.kernel.TCMUService1), created
in configfs, served by vfs through target_core_user, used as a tcm_loop disk and exported by
LIO's iSCSI target on 127.0.0.1 to libiscsi's conformance tests (a smoke subset)."""

from __future__ import annotations

import shutil

import pytest

from tests.vm.conformance import OUTSIDE_ISCSI, parse
from tests.vm.test_kernel_tcmu import boot


def test_targetcli_makes_a_disk_served_by_vfs() -> None:
    for tool in ("targetcli", "dbus-daemon", "iscsi-test-cu"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: targetcli-fb dbus-daemon libiscsi-bin)")
    r = boot(
        """
system_bus
start_vfs
wait_for 30 "grep -q '^on' $MNT/mgmt/tcmu/keys/dbus"
say "targetcli"
targetcli <<'EOF' 2>&1 | tee /tmp/tcli.out
ls /backstores 1
/backstores/user:file create name=d0 size=64M cfgstring=/tmp/img/d0.img
/backstores/user:file create name=bad size=64M cfgstring=/etc/shadow
/loopback create naa.5001405000000001
/loopback/naa.5001405000000001/luns create /backstores/user:file/d0
ls /loopback
EOF
wait_for 60 "ls -d /sys/block/sd* >/dev/null 2>&1"
SD=/dev/$(basename "$(ls -d /sys/block/sd* | head -1)")
wait_for 30 "[ -b $SD ]"
say "disk $SD"
sg_inq "$SD" | grep -E 'Vendor identification|Product identification'
sg_readcap "$SD" | grep -E 'Last LBA'
cat $MNT/devices/d0/config
head -c $((1 << 20)) /dev/urandom > /tmp/r.bin
dd if=/tmp/r.bin of="$SD" bs=1M oflag=direct status=none
cmp -n $((1 << 20)) /tmp/r.bin /tmp/img/d0.img && say "the kernel's bytes are in the image"
cmp -n $((1 << 20)) /tmp/r.bin $MNT/devices/d0/data && say "and in devices/d0/data"
[ ! -e $MNT/devices/bad ] && [ ! -e $CORE/user_0/bad ] && say "the refused backstore is not made"
say "the same backstore over iSCSI on 127.0.0.1"
modprobe iscsi_target_mod
IQN=iqn.2003-01.org.linux-iscsi.vm:vfs
targetcli <<EOF 2>&1 | tee -a /tmp/tcli.out
/iscsi create $IQN
/iscsi/$IQN/tpg1/luns create /backstores/user:file/d0
/iscsi/$IQN/tpg1 set attribute authentication=0 demo_mode_write_protect=0 generate_node_acls=1 cache_dynamic_acls=1
EOF
wait_for 30 "iscsi-inq iscsi://127.0.0.1/$IQN/0 > /tmp/inq.out 2>&1"
grep -E 'Vendor|Product' /tmp/inq.out
CONF_TAG=ISCSI conformance iscsi://127.0.0.1/$IQN/0 SCSI.Inquiry SCSI.ReadCapacity16 SCSI.Write10 SCSI.CompareAndWrite
targetcli <<EOF 2>&1 | tee -a /tmp/tcli.out
/iscsi delete $IQN
/loopback delete naa.5001405000000001
/backstores/user:file delete d0
EOF
wait_for 30 "[ ! -e $MNT/devices/d0 ]" && say "deleted by targetcli, gone from devices/"
kill $VFS_PID; wait $VFS_PID || true
"""
    )
    out = r.output
    assert r.rc == 0, out[-4000:]
    assert "user:file" in out and "user:ram" in out
    assert "Created user-backed storage object d0 size 67108864." in out
    assert "cfgstring invalid: /etc/shadow is outside the image dirs (/tmp/img)" in out
    assert "LIO-ORG" in out and "Last LBA=131071" in out
    assert "file//tmp/img/d0.img" in out
    iscsi = parse(out, "ISCSI")
    assert iscsi.ran >= 20 and sorted(iscsi.failed) == sorted(OUTSIDE_ISCSI), out[-4000:]
    assert iscsi.passed == iscsi.ran - len(OUTSIDE_ISCSI)
    for line in (
        "the kernel's bytes are in the image",
        "and in devices/d0/data",
        "the refused backstore is not made",
        "deleted by targetcli, gone from devices/",
    ):
        assert line in out, out[-4000:]
