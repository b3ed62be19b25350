"""The generic netlink family TCM-USER (version 2, multicast group "config"): the kernel says a
device was added, removed or reconfigured; with SUPP_KERN_CMD_REPLY set the kernel waits for
our *_DONE reply (its status decides whether a reconfig is committed). Messages are encoded and
decoded with pyroute2's netlink classes; the socket is a plain one, waited on by trio.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

import trio
from pyroute2.netlink import NLM_F_REQUEST, genlmsg
from pyroute2.netlink.generic import CTRL_CMD_GETFAMILY, GENL_ID_CTRL, ctrlmsg

from backends.errors import VfsError

FAMILY = "TCM-USER"
NETLINK_GENERIC = 16
NETLINK_ADD_MEMBERSHIP = 1
SOL_NETLINK = 270

UNSPEC, ADDED_DEVICE, REMOVED_DEVICE, RECONFIG_DEVICE = 0, 1, 2, 3
ADDED_DEVICE_DONE, REMOVED_DEVICE_DONE, RECONFIG_DEVICE_DONE, SET_FEATURES = 4, 5, 6, 7
DONE = {
    ADDED_DEVICE: ADDED_DEVICE_DONE,
    REMOVED_DEVICE: REMOVED_DEVICE_DONE,
    RECONFIG_DEVICE: RECONFIG_DEVICE_DONE,
}


class tcmu_msg(genlmsg):  # noqa: N801  (pyroute2's naming)
    nla_map = (
        ("TCMU_ATTR_UNSPEC", "none"),
        ("TCMU_ATTR_DEVICE", "asciiz"),
        ("TCMU_ATTR_MINOR", "uint32"),
        ("TCMU_ATTR_PAD", "none"),
        ("TCMU_ATTR_DEV_CFG", "asciiz"),
        ("TCMU_ATTR_DEV_SIZE", "uint64"),
        ("TCMU_ATTR_WRITECACHE", "uint8"),
        ("TCMU_ATTR_CMD_STATUS", "int32"),
        ("TCMU_ATTR_DEVICE_ID", "uint32"),
        ("TCMU_ATTR_SUPP_KERN_CMD_REPLY", "uint8"),
    )


@dataclass(frozen=True)
class Event:
    cmd: int
    device: str  # the uio name: tcm-user/<hba>/<name>/<config>
    minor: int | None
    device_id: int | None
    dev_cfg: str | None = None  # reconfig: one of these three is set
    dev_size: int | None = None
    writecache: int | None = None


def encode(msg_type: int, cmd: int, attrs: list[tuple[str, object]], seq: int = 0) -> bytes:
    m = tcmu_msg()
    m["cmd"] = cmd
    m["version"] = 2
    m["attrs"] = attrs
    m["header"]["type"] = msg_type
    m["header"]["flags"] = NLM_F_REQUEST
    m["header"]["sequence_number"] = seq
    m["header"]["pid"] = 0
    m.encode()
    return bytes(m.data)


def decode(data: bytes, family: int) -> list[Event]:
    """The TCM-USER messages in one datagram (others are ignored)."""
    events = []
    off = 0
    while off + 16 <= len(data):
        length = int.from_bytes(data[off : off + 4], "little")
        if length < 16 or off + length > len(data):
            break
        chunk = data[off : off + length]
        off += (length + 3) & ~3
        if int.from_bytes(chunk[4:6], "little") != family:
            continue
        m = tcmu_msg(chunk)
        m.decode()
        events.append(
            Event(
                m["cmd"],
                m.get_attr("TCMU_ATTR_DEVICE") or "",
                m.get_attr("TCMU_ATTR_MINOR"),
                m.get_attr("TCMU_ATTR_DEVICE_ID"),
                m.get_attr("TCMU_ATTR_DEV_CFG"),
                m.get_attr("TCMU_ATTR_DEV_SIZE"),
                m.get_attr("TCMU_ATTR_WRITECACHE"),
            )
        )
    return events


class TcmuNetlink:
    """A socket on the TCM-USER family, joined to its config group."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
        try:
            self.sock.bind((0, 0))
            self.family, groups = self._resolve()
            if "config" not in groups:
                raise VfsError(errno.ENOENT, f"{FAMILY} has no config multicast group")
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups["config"])
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._seq = 1

    def _resolve(self) -> tuple[int, dict[str, int]]:
        m = ctrlmsg()
        m["cmd"] = CTRL_CMD_GETFAMILY
        m["version"] = 1
        m["attrs"] = [("CTRL_ATTR_FAMILY_NAME", FAMILY)]
        m["header"]["type"] = GENL_ID_CTRL
        m["header"]["flags"] = NLM_F_REQUEST
        m["header"]["pid"] = 0
        m.encode()
        self.sock.send(m.data)
        reply = self.sock.recv(65536)
        if int.from_bytes(reply[4:6], "little") == 2:  # NLMSG_ERROR
            code = -int.from_bytes(reply[16:20], "little", signed=True)
            raise VfsError(code or errno.ENOENT, f"no {FAMILY} netlink family (is target_core_user loaded?)")
        r = ctrlmsg(reply)
        r.decode()
        groups = {
            g.get_attr("CTRL_ATTR_MCAST_GRP_NAME"): g.get_attr("CTRL_ATTR_MCAST_GRP_ID")
            for g in (r.get_attr("CTRL_ATTR_MCAST_GROUPS") or [])
        }
        return r.get_attr("CTRL_ATTR_FAMILY_ID"), groups

    def send(self, cmd: int, attrs: list[tuple[str, object]]) -> None:
        self._seq += 1
        self.sock.send(encode(self.family, cmd, attrs, self._seq))

    def set_features(self) -> None:
        """From now on the kernel waits for our reply to every device change (and a failed
        reply refuses the change, with its errno, to whoever made it in configfs)."""
        self.send(SET_FEATURES, [("TCMU_ATTR_SUPP_KERN_CMD_REPLY", 1)])

    def reply(self, event: Event, status: int) -> None:
        """`status` is 0 or a negative errno, as the kernel takes it."""
        if event.cmd in DONE and event.device_id is not None:
            self.send(
                DONE[event.cmd], [("TCMU_ATTR_CMD_STATUS", status), ("TCMU_ATTR_DEVICE_ID", event.device_id)]
            )

    async def receive(self) -> list[Event]:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                continue
            events = decode(data, self.family)
            if events:
                return events

    def close(self) -> None:
        self.sock.close()
