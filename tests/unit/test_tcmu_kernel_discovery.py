"""Finding the kernel's TCMU devices without a kernel: netlink messages both ways (the bytes
the kernel sends and takes), uio names, and a sysfs tree laid out as the kernel lays it."""

from __future__ import annotations

import struct
from pathlib import Path

from backends.tcmu import netlink, uio


def test_a_device_added_message_decodes() -> None:
    family = 0x1C
    data = netlink.encode(
        family,
        netlink.ADDED_DEVICE,
        [
            ("TCMU_ATTR_DEVICE", "tcm-user/0/d0/ram/"),
            ("TCMU_ATTR_MINOR", 3),
            ("TCMU_ATTR_DEVICE_ID", 7),
        ],
    )
    noise = netlink.encode(family + 1, netlink.ADDED_DEVICE, [("TCMU_ATTR_MINOR", 9)])  # another family
    (event,) = netlink.decode(noise + data, family)
    assert (event.cmd, event.device, event.minor, event.device_id) == (1, "tcm-user/0/d0/ram/", 3, 7)


def test_our_reply_is_the_done_command_with_status_and_device_id() -> None:
    data = netlink.encode(
        0x1C, netlink.RECONFIG_DEVICE_DONE, [("TCMU_ATTR_CMD_STATUS", -22), ("TCMU_ATTR_DEVICE_ID", 7)]
    )
    length, msg_type = struct.unpack_from("<IH", data)
    assert length == len(data) and msg_type == 0x1C and data[16] == netlink.RECONFIG_DEVICE_DONE
    (back,) = netlink.decode(data, 0x1C)
    assert back.device_id == 7


def test_uio_names() -> None:
    assert uio.parse_name("tcm-user/0/d0/file//img/a.img") == (0, "d0", "file//img/a.img")
    assert uio.parse_name("tcm-user/2/d1") == (2, "d1", "")
    assert uio.parse_name("uio_pci_generic") is None
    assert uio.parse_name("tcm-user/x/d1/ram/") is None


def test_scan_reads_a_sysfs_tree(tmp_path: Path) -> None:
    for n, name in ((0, "tcm-user/0/d0/ram/"), (1, "something else"), (2, "tcm-user/1/d2/file//i")):
        d = tmp_path / f"uio{n}"
        (d / "maps/map0").mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "maps/map0/size").write_text("0x40800000\n")
    found = uio.scan(tmp_path)
    assert [(i.index, i.hba, i.name, i.subtype, i.map_size) for i in found] == [
        (0, 0, "d0", "ram", 0x40800000),
        (2, 1, "d2", "file", 0x40800000),
    ]
    assert str(found[1].configfs).endswith("target/core/user_1/d2")
