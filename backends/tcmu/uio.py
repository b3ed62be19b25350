"""target_core_user's devices as the kernel offers them to a userspace: `/dev/uioN`, named
`tcm-user/<hba>/<device>/<dev_config>` in sysfs, with one mapping (map0) holding the mailbox,
the command ring and the data area. A read() of the fd waits for the kernel's next kick; a
write() tells it responses are in. Only one process may hold the fd (EBUSY for another).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from backends.errors import VfsError
from backends.tcmu.kernel import KernelPort

log = logging.getLogger("vfs.tcmu")

SYS_UIO = Path("/sys/class/uio")
CONFIGFS = Path("/sys/kernel/config/target/core")
PREFIX = "tcm-user/"


@dataclass(frozen=True)
class UioInfo:
    index: int  # the N of /dev/uioN
    hba: int  # user_<hba> in configfs
    name: str  # the configfs device's name
    config: str  # its dev_config, "<subtype>/<handler part>" ("" if none was set)
    map_size: int

    @property
    def subtype(self) -> str:
        return self.config.split("/", 1)[0]

    @property
    def configfs(self) -> Path:
        return CONFIGFS / f"user_{self.hba}" / self.name


def parse_name(text: str) -> tuple[int, str, str] | None:
    """(hba, device, dev_config) from a uio name, None if it is no TCMU device's."""
    if not text.startswith(PREFIX):
        return None
    parts = text[len(PREFIX) :].split("/", 2)
    if len(parts) < 2 or not parts[0].isdigit() or not parts[1]:
        return None
    return int(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""


def info(index: int, root: Path = SYS_UIO) -> UioInfo | None:
    """/dev/uio<index> if it is a TCMU device (None if not, or gone)."""
    entry = root / f"uio{index}"
    try:
        parsed = parse_name((entry / "name").read_text().strip())
        if parsed is None:
            return None
        return UioInfo(index, *parsed, int((entry / "maps/map0/size").read_text().strip(), 0))
    except FileNotFoundError:
        return None


def scan(root: Path = SYS_UIO) -> list[UioInfo]:
    """Every TCMU device the kernel offers now."""
    found = []
    for entry in sorted(root.glob("uio*")) if root.is_dir() else []:
        try:
            one = info(int(entry.name[3:]), root)
        except (OSError, ValueError) as e:
            log.warning("skipping %s: %s", entry, e)
            continue
        if one is not None:
            found.append(one)
    return found


def read_attr(info: UioInfo, name: str) -> str:
    return (info.configfs / name).read_text().strip()


def device_size(info: UioInfo) -> int:
    """The size configfs was given (attrib/dev_size; `info` holds it as `Size:` too)."""
    return int(read_attr(info, "attrib/dev_size"))


def block_size(info: UioInfo) -> int:
    return int(read_attr(info, "attrib/hw_block_size"))


class UioDevice:
    """One open /dev/uioN and its mapping."""

    def __init__(self, info: UioInfo, dev_root: str = "/dev") -> None:
        self.info = info
        try:
            self.fd = os.open(f"{dev_root}/uio{info.index}", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            why = "another process serves it" if e.errno == errno.EBUSY else e.strerror
            raise VfsError(e.errno or errno.EIO, f"/dev/uio{info.index} ({info.name}): {why}") from None
        try:
            self.map = mmap.mmap(self.fd, info.map_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self.fd)
            raise VfsError(e.errno or errno.EIO, f"mapping /dev/uio{info.index}: {e.strerror}") from None
        self.mem = memoryview(self.map)

    def kick(self) -> None:
        """Responses are in the ring: the kernel reaps them (and retries commands it queued)."""
        try:
            os.write(self.fd, b"\0\0\0\0")
        except OSError as e:  # the device is going away
            log.debug("kick of uio%d: %s", self.info.index, e)

    def close(self) -> None:
        self.mem.release()
        self.map.close()
        os.close(self.fd)


async def serve(uio: UioDevice, port: KernelPort) -> None:
    """Take and run the ring's commands until cancelled or the ring is broken: a thread of its
    own waits for the kernel's kicks and serves what it can at once (see kernel.py); the rest
    runs on worker tasks in this nursery."""
    async with trio.open_nursery() as commands:
        port.on_loop(commands.start_soon)
        port.take()  # what was queued before we came
        ended = trio.Event()
        token = trio.lowlevel.current_trio_token()
        stop_r, stop_w = os.pipe2(os.O_CLOEXEC)
        thread = threading.Thread(
            target=_ring_thread,
            args=(uio, port, stop_r, token, ended),
            name=f"ring-{uio.info.name}",
            daemon=True,
        )
        thread.start()
        try:
            await ended.wait()  # the ring broke for good
        finally:
            os.write(stop_w, b"x")
            with trio.CancelScope(shield=True):  # the mapping goes once the thread is done with it
                await trio.to_thread.run_sync(thread.join)
            os.close(stop_r)
            os.close(stop_w)
            commands.cancel_scope.cancel()


def _ring_thread(
    uio: UioDevice, port: KernelPort, stop: int, token: trio.lowlevel.TrioToken, ended: trio.Event
) -> None:
    """Wait for a kick (or `stop`), take, again: tcmu-runner's tcmur_cmdproc_thread."""
    poller = select.poll()
    poller.register(uio.fd, select.POLLIN)
    poller.register(stop, select.POLLIN)
    try:
        while not port.error:
            if any(fd == stop for fd, _ in poller.poll()):
                return
            try:
                os.read(uio.fd, 4)
            except BlockingIOError:
                pass
            port.take()
    except Exception:
        log.exception("device %s: the ring's thread failed", uio.info.name)
        port.broken("the ring's thread failed; see the daemon's log")
    finally:
        try:
            token.run_sync_soon(ended.set)
        except trio.RunFinishedError:
            pass


class Serving:
    """A device's ring being served in the background."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.ended = trio.Event()

    async def stop(self) -> None:
        """Stop serving; back once the ring's thread is done with the mapping."""
        self.scope.cancel()
        await self.ended.wait()


def spawn_serving(
    nursery: trio.Nursery, uio: UioDevice, port: KernelPort, done: Callable[[], None]
) -> Serving:
    """Serve in the background; `done` runs when serving ends (stopped or broken)."""
    serving = Serving()

    async def run() -> None:
        try:
            with serving.scope:
                await serve(uio, port)
        finally:
            done()
            serving.ended.set()

    nursery.start_soon(run)
    return serving
