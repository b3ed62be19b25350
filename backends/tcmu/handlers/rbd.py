"""The `rbd` handler: a Ceph RBD image as a device, through librbd's Python binding (Debian's
python3-rbd and python3-rados). `rbd/<pool>/<image>[;osd_op_timeout=N][;id=<client id>]`,
as tcmu-runner's rbd handler takes it; the cluster is the one the daemon's ceph.conf names
($CEPH_CONF, else /etc/ceph/ceph.conf). tcmu-runner's `conf=` is refused: reading any file the
cfgstring names would let whoever may write `config` have root read it.

Completion model: asynchronous (nr_threads = 0), as tcmu-runner's. Reads, writes, flushes and
unmaps (write-zeroes) are librbd aio calls made on the event loop; librbd completes them on its own threads
and cmd.complete() brings each back. The binding takes and gives bytes, so a write is joined
into one and a read copied into the engine's buffers (tcmu-runner's bounce buffer, where
librbd lacks iovecs). rbd_cache is off, as tcmu-runner sets it: a completed write is on the
OSDs.

Locks are RBD's exclusive lock, as tcmu-runner uses it: `lock` breaks a dead or other holder's
lock (librbd blocklists that client) and takes it with lock_acquire, which stops librbd from
handing it over on request; the tag goes into the image's metadata with the holder's client
address, so every daemon reads who holds it. A client whose lock was taken finds its writes
failing (-EROFS, or -ESHUTDOWN once blocklisted): they end BUSY (the initiator retries), a
`lock_lost` event is raised, and a blocklisted client reconnects as a new one (conn_lost,
then reopened). A command the cluster does not answer within osd_op_timeout (default 30 s)
raises cmd_timed_out and conn_lost: the device reopens every second until the cluster answers.
Lock state and tag are what this daemon last learned (status reads never wait on the network).
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from backends.errors import VfsError
from backends.tcmu.device import Device
from backends.tcmu.handler import INVALID_LOCK_TAG, Command, Handler, LockState, Reconfig
from backends.tcmu.handlers.binding import Binding
from backends.tcmu.status import Sts

rados = Binding("rados", "python3-rados")  # Debian packages, not on PyPI
rbd = Binding("rbd", "python3-rbd")

log = logging.getLogger("vfs.tcmu")
TAG_KEY = "tcmu_rbd_locker_tag"  # tcmu-runner's key and format: two runners read each other's tags
DEFAULT_OSD_OP_TIMEOUT = 30  # seconds; tcmu-runner's default is the OSD heartbeat grace + interval + 5
CONNECT_TIMEOUT = 10


class Config:
    def __init__(self, cfgstring: str) -> None:
        """Parse `rbd/<pool>/<image>[;option=value]...`, or VfsError saying what is wrong."""
        part = cfgstring.split("/", 1)[1] if "/" in cfgstring else ""
        where, *options = part.split(";")
        pool, _, image = where.partition("/")
        if not pool or not image or "/" in image:
            raise VfsError(
                errno.EINVAL, f"rbd takes rbd/<pool>/<image>[;osd_op_timeout=N][;id=ID], not {cfgstring!r}"
            )
        self.pool, self.image = pool, image
        self.osd_op_timeout = DEFAULT_OSD_OP_TIMEOUT
        self.id: str | None = None
        for option in options:
            key, _, value = option.partition("=")
            if key == "osd_op_timeout" and value.isdigit() and int(value) > 0:
                self.osd_op_timeout = int(value)
            elif key == "id" and value and value.replace("-", "").replace("_", "").replace(".", "").isalnum():
                self.id = value
            elif key == "conf":
                raise VfsError(
                    errno.EACCES,
                    "rbd's conf= is not taken: the daemon uses $CEPH_CONF or /etc/ceph/ceph.conf",
                )
            else:
                raise VfsError(
                    errno.EINVAL, f"rbd option {option!r}: osd_op_timeout=<seconds> or id=<client id>"
                )


class State:
    """One device's cluster connection, pool and image; what it knows of the lock."""

    def __init__(self, config: Config) -> None:
        name = f"client.{config.id}" if config.id else None
        self.cluster = rados.Rados(conffile="", name=name) if name else rados.Rados(conffile="")
        self.cluster.conf_set("rbd_cache", "false")
        self.cluster.conf_set("rados_osd_op_timeout", str(config.osd_op_timeout))
        self.ioctx: Any = None
        self.image: Any = None
        self.lock_state = LockState.UNLOCKED  # WRITE_LOCKED: taken by lock(), not by a write
        self.lock_tag = INVALID_LOCK_TAG
        self.lost = False  # lock_lost raised since the lock was last taken

    def open(self, config: Config) -> None:
        self.cluster.connect(timeout=CONNECT_TIMEOUT)
        self.ioctx = self.cluster.open_ioctx(config.pool)
        self.image = rbd.Image(self.ioctx, config.image)

    def close(self) -> None:
        for closing in (self.image, self.ioctx):
            if closing is not None:
                try:
                    closing.close()
                except (rados.Error, rbd.Error) as e:
                    log.debug("rbd close: %s", e)
        self.cluster.shutdown()


