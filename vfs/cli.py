"""The `vfs` command: mount, umount, status (and the subsystem tools as they land)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import shtab

from vfs import subsystems
from vfs.fuse import mountpoint as mp
from vfs.persist import StateDirBusyError, check_state_dir


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/vfs")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "vfs"


def host_port(text: str) -> tuple[str, int]:
    """`PORT` or `ADDR:PORT` (localhost unless an address is given)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"a port 1..65535 (or ADDR:PORT), not {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def cmd_mount(args: argparse.Namespace) -> int:
    from vfs.daemon import Options, run

    state_dir = Path(args.state_dir or default_state_dir()).absolute()
    opts = Options(
        mountpoint=os.path.abspath(args.mountpoint),
        state_dir=state_dir,
        image_dirs=[Path(d).absolute() for d in args.image_dir] or [state_dir / "images"],
        allow_other=args.allow_other,
        log_level=args.log_level,
        modules=args.module,
        ready_fd=args.ready_fd,
        log_file=Path(args.log_file).absolute() if args.log_file else None,
        log_max_bytes=args.log_max_bytes,
        tcmu_conf=Path(args.tcmu_conf).absolute(),
        metrics=args.metrics,
    )
    if not os.path.isdir(opts.mountpoint):
        print(f"vfs: mount point {opts.mountpoint} is not a directory", file=sys.stderr)
        return 1
    if mp.fuse_mounted(opts.mountpoint) and not mp.is_dead(opts.mountpoint):
        pid = mp.daemon_pid(opts.mountpoint)
        print(f"vfs: {opts.mountpoint} is already mounted (daemon pid {pid})", file=sys.stderr)
        return 1
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    try:  # refused here with the holder's name; the daemon takes the lock for good itself
        check_state_dir(opts.state_dir)
    except StateDirBusyError as e:
        print(f"vfs: {e}", file=sys.stderr)
        return 1
    if args.foreground:
        return run(opts)
    return _daemonise(args, opts.state_dir)


def _daemonise(args: argparse.Namespace, state_dir: Path) -> int:
    """Start the daemon in its own session, logging to the state dir; return once it is ready."""
    state_dir.mkdir(parents=True, exist_ok=True)
    logfile = Path(args.log_file or state_dir / "vfs.log").absolute()
    crashes = state_dir / "vfs.stderr"  # what is not a log record: a fatal error, a stack dump
    read_end, write_end = os.pipe()
    argv = [sys.executable, "-m", "vfs", "mount", "--foreground", "--ready-fd", str(write_end)]
    argv += [args.mountpoint, "--state-dir", str(state_dir), "--log-level", args.log_level]
    argv += ["--log-file", str(logfile), "--log-max-bytes", str(args.log_max_bytes)]
    for d in args.image_dir:
        argv += ["--image-dir", d]
    for m in args.module:
        argv += ["--module", m]
    if args.allow_other:
        argv.append("--allow-other")
    argv += ["--tcmu-conf", args.tcmu_conf]
    if args.metrics is not None:
        argv += ["--metrics", "{}:{}".format(*args.metrics)]
    with open(crashes, "ab") as log, open(os.devnull, "rb") as null:
        child = subprocess.Popen(
            argv, stdin=null, stdout=log, stderr=log, pass_fds=(write_end,), start_new_session=True
        )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        answer = _await_ready(ready)
    if answer.strip() == b"ready":
        print(f"vfs: mounted {os.path.abspath(args.mountpoint)} (pid {child.pid}, log {logfile})")
        return 0
    child.wait()
    print(f"vfs: the daemon exited with {child.returncode} before mounting; see {logfile}:", file=sys.stderr)
    print(_tail(logfile) + "\n" + _tail(crashes, 5), file=sys.stderr)
    return 1


