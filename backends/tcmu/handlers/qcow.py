"""The `qcow` handler: a qcow2 image, served by qemu's own code. `qcow/<path>` (so usually
`qcow//abs/path.qcow2`), inside an `--image-dir` like `file`'s images.

No qcow2 is written here: each device runs a qemu-storage-daemon that opens the image and
exports it over NBD on a private Unix socket, and the `nbd` handler's connection serves the
device from it (asynchronous, many commands in flight). So clusters are allocated on write,
UNMAP deallocates them (discard=unmap down to the file: `qemu-img map` shows the holes), and
qemu's image lock keeps a second user off the image. The image is found beneath the image dir
with no symlink followed and handed to qemu as an open descriptor (/proc/self/fd/N), so what
was checked is what qemu opens. A missing image is created (qemu-img create) at the device's
size; one smaller than the device grows to it, and so does a resize (qemu-img resize between
two servers: an NBD export's size is fixed). The daemon dies with ours (setpriv --pdeathsig),
so no image stays locked.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from backends.beneath import check_regular
from backends.errors import VfsError
from backends.tcmu import images
from backends.tcmu.device import Device
from backends.tcmu.handler import Reconfig
from backends.tcmu.handlers.nbd import NbdHandler, nbd

START_TIMEOUT = 10.0  # seconds for qemu-storage-daemon to open the image and listen


class Server:
    """One qemu-storage-daemon exporting one image; its sockets live in a private directory."""

    def __init__(self, image_fd: int, what: str) -> None:
        self.what = what
        self.dir = Path(tempfile.mkdtemp(prefix="vfs-qcow-"))  # 0700: nobody else connects
        self.nbd_socket = self.dir / "nbd.sock"
        qsd = shutil.which("qemu-storage-daemon")
        if qsd is None:
            raise VfsError(
                errno.ENOENT, "qemu-storage-daemon is not installed (apt install qemu-system-common)"
            )
        argv = [
            *("setpriv", "--pdeathsig", "TERM", "--", qsd),
            *("--blockdev", f"driver=file,node-name=file,filename=/proc/self/fd/{image_fd},discard=unmap"),
            *("--blockdev", "driver=qcow2,node-name=disk,file=file,discard=unmap"),
            *("--nbd-server", f"addr.type=unix,addr.path={self.nbd_socket}"),
            *("--export", "type=nbd,id=export,node-name=disk,name=disk,writable=on"),
        ]
        # Started from the event loop's thread: a death signal follows the thread that forked,
        # and worker threads come and go.
        self.proc: subprocess.Popen[bytes] = trio.from_thread.run_sync(
            lambda: subprocess.Popen(
                argv,
                pass_fds=(image_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.nbd_socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise VfsError(errno.EIO, f"qemu-storage-daemon could not serve {what}: {self.stderr()}")
            time.sleep(0.01)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stderr is not None
        lines = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"it exited with status {self.proc.returncode}"

    def connect(self) -> nbd.NBD:
        h = nbd.NBD()
        h.set_export_name("disk")
        h.connect_unix(str(self.nbd_socket))
        return h

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(START_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class QcowHandler(NbdHandler):
    name = "qcow2 image (qemu-storage-daemon)"
    subtype = "qcow"
    cfg_desc = "qcow/<path to a qcow2 image inside an --image-dir>; created at the device's size if missing"

    def confine(self, cfgstring: str) -> None:
        self.locate(cfgstring)

    def check_config(self, cfgstring: str) -> str | None:
        try:
            base, inside = self.locate(cfgstring)
        except VfsError as e:
            return e.reason
        if shutil.which("qemu-storage-daemon") is None:
            return "qemu-storage-daemon is not installed (apt install qemu-system-common)"
        if not (base / inside).parent.is_dir():
            return f"directory {(base / inside).parent} does not exist"
        return None

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        self._serve(dev, dev.size, reopen)
        return 0

    def _serve(self, dev: Device, size: int, reopen: bool) -> None:
        """Make the image (or grow it) to `size` if need be, start its server, attach to it."""
        base, inside = self.locate(dev.config)
        what = f"{base}/{inside}"
        dirfd, _, fd = images.open_image(base, inside, os.O_RDWR | os.O_CREAT)
        server = None
        try:
            check_regular(fd, what)
            if os.fstat(fd).st_size == 0:  # new (or empty): make it a qcow2 of the device's size
                _qemu_img(fd, what, "create", "-q", "-f", "qcow2", f"/proc/self/fd/{fd}", str(size))
            else:
                info = json.loads(_qemu_img(fd, what, "info", "--output=json", f"/proc/self/fd/{fd}"))
                if info.get("format") != "qcow2":
                    raise VfsError(errno.EINVAL, f"{what} is {info.get('format')}, not qcow2")
                if info["virtual-size"] < size:  # qcow2 grows by its header: nothing is copied
                    _qemu_img(fd, what, "resize", "-q", "-f", "qcow2", f"/proc/self/fd/{fd}", str(size))
            server = Server(fd, what)
            self.attach(dev, server.connect(), reopen)
        except BaseException:
            if server is not None:
                server.stop()
            raise
        finally:
            os.close(fd)  # qemu has its own
            os.close(dirfd)
        dev.private.server = server

    def close(self, dev: Device) -> None:
        server: Server = dev.private.server
        super().close(dev)
        server.stop()

    def reconfig(self, dev: Device, kind: Reconfig, value: Any) -> int:
        if kind is Reconfig.SIZE and value > dev.private.size:
            # An NBD export holds its size; qemu-img grows the image between two servers
            # (commands are paused meanwhile).
            self.close(dev)
            self._serve(dev, value, True)
            return 0
        if kind is Reconfig.CFGSTRING:
            return 0 if self.locate(value) == self.locate(dev.config) else -errno.EOPNOTSUPP
        return super().reconfig(dev, kind, value)


def _qemu_img(fd: int, what: str, *args: str) -> str:
    """qemu-img on the image open as `fd` (it sees /proc/self/fd/<fd>, the same inode)."""
    done = subprocess.run(["qemu-img", *args], pass_fds=(fd,), capture_output=True, text=True)
    if done.returncode:
        raise VfsError(errno.EIO, f"qemu-img {args[0]} {what}: {done.stderr.strip()}")
    return done.stdout