class RbdHandler(Handler):
    name = "Ceph RBD image"
    subtype = "rbd"
    cfg_desc = "rbd/<pool>/<image>[;osd_op_timeout=N][;id=<client id>] (the cluster of $CEPH_CONF)"
    nr_threads = 0  # asynchronous: see the module docstring

    def check_config(self, cfgstring: str) -> str | None:
        return self.refusal(cfgstring)

    def confine(self, cfgstring: str) -> None:
        Config(cfgstring)

    def open(self, dev: Device, reopen: bool) -> int:  # noqa: A003
        config = Config(dev.config)
        state = State(config)
        try:
            state.open(config)
            size = state.image.size()
            if size < dev.size:
                raise VfsError(
                    errno.EINVAL, f"image {config.pool}/{config.image} has {size} bytes, fewer than size"
                )
            obj_size = state.image.stat()["obj_size"]
            # As tcmu-runner: librbd splits and aligns, so whole objects (up to 4) per command.
            dev.max_unmap_len = obj_size * 4 // dev.block_size
            gran = int(state.cluster.conf_get("rbd_discard_granularity_bytes") or obj_size) // dev.block_size
            dev.opt_unmap_gran = dev.unmap_gran_align = max(gran, 1)
            state.lock_tag = _stored_tag(state)
        except (rados.Error, rbd.Error) as e:
            state.close()
            raise VfsError(_errno(e), f"rbd {config.pool}/{config.image}: {e}") from None
        except BaseException:
            state.close()
            raise
        dev.private = state
        return 0

    def close(self, dev: Device) -> None:
        dev.private.close()

    def reconfig(self, dev: Device, kind: Reconfig, value: Any) -> int:
        if kind is Reconfig.SIZE:  # resized on the cluster first (rbd resize), as tcmu-runner expects
            size = dev.private.image.size()
            if value > size:
                log.error("device %s: the image has %d bytes; resize it first (rbd resize)", dev.name, size)
                return -errno.EINVAL
            return 0
        if kind is Reconfig.WRITE_CACHE:
            return 0  # rbd_cache is off: every completed write is on the OSDs
        return -errno.EOPNOTSUPP

    # ---- I/O ----------------------------------------------------------------------------------

    def _done(self, dev: Device, cmd: Command, failure: Sts) -> Any:
        """librbd's completion callback (on its thread) for a command."""

        def oncomplete(completion: Any, data: bytes | None = None) -> None:
            ret = completion.get_return_value()
            if ret >= 0 and data is not None:
                _scatter(data, cmd.iovec)
            cmd.complete(Sts.OK if ret >= 0 else self._failed(dev, -ret, failure))

        return oncomplete

    def _failed(self, dev: Device, code: int, failure: Sts) -> Sts:
        """tcmu-runner's rbd_finish_aio_generic: what an error means for the device."""
        state: State = dev.private
        log.warning("device %s: rbd answered %s", dev.name, errno.errorcode.get(code, code))
        if code in (errno.ESHUTDOWN, errno.EROFS):  # the lock went to another client
            state.lock_state = LockState.UNLOCKED
            if not state.lost:
                state.lost = True
                dev.notify_lock_lost()
                if code == errno.ESHUTDOWN:  # blocklisted: only a new client can go on
                    dev.notify_conn_lost()
            return Sts.BUSY
        if code == errno.ETIMEDOUT:
            dev.notify_conn_lost()
            return Sts.BUSY
        if code == errno.EINVAL:
            return Sts.INVALID_CDB
        return failure

    def _submit(self, dev: Device, cmd: Command, failure: Sts, call: Any, *args: Any) -> int:
        try:
            call(*args, self._done(dev, cmd, failure))
        except (rbd.Error, rados.Error) as e:
            log.error("device %s: rbd refused the request: %s", dev.name, e)
            return self._failed(dev, _errno(e), failure)
        return Sts.OK

    def read(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        image = dev.private.image
        return self._submit(dev, cmd, Sts.RD_ERR, lambda cb: image.aio_read(off, length, cb))

    def write(self, dev: Device, cmd: Command, iovec: list[memoryview], length: int, off: int) -> int:
        data = b"".join(iovec) if len(iovec) != 1 else bytes(iovec[0])
        image = dev.private.image
        return self._submit(dev, cmd, Sts.WR_ERR, lambda cb: image.aio_write(data, off, cb))

    def flush(self, dev: Device, cmd: Command) -> int:
        image = dev.private.image
        return self._submit(dev, cmd, Sts.WR_ERR, lambda cb: image.aio_flush(cb))

    def unmap(self, dev: Device, cmd: Command, off: int, length: int) -> int:
        # Write-zeroes, not discard: librbd deallocates whole objects either way, but a discard
        # may skip the partial ones (rbd_skip_partial_discard), leaving data an unmap must zero.
        image = dev.private.image
        return self._submit(dev, cmd, Sts.WR_ERR, lambda cb: image.aio_write_zeroes(off, length, cb))

    # ---- locks: RBD's exclusive lock, as tcmu-runner takes it ------------------------------------

    def lock(self, dev: Device, tag: int) -> int:
        state: State = dev.private
        image = state.image
        try:
            if state.lock_state is not LockState.WRITE_LOCKED:
                if not image.is_exclusive_lock_owner():
                    for owner in list(image.lock_get_owners()):  # another daemon, or a dead one:
                        log.info("device %s: breaking the lock of %s", dev.name, owner["owner"])
                        image.lock_break(owner["mode"], owner["owner"])  # librbd blocklists it
                # Even when a write took the lock already: librbd hands an automatically taken
                # lock to whoever asks, one taken by lock_acquire to nobody.
                image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
            if tag != INVALID_LOCK_TAG:
                holder = next(iter(image.lock_get_owners()))["owner"]
                image.metadata_set(TAG_KEY, f"tcmu_tag={tag},rbd_client={holder}")
        except (rbd.Error, rados.Error) as e:
            log.error("device %s: could not take the lock: %s", dev.name, e)
            return _lock_sts(_errno(e))
        state.lock_state, state.lock_tag, state.lost = LockState.WRITE_LOCKED, tag, False
        return Sts.OK

    def unlock(self, dev: Device) -> int:
        state: State = dev.private
        try:
            if state.lock_state is LockState.WRITE_LOCKED:
                state.image.lock_release()
        except (rbd.Error, rados.Error) as e:
            log.error("device %s: could not release the lock: %s", dev.name, e)
            return _lock_sts(_errno(e))
        state.lock_state, state.lock_tag = LockState.UNLOCKED, _stored_tag(state)
        return Sts.OK

    def get_lock_tag(self, dev: Device) -> tuple[int, int]:
        return Sts.OK, dev.private.lock_tag

    def get_lock_state(self, dev: Device) -> LockState:
        return dev.private.lock_state  # type: ignore[no-any-return]


def _stored_tag(state: State) -> int:
    """The tag in the image's metadata, if its holder still holds the lock (tcmu-runner's check:
    a holder that died between taking the lock and writing the tag leaves a stale one)."""
    try:
        text = state.image.metadata_get(TAG_KEY)
        owners = list(state.image.lock_get_owners())
    except (rbd.Error, rados.Error, KeyError):
        return INVALID_LOCK_TAG
    fields = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
    if (
        not owners
        or fields.get("rbd_client") != owners[0]["owner"]
        or not fields.get("tcmu_tag", "").isdigit()
    ):
        return INVALID_LOCK_TAG
    return int(fields["tcmu_tag"])


def _lock_sts(code: int) -> Sts:
    """tcmu_rbd_to_sts."""
    return {
        errno.ESHUTDOWN: Sts.FENCED,
        errno.ENOENT: Sts.NO_LOCK_HOLDERS,
        errno.ETIMEDOUT: Sts.TIMEOUT,
        errno.ENOMEM: Sts.NO_RESOURCE,
        errno.EROFS: Sts.BUSY,
    }.get(code, Sts.HW_ERR)


def _errno(e: Exception) -> int:
    code = getattr(e, "errno", None)
    return abs(code) if isinstance(code, int) and code else errno.EIO


def _scatter(data: bytes, iovec: list[memoryview]) -> None:
    done = 0
    for view in iovec:
        view[:] = data[done : done + len(view)]
        done += len(view)
