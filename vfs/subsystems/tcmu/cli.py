"""`vfs scsi <device-dir> COMMAND`: SCSI commands through a device's `scsi` file, decoded.

inquiry [--vpd PAGE]     standard INQUIRY, or a VPD page (00 80 83 b0 b1 b2)
readcap                  READ CAPACITY(16)
tur                      TEST UNIT READY
sync                     SYNCHRONIZE CACHE(10)
sense                    REQUEST SENSE
unmap OFF LEN            UNMAP (bytes, block aligned)
caw OFF COMPARE WRITE    COMPARE AND WRITE of one block at byte OFF; COMPARE/WRITE are hex,
                         or @file, padded with zeros to the block size
raw HEX... [--out HEX|@file] [--in N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any

from backends.tcmu import scsi as op
from backends.tcmu import sg

STATUS = {
    0x00: "GOOD",
    0x02: "CHECK CONDITION",
    0x08: "BUSY",
    0x18: "RESERVATION CONFLICT",
    0x28: "TASK SET FULL",
}
KEYS = [
    "NO SENSE",
    "RECOVERED ERROR",
    "NOT READY",
    "MEDIUM ERROR",
    "HARDWARE ERROR",
    "ILLEGAL REQUEST",
    "UNIT ATTENTION",
    "DATA PROTECT",
    "BLANK CHECK",
    "VENDOR SPECIFIC",
    "COPY ABORTED",
    "ABORTED COMMAND",
    "RESERVED",
    "VOLUME OVERFLOW",
    "MISCOMPARE",
    "COMPLETED",
]
ASC = {
    (0x00, 0x00): "no additional sense information",
    (0x04, 0x04): "logical unit not ready, format in progress",
    (0x04, 0x0A): "logical unit not accessible, asymmetric access state transition",
    (0x04, 0x0B): "logical unit not accessible, target port in standby state",
    (0x0C, 0x00): "write error",
    (0x11, 0x00): "unrecovered read error",
    (0x1A, 0x00): "parameter list length error",
    (0x1D, 0x00): "miscompare during verify operation",
    (0x20, 0x00): "invalid command operation code",
    (0x21, 0x00): "logical block address out of range",
    (0x24, 0x00): "invalid field in cdb",
    (0x26, 0x00): "invalid field in parameter list",
    (0x2A, 0x09): "capacity data has changed",
    (0x30, 0x05): "cannot write medium, incompatible format",
    (0x39, 0x00): "saving parameters not supported",
    (0x44, 0x00): "internal target failure",
}


PROGRESS_AFTER = 0.5  # seconds: quicker commands draw nothing


class ScsiError(Exception):
    pass


def transact(
    device: Path, cdb: bytes, data_out: bytes = b"", data_in_len: int = 0
) -> tuple[int, bytes, bytes]:
    """One command; on a terminal, a long one (FORMAT UNIT, a large WRITE SAME) shows the
    progress the device's status reports while it runs; elsewhere nothing is drawn."""
    if not sys.stderr.isatty():
        return _transact(device, cdb, data_out, data_in_len)
    import rich.console  # only on a terminal: every other `vfs` command starts without it
    import rich.progress

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        done = pool.submit(_transact, device, cdb, data_out, data_in_len)
        try:
            return done.result(timeout=PROGRESS_AFTER)
        except concurrent.futures.TimeoutError:
            pass
        with rich.progress.Progress(transient=True, console=rich.console.Console(stderr=True)) as bar:
            task = bar.add_task(f"{device.name}: waiting", total=None)
            while not done.done():
                step = _progress(device)
                if step is not None:
                    what, blocks, total = step
                    bar.update(task, description=f"{device.name}: {what}", completed=blocks, total=total)
                concurrent.futures.wait([done], timeout=0.2)
        return done.result()


def _progress(device: Path) -> tuple[str, int, int] | None:
    """The device's `progress` status line: (command, blocks done, of), or None."""
    try:
        for line in (device / "status").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "progress" and value != "-":
                what, _, counts = value.partition(" ")
                blocks, _, total = counts.partition("/")
                return what, int(blocks), int(total)
    except (OSError, ValueError):
        pass
    return None


def _transact(device: Path, cdb: bytes, data_out: bytes, data_in_len: int) -> tuple[int, bytes, bytes]:
    fd = os.open(device / "scsi", os.O_RDWR)
    try:
        try:
            os.write(fd, sg.encode_request(cdb, data_out, data_in_len))
        except OSError as e:
            reason = os.read(fd, 4096).decode(errors="replace").strip()
            raise ScsiError(f"{e.strerror}: {reason}") from None
        return sg.decode_response(os.read(fd, sg.RESPONSE.size + 255 + data_in_len))
    finally:
        os.close(fd)


