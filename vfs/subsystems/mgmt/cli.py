"""`vfs keyval`: VMware's vmkmgmt_keyval over a mount, with the output shapes scripts grep.

    -d                      list instances       Key Value Instances: / Key Value Instance: <name>/<vendor>
    -l -i INST              list keys            Listing keys: / Name: / Type: / value:
    -a                      everything           each instance, then its keys
    -g -i INST -k KEY       get                  Key '<key>': <value>
    -s VALUE -i INST -k KEY set (silent on success; the reason from last_error on failure)
An INST is a handle's name or `<name>/<vendor>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from vfs.fuse import mountpoint as mp

LISTING_PREFIX = "Key Value Instance: "  # 20 characters: scripts strip exactly this


class KeyvalError(Exception):
    pass


def find_mount(explicit: str | None) -> Path:
    """The mount given, or the one the current directory is in, or the only one there is."""
    if explicit:
        return Path(explicit)
    found = [mnt for mnt, fstype in mp.mounts() if fstype == "fuse.vfs"]
    cwd = os.getcwd()
    inside = [m for m in found if cwd == m or cwd.startswith(m.rstrip("/") + "/")]
    if inside:
        return Path(max(inside, key=len))
    if len(found) == 1:
        return Path(found[0])
    if not found:
        raise KeyvalError("no vfs mount found; give one with -m MOUNT")
    raise KeyvalError(f"several vfs mounts ({', '.join(found)}); cd into one or choose one with -m MOUNT")


def read_status(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = value
    return out


class Mgmt:
    def __init__(self, mount: Path) -> None:
        self.root = mount / "mgmt"

    def instances(self) -> list[dict[str, str]]:
        out = []
        for name in sorted(os.listdir(self.root)):
            d = self.root / name
            vendor = (d / "vendor").read_text().strip()
            out.append(
                {
                    "instance": f"{name}/{vendor}",
                    "name": name,
                    "vendor": vendor,
                    "version": (d / "version").read_text().strip(),
                }
            )
        return out

    def handle(self, instance: str) -> Path:
        name, _, vendor = instance.partition("/")
        d = self.root / name
        if not d.is_dir():
            raise KeyvalError(f"no instance {instance!r} (see vfs keyval -d)")
        if vendor and (d / "vendor").read_text().strip() != vendor:
            raise KeyvalError(f"instance {name} is not from vendor {vendor!r}")
        return d

    def keys(self, instance: str) -> list[dict[str, Any]]:
        d = self.handle(instance)
        types = {
            k[len("keytype.") :]: v for k, v in read_status(d / "status").items() if k.startswith("keytype.")
        }
        out = []
        for key in sorted(os.listdir(d / "keys")):
            try:
                value: str | None = (d / "keys" / key).read_text().removesuffix("\n")
            except OSError as e:
                value = None
                err = e.strerror
            entry: dict[str, Any] = {"name": key, "type": types.get(key, "?"), "value": value}
            if value is None:
                entry["error"] = err
            out.append(entry)
        return out

    def get(self, instance: str, key: str) -> str:
        path = self.handle(instance) / "keys" / key
        if not path.exists():
            raise KeyvalError(f"no key {key!r} in {instance}")
        return path.read_text().removesuffix("\n")

    def set(self, instance: str, key: str, value: str) -> None:
        d = self.handle(instance)
        path = d / "keys" / key
        if not path.exists():
            raise KeyvalError(f"no key {key!r} in {instance}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            reason = (d / "last_error").read_text().strip()
            raise KeyvalError(f"set of {key} failed: {e.strerror}: {reason}") from None


def print_keys(keys: list[dict[str, Any]]) -> None:
    print("Listing keys:")
    for k in keys:
        value = k["value"] if k["value"] is not None else f"<{k['error']}>"
        print(f"Name:   {k['name']}\nType:   {k['type']}\nvalue:  {value}\n")


def run(args: argparse.Namespace) -> int:
    try:
        mgmt = Mgmt(find_mount(args.mount))
        if args.dump_instances:
            instances = mgmt.instances()
            if args.json:
                print(json.dumps(instances, indent=1))
            else:
                print("Key Value Instances:")
                for i in instances:
                    print(LISTING_PREFIX + i["instance"])
            return 0
        if args.all:
            dump = [{**i, "keys": mgmt.keys(i["instance"])} for i in mgmt.instances()]
            if args.json:
                print(json.dumps(dump, indent=1))
            else:
                for i in dump:
                    print(LISTING_PREFIX + i["instance"])
                    print_keys(i["keys"])
            return 0
        if not args.instance:
            raise KeyvalError("-l, -g and -s need -i INSTANCE (see -d)")
        if args.list:
            keys = mgmt.keys(args.instance)
            if args.json:
                print(json.dumps({"instance": args.instance, "keys": keys}, indent=1))
            else:
                print_keys(keys)
            return 0
        if not args.key:
            raise KeyvalError("-g and -s need -k KEY (see -l -i INSTANCE)")
        if args.set is not None:
            mgmt.set(args.instance, args.key, args.set)
            if args.json:
                print(json.dumps({"instance": args.instance, "key": args.key, "value": args.set}))
            return 0
        if args.get:
            value = mgmt.get(args.instance, args.key)
            if args.json:
                print(json.dumps({"instance": args.instance, "key": args.key, "value": value}))
            else:
                print(f"Key '{args.key}': {value}")
            return 0
        raise KeyvalError("say what to do: -d, -l, -a, -g or -s VALUE")
    except (KeyvalError, OSError) as e:
        print(f"vfs keyval: {e}", file=sys.stderr)
        return 1


def add_parser(sub: Any) -> None:
    k = sub.add_parser(
        "keyval",
        help="get and set management keys (like vmkmgmt_keyval)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument("-m", "--mount", help="the vfs mount (default: the one the current directory is in)")
    k.add_argument("-d", "--dump-instances", action="store_true", help="list instances")
    k.add_argument("-l", "--list", action="store_true", help="list the keys of an instance")
    k.add_argument("-a", "--all", action="store_true", help="every instance with every key")
    k.add_argument("-g", "--get", action="store_true", help="get a key")
    k.add_argument("-s", "--set", metavar="VALUE", help="set a key")
    k.add_argument("-i", "--instance", help="<name> or <name>/<vendor>")
    k.add_argument("-k", "--key")
    k.add_argument("--json", action="store_true", help="machine-readable output")
    k.set_defaults(func=run)