def _await_ready(ready: Any) -> bytes:
    """The daemon's last line before it is ready (or dies); its `progress WHAT N M` lines on
    the way are drawn as bars on a terminal, and are silent elsewhere."""
    bar = None
    try:
        while (line := ready.readline()).startswith(b"progress "):
            if not sys.stderr.isatty():
                continue
            if bar is None:
                import rich.console
                import rich.progress

                bar = rich.progress.Progress(transient=True, console=rich.console.Console(stderr=True))
                bar.start()
                tasks: dict[str, Any] = {}
            what, done, total = line.split()[1:4]
            name = f"restoring {what.decode()}"
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=int(total))
            bar.update(tasks[name], completed=int(done))
        return line
    finally:
        if bar is not None:
            bar.stop()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmd_umount(args: argparse.Namespace) -> int:
    mnt = os.path.abspath(args.mountpoint)
    if not mp.fuse_mounted(mnt):
        print(f"vfs: nothing is mounted at {mnt}", file=sys.stderr)
        return 1
    pid = mp.daemon_pid(mnt)
    if pid is None:  # the daemon is gone: just clear the mount
        mp.lazy_unmount(mnt)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if not mp.process_alive(pid) and not mp.fuse_mounted(mnt):
            return 0
        time.sleep(0.05)
    print(f"vfs: daemon {pid} did not exit within {args.timeout}s; unmounting lazily", file=sys.stderr)
    mp.lazy_unmount(mnt)
    return 1


def _read(path: Path, default: str = "?") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _flat(path: Path) -> dict[str, str]:
    return dict(line.partition(" ")[::2] for line in _read(path, "").splitlines())