def decode_sense(sense: bytes) -> dict[str, Any]:
    if len(sense) < 14:
        return {}
    key, asc, ascq = sense[2] & 0x0F, sense[12], sense[13]
    out: dict[str, Any] = {
        "key": KEYS[key],
        "asc": f"{asc:02x}",
        "ascq": f"{ascq:02x}",
        "meaning": ASC.get((asc, ascq), "see SPC-4 annex D"),
    }
    if sense[0] & 0x80:
        out["information"] = struct.unpack_from(">I", sense, 3)[0]
    if len(sense) > 17 and sense[15] & 0x80 and key == 0x2:
        out["progress"] = f"{struct.unpack_from('>H', sense, 16)[0] * 100 // 0x10000}%"
    return out


def decode_inquiry(data: bytes) -> dict[str, Any]:
    return {
        "peripheral_type": data[0] & 0x1F,
        "version": data[2],
        "response_format": data[3] & 0x0F,
        "vendor": data[8:16].decode(errors="replace").strip(),
        "product": data[16:32].decode(errors="replace").strip(),
        "revision": data[32:36].decode(errors="replace").strip(),
        "cmdque": bool(data[7] & 0x02),
    }


def decode_vpd(data: bytes) -> dict[str, Any]:
    page = data[1]
    body = data[4 : 4 + struct.unpack_from(">H", data, 2)[0]]
    if page == 0x00:
        return {"page": "00 supported pages", "pages": [f"{b:02x}" for b in body]}
    if page == 0x80:
        return {"page": "80 unit serial number", "serial": body.decode(errors="replace")}
    if page == 0x83:
        ids, pos = [], 0
        kinds = {0: "vendor specific", 1: "T10 vendor id", 3: "NAA"}
        while pos + 4 <= len(body):
            code_set, dtype, length = body[pos] & 0x0F, body[pos + 1] & 0x0F, body[pos + 3]
            value = body[pos + 4 : pos + 4 + length]
            ids.append(
                {
                    "type": kinds.get(dtype, dtype),
                    "value": value.hex() if code_set == 1 else value.decode(errors="replace"),
                }
            )
            pos += 4 + length
        return {"page": "83 device identification", "designators": ids}
    if page == 0xB0:
        f = struct.unpack_from(">IIIIIIIQ", body, 4)
        return {
            "page": "b0 block limits",
            "wsnz": bool(body[0] & 1),
            "max_compare_and_write": body[1],
            "max_transfer": f[0],
            "optimal_transfer": f[1],
            "max_unmap_lba_count": f[3],
            "max_unmap_descriptors": f[4],
            "optimal_unmap_granularity": f[5],
            "unmap_granularity_alignment": f[6] & 0x7FFFFFFF,
            "ugavalid": bool(f[6] >> 31),
            "max_write_same": f[7],
        }
    if page == 0xB1:
        return {
            "page": "b1 block device characteristics",
            "rotation_rate": struct.unpack_from(">H", body, 0)[0],
        }
    if page == 0xB2:
        return {
            "page": "b2 logical block provisioning",
            "lbpu": bool(body[1] & 0x80),
            "lbpws": bool(body[1] & 0x40),
            "lbpws10": bool(body[1] & 0x20),
            "lbprz": bool(body[1] & 0x04),
        }
    return {"page": f"{page:02x}", "hex": body.hex()}


def block_size(device: Path) -> int:
    return int((device / "block_size").read_text())


def payload(text: str, size: int | None = None) -> bytes:
    data = Path(text[1:]).read_bytes() if text.startswith("@") else bytes.fromhex(text)
    if size is not None:
        if len(data) > size:
            raise ScsiError(f"{len(data)} bytes do not fit one {size}-byte block")
        data = data.ljust(size, b"\0")
    return data


