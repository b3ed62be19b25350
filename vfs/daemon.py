"""The daemon: one trio nursery owns pyfuse3's workers, module tasks and the signal watcher.

Shutdown (SIGINT/SIGTERM, or `vfs umount`): blocked waits are told to end, get one slice to
answer their readers, then the nursery is cancelled and the mount closed.
"""

from __future__ import annotations

import errno
import faulthandler
import logging
import logging.handlers
import os
import resource
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from backends.events import Hub
from backends.mgmt import Registry
from vfs import heap, plugins, sdnotify, subsystems
from vfs.context import PROGRESS_EVERY, Context
from vfs.fuse import mountpoint as mp
from vfs.fuse.operations import Operations
from vfs.metrics import CounterMetricFamily, GaugeMetricFamily, Metric, resident_bytes
from vfs.persist import StateDirBusyError, Store, lock_state_dir
from vfs.subsystems.mgmt.tree import StoredKeys
from vfs.tree.access import AccessBook
from vfs.tree.nodes import maybe_await
from vfs.tree.root import Root
from vfs.tree.streams import LONGEST_WAIT, QueueStream, StreamFile, end_waits, lost_wakeups, parked_waits
from vfs.tree.values import BytesFile

log = logging.getLogger("vfs.daemon")

# A parked read holds its pyfuse3 worker until it ends; with the old cap of 1,000, 1,200
# readers parked on `events` made `cat status` wait 1-2 s for a worker. The cap is now memory,
# not a count: a worker's request buffer is virtual until a request fills it.
MAX_TASKS = 100_000
# pyfuse3 starts a worker whenever a request leaves none waiting on /dev/fuse, and a worker
# that finds more than MIN_TASKS waiting ends. With 1, a reader parked on a channel made that
# happen for every message (a task started and ended: ~7 us of a ~87 us message); a few idle
# workers cost a lock wait each and their request buffers.
MIN_TASKS = 3

# The subsystems, then the shipped example module, then entry points and --module.
BUILTIN_MODULES = [*subsystems.setups(), "vfs.modules.example"]


@dataclass
class Options:
    mountpoint: str
    state_dir: Path
    image_dirs: list[Path]
    allow_other: bool = False
    log_level: str = "info"
    modules: list[str] = field(default_factory=list)
    ready_fd: int | None = None
    log_file: Path | None = None
    log_max_bytes: int = 10 << 20
    tcmu_conf: Path = Path("/etc/tcmu/tcmu.conf")
    metrics: tuple[str, int] | None = None  # (host, port) to serve /metrics on over HTTP


LOG_RECORD_MAX = 8192  # characters of one record: a refused 1 MiB write must not log 1 MiB
LOG_KEEP = 5  # rotated files kept beside the log file


class CappedFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if len(text) > LOG_RECORD_MAX:
            text = f"{text[:LOG_RECORD_MAX]} ... ({len(text) - LOG_RECORD_MAX} more characters not logged)"
        return text