def _names(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _mount_of(args: argparse.Namespace) -> Path | None:
    """The mount a command names (or the one the current directory is in); None, said why."""
    from vfs.subsystems.mgmt.cli import KeyvalError, find_mount

    try:
        return find_mount(args.mountpoint)
    except KeyvalError as e:
        print(f"vfs: {e}", file=sys.stderr)
        return None


def cmd_status(args: argparse.Namespace) -> int:
    """One screen: the daemon, then handles, devices, channels, slots, worlds."""
    mnt = _mount_of(args)
    if mnt is None:
        return 1
    root = _flat(mnt / "status")
    if not root:
        print(f"vfs: cannot read {mnt}/status (is it a vfs mount?)", file=sys.stderr)
        return 1
    print(f"vfs {root.get('version')}  pid {root.get('pid')}  up {root.get('uptime')}s", end="")
    print(f"  state dir {root.get('state_dir')}")
    print(f"mgmt handles ({len(_names(mnt / 'mgmt'))}):")
    for h in _names(mnt / "mgmt"):
        st = _flat(mnt / "mgmt" / h / "status")
        print(
            f"  {h:<16} v{st.get('version')}  keys {st.get('keys')}  instances {st.get('instances')}"
            f"  sessions {st.get('sessions')}"
        )
    print(f"devices ({len(_names(mnt / 'devices'))}):")
    for d in _names(mnt / "devices"):
        st = _flat(mnt / "devices" / d / "status")
        state = "enabled" if st.get("enabled") == "1" else "disabled"
        print(f"  {d:<16} {state:<8} {st.get('size')} B  {st.get('config')}  lock {st.get('lock')}")
    print(f"channels ({len(_names(mnt / 'channels'))}):")
    for c in _names(mnt / "channels"):
        st = _flat(mnt / "channels" / c / "status")
        ends = f"listener {st.get('listener')}  connector {st.get('connector')}"
        error = f"  error {st.get('error')}" if st.get("error", "-") != "-" else ""
        print(f"  {c:<16} {st.get('transport'):<12} {ends}{error}")
    print(f"storage slots ({len(_names(mnt / 'storage'))}):")
    for sl in _names(mnt / "storage"):
        st = _flat(mnt / "storage" / sl / "status")
        print(
            f"  {sl:<16} {'enabled' if st.get('enabled') == '1' else 'staged':<8} {st.get('size')} B"
            f"  worlds {st.get('worlds')}  references {st.get('references')}"
        )
    worlds = [w for w in _names(mnt / "worlds") if w != "self"]
    print(f"worlds ({len(worlds)}): " + " ".join(worlds[:30]) + (" ..." if len(worlds) > 30 else ""))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from vfs import top

    mnt = _mount_of(args)
    if mnt is None:
        return 1
    if args.interval <= 0:
        print("vfs: --interval is a positive number of seconds", file=sys.stderr)
        return 2
    return top.run(mnt, args.interval, args.once)


def cmd_completion(args: argparse.Namespace) -> int:
    print(shtab.complete(parser(), shell=args.shell))  # generated from this very parser
    return 0


def cmd_manpage(args: argparse.Namespace) -> int:
    from argparse_manpage.manpage import Manpage  # only here: most commands never need it

    print(Manpage(parser()))
    return 0


EXAMPLES = """examples:
  vfs mount /mnt/vfs                         mount (state in /var/lib/vfs for root), return once it answers
  vfs mount /mnt/vfs --image-dir /srv/img    images (file, qcow) and NBD sockets may live in /srv/img
  vfs mount /mnt/vfs --metrics 9101          also serve Prometheus metrics on 127.0.0.1:9101
  vfs status /mnt/vfs                        one screen: devices, channels, slots, worlds
  vfs top /mnt/vfs                           live: IOPS, MB/s and latency per device, channels, slots
  vfs scsi /mnt/vfs/devices/d0 inquiry       one SCSI command, decoded
  vfs umount /mnt/vfs                        unmount and wait for the daemon
  source <(vfs completion bash)              tab completion; `vfs manpage | man -l -` for the manual

The tree's files are documented in the mount's own README and in docs/ of the source."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vfs",
        description="Kernel-style systems (management handles, world storage, TCMU devices, v2v "
        "channels) as files and directories of a FUSE mount.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount a tree (daemonises unless --foreground)")
    m.add_argument("mountpoint").complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    m.add_argument(
        "--state-dir", help=f"where definitions persist (default: {default_state_dir()})"
    ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    m.add_argument(
        "--image-dir",
        action="append",
        default=[],
        help="a directory where images (file, qcow) and NBD sockets may be; repeatable "
        "(default: STATE_DIR/images)",
    ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground, log to stderr")
    m.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    m.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    m.add_argument(
        "--log-file",
        help="log here, rotated (default: stderr with --foreground, else STATE_DIR/vfs.log)",
    )
    m.add_argument(
        "--log-max-bytes",
        type=int,
        default=10 << 20,
        help="rotate the log file at this many bytes, keeping 5 old ones (default 10485760)",
    )
    m.add_argument(
        "--tcmu-conf",
        default="/etc/tcmu/tcmu.conf",
        help="tcmu-runner's config file, followed while mounted (log_level, log_dir); default: %(default)s",
    )
    m.add_argument(
        "--metrics",
        type=host_port,
        metavar="[ADDR:]PORT",
        help="also serve the `metrics` file over HTTP at http://ADDR:PORT/metrics "
        "(ADDR defaults to 127.0.0.1; e.g. --metrics 9101, --metrics 0.0.0.0:9101)",
    )
    m.add_argument("--module", action="append", default=[], help="load a module: package.module[:function]")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)

    u = sub.add_parser("umount", help="unmount cleanly and wait for the daemon to exit")
    u.add_argument("mountpoint").complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    u.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the daemon, then unmount lazily (30)"
    )
    u.set_defaults(func=cmd_umount)

    s = sub.add_parser("status", help="one screen about a mount (uptime in seconds, sizes in bytes)")
    s.add_argument(
        "mountpoint", nargs="?", help="default: the vfs mount the current directory is in"
    ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    s.set_defaults(func=cmd_status)

    t = sub.add_parser("top", help="a live view of a mount: device IOPS, MB/s and latency, channels, slots")
    t.add_argument(
        "mountpoint", nargs="?", help="default: the vfs mount the current directory is in"
    ).complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    t.add_argument("--interval", "-n", type=float, default=1.0, help="seconds between refreshes (default 1)")
    t.add_argument("--once", action="store_true", help="print one frame (rates over one interval) and exit")
    t.set_defaults(func=cmd_top)

    c = sub.add_parser("completion", help="print the shell completion script: source <(vfs completion bash)")
    c.add_argument("shell", choices=["bash", "zsh"])
    c.set_defaults(func=cmd_completion)

    man = sub.add_parser("manpage", help="print the manual page (roff): vfs manpage | man -l -")
    man.set_defaults(func=cmd_manpage)

    for name in subsystems.cli_modules():
        if importlib.util.find_spec(name) is not None:  # not every subsystem has a command
            importlib.import_module(name).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `vfs status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