def run(args: argparse.Namespace) -> int:
    dev = Path(args.device)
    if not (dev / "scsi").exists():
        print(f"vfs scsi: {dev} is not a device directory (one like /mnt/vfs/devices/d0)", file=sys.stderr)
        return 2
    try:
        result: dict[str, Any]
        if args.command == "inquiry":
            if args.vpd is None:
                status, sense, data = transact(dev, bytes([op.INQUIRY, 0, 0, 0, 96, 0]), data_in_len=96)
                result = decode_inquiry(data) if status == 0 else {}
            else:
                page = int(args.vpd, 16)
                status, sense, data = transact(dev, bytes([op.INQUIRY, 1, page, 0x01, 0, 0]), data_in_len=256)
                result = decode_vpd(data) if status == 0 else {}
        elif args.command == "readcap":
            cdb = (
                bytes([op.SERVICE_ACTION_IN_16, op.READ_CAPACITY_16_SA])
                + bytes(8)
                + struct.pack(">I", 32)
                + bytes(2)
            )
            status, sense, data = transact(dev, cdb, data_in_len=32)
            result = {}
            if status == 0:
                last, bs = struct.unpack_from(">QI", data)
                result = {
                    "last_lba": last,
                    "block_size": bs,
                    "bytes": (last + 1) * bs,
                    "lbpme": bool(data[14] & 0x80),
                    "lbprz": bool(data[14] & 0x40),
                }
        elif args.command == "tur":
            status, sense, data = transact(dev, bytes(6))
            result = {}
        elif args.command == "sync":
            status, sense, data = transact(dev, bytes([op.SYNCHRONIZE_CACHE_10]) + bytes(9))
            result = {}
        elif args.command == "sense":
            status, sense, data = transact(dev, bytes([op.REQUEST_SENSE, 0, 0, 0, 18, 0]), data_in_len=18)
            result = {"current": decode_sense(data)}
        elif args.command == "unmap":
            bs = block_size(dev)
            off, length = int(args.offset, 0), int(args.length, 0)
            if off % bs or length % bs:
                raise ScsiError(f"offset and length must be multiples of the block size ({bs})")
            desc = struct.pack(">QI4x", off // bs, length // bs)
            params = struct.pack(">HH4x", len(desc) + 6, len(desc)) + desc
            status, sense, data = transact(
                dev, struct.pack(">BBxxxxxHB", op.UNMAP, 0, len(params), 0), params
            )
            result = {}
        elif args.command == "caw":
            bs = block_size(dev)
            off = int(args.offset, 0)
            if off % bs:
                raise ScsiError(f"offset must be a multiple of the block size ({bs})")
            data_out = payload(args.compare, bs) + payload(args.write, bs)
            cdb = struct.pack(">BBQxxxBxx", op.COMPARE_AND_WRITE, 0, off // bs, 1)
            status, sense, data = transact(dev, cdb, data_out)
            result = {}
        else:  # raw
            cdb = bytes.fromhex("".join(args.hex))
            status, sense, data = transact(dev, cdb, payload(args.out) if args.out else b"", args.data_in)
            result = {"data": data.hex()} if data else {}
    except OSError as e:  # the device refused the transfer: say which file and why, not errno
        why = (dev / "last_error").read_text().strip() if (dev / "last_error").exists() else ""
        print(f"vfs scsi: {e.filename or dev}: {e.strerror}" + (f" ({why})" if why else ""), file=sys.stderr)
        return 2
    except (ScsiError, ValueError) as e:
        print(f"vfs scsi: {e}", file=sys.stderr)
        return 2
    answer = {"status": STATUS.get(status, f"{status:#04x}"), **result}
    if sense:
        answer["sense"] = decode_sense(sense)
    if args.json:
        print(json.dumps(answer))
    else:
        for key, value in answer.items():
            if isinstance(value, dict):
                for k, v in value.items():
                    print(f"{key}.{k}: {v}")
            else:
                print(f"{key}: {value}")
    return 0 if status == 0 else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "scsi",
        help="send SCSI commands to a device, decoded",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("device", help="the device directory, e.g. /mnt/vfs/devices/d0")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    # --json also after the command (`vfs scsi DEV readcap --json`); SUPPRESS keeps the one
    # given before it when it is not repeated
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object")
    cmds = p.add_subparsers(dest="command", required=True)
    inq = cmds.add_parser("inquiry", parents=[after], help="standard INQUIRY or a VPD page")
    inq.add_argument("--vpd", metavar="PAGE", help="hex page code: 00 80 83 b0 b1 b2")
    for name, what in (
        ("readcap", "READ CAPACITY(16): last LBA, block size, bytes"),
        ("tur", "TEST UNIT READY"),
        ("sync", "SYNCHRONIZE CACHE(10)"),
        ("sense", "REQUEST SENSE"),
    ):
        cmds.add_parser(name, parents=[after], help=what)
    um = cmds.add_parser("unmap", parents=[after], help="UNMAP a byte range, e.g. unmap 0 1048576")
    um.add_argument("offset", help="bytes, a multiple of the block size")
    um.add_argument("length", help="bytes, a multiple of the block size")
    caw = cmds.add_parser("caw", parents=[after], help="COMPARE AND WRITE one block")
    caw.add_argument("offset", help="bytes, a multiple of the block size")
    caw.add_argument("compare", help="hex or @file")
    caw.add_argument("write", help="hex or @file")
    raw = cmds.add_parser("raw", parents=[after], help="any CDB, e.g. raw 00 00 00 00 00 00")
    raw.add_argument("hex", nargs="+", help="the CDB in hex")
    raw.add_argument("--out", help="data to the device: hex or @file")
    raw.add_argument("--in", dest="data_in", type=int, default=0, help="bytes expected from the device")
    p.set_defaults(func=run)