def configure_logging(level: str, log_file: Path | None = None, max_bytes: int = 10 << 20) -> None:
    """To stderr (the foreground, journald), or to a file rotated at `max_bytes`, LOG_KEEP kept."""
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler()
    else:
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=LOG_KEEP)
    handler.setFormatter(CappedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def mount_options(opts: Options) -> set[str]:
    options = set(pyfuse3.default_options) | {"fsname=vfs", "subtype=vfs", "auto_unmount"}
    if opts.allow_other:
        options.add("allow_other")
    return options


async def _serve(opts: Options) -> None:
    store = Store(opts.state_dir)
    root = Root(os.path.abspath(opts.mountpoint), str(opts.state_dir), subsystems.top_level())
    ops = Operations(root, AccessBook(os.getuid(), os.getgid(), store))
    root.counters["inodes"] = lambda: len(ops.inodes)
    root.counters["open_files"] = lambda: len(ops._open_files)
    root.counters["parked_waits"] = parked_waits
    root.counters["lost_wakeups"] = lost_wakeups
    mounted = False
    ctx: Context | None = None
    try:
        async with trio.open_nursery() as nursery:
            registry = Registry(nursery.start_soon, StoredKeys(store))
            ctx = Context(opts, root, store, nursery, registry)
            if opts.ready_fd is not None:
                ctx.report = _reporter(opts.ready_fd)
            ctx.metrics.add(lambda: _daemon_metrics(ops, root))
            root.add("metrics", BytesFile(ctx.metrics.render))
            root.add("events", StreamFile(lambda flags, caller: _root_events(ctx.events)))
            ops.on_refused = lambda where, e: ctx.events.publish(
                {
                    "event": "error",
                    "object": where,
                    "errno": errno.errorcode.get(e.errno, e.errno),
                    "reason": e.reason,
                }
            )
            if opts.metrics is not None:
                ctx.metrics.serve(*opts.metrics)  # a port in use fails the mount, and says so
                ctx.on_shutdown.append(ctx.metrics.stop)
            for name, setup in plugins.discover("vfs.modules", BUILTIN_MODULES, opts.modules):
                try:
                    await maybe_await(setup(ctx))
                    log.info("module %s loaded", name)
                except Exception:
                    log.exception("module %s failed to set up; going on without it", name)
            if mp.clear_stale(opts.mountpoint):
                log.warning("replaced a stale mount (daemon gone) at %s", opts.mountpoint)
            pyfuse3.init(ops, opts.mountpoint, mount_options(opts))
            mounted = True
            await _run_mounted(opts, nursery)
    finally:
        # Only now has every pyfuse3 worker ended; closing the session earlier would crash it.
        for hook in reversed(ctx.on_shutdown if ctx else []):
            try:
                await maybe_await(hook())
            except Exception:
                log.exception("shutdown hook failed")
        if mounted:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", opts.mountpoint)


def _reporter(fd: int) -> Callable[[str, int, int], None]:
    """Restore progress for `vfs mount`, on the pipe that later says ready: `progress WHAT N M`
    lines, only for restores of more than PROGRESS_EVERY objects and at most 10 a second."""
    last = [0.0]

    def report(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if total > PROGRESS_EVERY and (now - last[0] > 0.1 or done == total):
            last[0] = now
            os.write(fd, f"progress {what} {done} {total}\n".encode())

    return report


def _root_events(hub: Hub) -> QueueStream:
    queue = hub.subscribe()
    return QueueStream(queue, lambda: hub.unsubscribe(queue))


def _daemon_metrics(ops: Operations, root: Root) -> Iterator[Metric]:
    """The daemon's own: FUSE requests by operation, the root status' counters, memory."""
    requests = CounterMetricFamily("vfs_fuse_requests", "FUSE requests served, by operation", labels=["op"])
    for op, count in sorted(ops.requests.items()):
        requests.add_metric([op], count)
    yield requests
    status = root.status()
    for key, text in (
        ("inodes", "Inodes the kernel knows"),
        ("open_files", "Open file handles"),
        ("parked_waits", "Blocked reads and writes parked until their object changes"),
        ("lost_wakeups", "Parked waits woken by their deadline, not by a change"),
    ):
        yield GaugeMetricFamily(f"vfs_{key}", text, value=status[key])
    yield GaugeMetricFamily(
        "vfs_resident_memory_bytes", "The daemon's resident memory", value=resident_bytes()
    )
    yield GaugeMetricFamily("vfs_uptime_seconds", "Seconds since the daemon started", value=status["uptime"])


async def _run_mounted(opts: Options, nursery: trio.Nursery) -> None:
    async def fuse_main() -> None:
        await pyfuse3.main(min_tasks=MIN_TASKS, max_tasks=MAX_TASKS)
        log.info("the kernel ended the session (unmounted from outside)")
        nursery.cancel_scope.cancel()

    nursery.start_soon(fuse_main)
    await trio.to_thread.run_sync(os.stat, opts.mountpoint)  # the mount answers
    log.info("mounted at %s (state dir %s)", opts.mountpoint, opts.state_dir)
    for problem in await trio.to_thread.run_sync(mp.rebind, opts.mountpoint):
        log.warning("vfs-bind could not be renewed: %s", problem)
    if opts.ready_fd is not None:
        os.write(opts.ready_fd, b"ready\n")
        os.close(opts.ready_fd)
    sdnotify.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=mounted at {opts.mountpoint}")

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            break
    sdnotify.notify("STOPPING=1")
    end_waits()
    await trio.sleep(LONGEST_WAIT + 0.1)  # parked waits answer EINTR by then
    nursery.cancel_scope.cancel()


def run(opts: Options) -> int:
    configure_logging(opts.log_level, opts.log_file, opts.log_max_bytes)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)  # dump every stack on demand
    heap.keep_freed_buffers()
    # One pidfd per watched world: 10,000 worlds need more than the usual 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    opts.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_state_dir(opts.state_dir, opts.mountpoint)  # held until this process ends
    except StateDirBusyError as e:
        log.error("%s", e)
        return 1
    for d in opts.image_dirs:
        d.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        trio.run(_serve, opts)
    except* Exception:
        log.exception("the daemon failed")
        failed = True
    os.close(lock)
    return 1 if failed else 0
