"""A TCMU device: its configuration, its handler, its state, its events and statistics."""

from __future__ import annotations

import bisect
import errno
import logging
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from backends.errors import VfsError
from backends.events import Hub
from backends.tcmu import recovery
from backends.tcmu.handler import Handler, LockState, Reconfig
from backends.values import parse_bool, parse_int

if TYPE_CHECKING:
    from backends.tcmu.core import Tcmu
    from backends.tcmu.engine import Engine

log = logging.getLogger("vfs.tcmu")

MAX_BLOCK_SIZE = 65536
DEFAULT_MAX_XFER_BYTES = 1 << 20  # one FUSE request: the data file never needs to split one
DEFAULT_MAX_UNMAP_LEN = 1 << 20  # LBAs per UNMAP descriptor: initiators think more is not sane
MAX_UNMAP_DESCS = 4


class Stats:
    """Per-command counters and latencies. `record` runs on every command, on the loop or the
    kernel ring's thread: it only appends to a deque (atomic, so no lock) and the totals are
    folded in batches, on the next read or every FOLD_AT commands. Counting each command in
    place (a lock, two dicts, a bisect) cost 7 % of a 4 KiB read's throughput through FUSE."""

    KINDS = ("read", "write", "flush", "unmap", "writesame", "caw", "other")
    # Upper bounds (ns) of the latency histogram's buckets, 10 us .. 10 s; one more for the rest.
    BOUNDS = tuple(int(m * 10**e) for e in range(4, 10) for m in (1, 2.5, 5)) + (10**10,)
    FOLD_AT = 1024

    def __init__(self) -> None:
        self._ops = dict.fromkeys(self.KINDS, 0)
        self._bytes = dict.fromkeys(self.KINDS, 0)
        self._errors = 0
        # Failed commands no record counted (refused before their handler ran), counted where
        # the status or errno is given: frontend.fail, the data file's io_error. Loop only.
        self.refused = 0
        self.timeouts = 0
        self._latencies: deque[int] = deque(maxlen=4096)  # ns, the most recent commands
        self._buckets = [0] * (len(self.BOUNDS) + 1)  # every command since enable, not only recent
        self._latency_sum = 0  # ns
        self._raw: deque[tuple[str, int, int, bool]] = deque()  # recorded, not yet folded
        self._fold_lock = threading.Lock()

    def record(self, kind: str, nbytes: int, ns: int, ok: bool) -> None:
        raw = self._raw
        raw.append((kind, nbytes, ns, ok))
        if len(raw) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Add what was recorded to the totals; any thread."""
        with self._fold_lock:
            raw, ops, nbytes = self._raw, self._ops, self._bytes
            taken: list[int] = []
            failed = 0
            for _ in range(len(raw)):  # popleft: a record racing this one lands in the next fold
                kind, n, ns, ok = raw.popleft()
                ops[kind] += 1
                nbytes[kind] += n
                taken.append(ns)
                failed += not ok
            self._errors += failed
            self._latencies.extend(taken)
            self._latency_sum += sum(taken)
            taken.sort()
            below = 0
            for i, bound in enumerate(self.BOUNDS):
                upto = bisect.bisect_left(taken, bound, below)
                self._buckets[i] += upto - below
                below = upto
            self._buckets[-1] += len(taken) - below

    def _folded(self) -> Stats:
        if self._raw:
            self.fold()
        return self

    @property
    def ops(self) -> dict[str, int]:
        return self._folded()._ops

    @property
    def bytes(self) -> dict[str, int]:
        return self._folded()._bytes

    @property
    def errors(self) -> int:
        return self._folded()._errors + self.refused

    @property
    def buckets(self) -> list[int]:
        return self._folded()._buckets

    @property
    def latency_sum(self) -> int:
        return self._folded()._latency_sum

    def percentile(self, p: float) -> int:
        ordered = sorted(self._folded()._latencies)
        if not ordered:
            return 0
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] // 1000


class Device:
    """Staged by attribute writes, enabled by `Tcmu.enable` (check_config + open)."""

    def __init__(self, core: Tcmu, name: str) -> None:
        self.core = core
        self.name = name
        self.config = ""
        self.size = 0
        self.block_size = 512
        self.write_cache = True
        self.cmd_time_out = 0
        self.enabled = False
        self.serial = uuid.uuid4().hex
        self.handler: Handler | None = None
        self.private: Any = None  # the handler's per-device state (tcmur_dev_set_private)
        # set at enable, adjustable by the handler's open (tcmu_dev_set_*)
        self.num_lbas = 0
        self.max_xfer_len = 0
        self.opt_unmap_gran = 0
        self.unmap_gran_align = 0
        self.max_unmap_len = DEFAULT_MAX_UNMAP_LEN
        self.solid_state = False
        # runtime state
        self.pending_ua = False
        self.progress: tuple[str, int, int] | None = None  # (long command, blocks done, of) while one runs
        self.limiter = trio.CapacityLimiter(1)
        self.stats = Stats()
        self.events = Hub()  # the readers of this device's `events`
        self.engine: Engine | None = None
        self.removed = False
        self.opened_at = 0.0
        self.kernel: Any = None  # its KernelPort while the kernel's target_core_user uses it
        self.opened = False  # the handler has it open (a lost connection closes it for a while)
        self.recovering = False  # reopening after the handler lost its connection

    @property
    def format_progress(self) -> int | None:
        """A running FORMAT UNIT's progress in sense-data units (0..0x10000), else None."""
        if self.progress is None or self.progress[0] != "format":
            return None
        _, done, total = self.progress
        return done * 0x10000 // total if total else 0

    # ---- attributes ---------------------------------------------------------------------------

    def _disabled(self, what: str) -> None:
        if self.enabled:
            raise VfsError(errno.EBUSY, f"{what} is set while the device is disabled (echo 0 > enable)")

    async def set_config(self, text: str) -> None:
        subtype = text.split("/", 1)[0]
        if "/" not in text or subtype not in self.core.handlers:
            known = ", ".join(sorted(self.core.handlers)) or "none"
            raise VfsError(errno.EINVAL, f"config is '<subtype>/<handler part>' with a subtype of: {known}")
        if len(text) > 255:
            raise VfsError(errno.EINVAL, "config is at most 255 characters")
        self.core.handlers[subtype].confine(text)
        if self.enabled:
            if subtype != self.handler.subtype:  # type: ignore[union-attr]
                raise VfsError(errno.EBUSY, "the handler cannot change while enabled")
            await self._reconfig(Reconfig.CFGSTRING, text)
        self.config = text
        self.core.changed(self)

    async def set_size(self, text: str) -> None:
        size = parse_int(text, "size")
        if size < 0 or size % self.block_size:
            raise VfsError(
                errno.EINVAL, f"size is a multiple of the block size ({self.block_size}), not {size}"
            )
        if self.enabled:
            if size == 0:
                raise VfsError(errno.EINVAL, "an enabled device cannot shrink to nothing")
            await self._reconfig(Reconfig.SIZE, size)
            self.size = size
            self.num_lbas = size // self.block_size
            self.pending_ua = True
            self.emit("capacity_changed", size=size)
        else:
            self.size = size
        self.core.changed(self)

    def set_block_size(self, text: str) -> None:
        self._disabled("block_size")
        bs = parse_int(text, "block_size")
        if not 512 <= bs <= MAX_BLOCK_SIZE or bs & (bs - 1):
            raise VfsError(errno.EINVAL, f"block_size is a power of two 512..{MAX_BLOCK_SIZE}, not {bs}")
        if self.size % bs:
            raise VfsError(errno.EINVAL, f"the size ({self.size}) is not a multiple of {bs}")
        self.block_size = bs
        self.core.changed(self)

    async def set_write_cache(self, text: str) -> None:
        value = parse_bool(text, "write_cache")
        if self.enabled and value != self.write_cache:
            await self._reconfig(Reconfig.WRITE_CACHE, value)
        self.write_cache = value
        self.core.changed(self)

    def set_cmd_time_out(self, text: str) -> None:
        value = parse_int(text, "cmd_time_out")
        if not 0 <= value <= 86400:
            raise VfsError(errno.EINVAL, "cmd_time_out is 0 (off) .. 86400 seconds")
        self.cmd_time_out = value
        self.core.changed(self)

    async def _reconfig(self, kind: Reconfig, value: Any) -> None:
        handler = self.handler
        assert handler is not None
        if handler.reconfig is None:
            raise VfsError(
                errno.EOPNOTSUPP, f"handler {handler.subtype} cannot change {kind.name.lower()} live"
            )
        assert self.engine is not None
        what = kind.name.lower()
        async with self.engine.paused():
            try:
                rc = await trio.to_thread.run_sync(handler.reconfig, self, kind, value)
            except OSError as e:  # ftruncate past the filesystem's limit (EFBIG), no space, ...
                reason = f"handler {handler.subtype} could not change the {what}: {e.strerror}"
                raise VfsError(e.errno or errno.EIO, reason) from None
            except (OverflowError, MemoryError, ValueError) as e:  # mremap of 2^50 bytes, ...
                code = errno.EFBIG if kind is Reconfig.SIZE else errno.EINVAL
                raise VfsError(code, f"handler {handler.subtype} could not change the {what}: {e}") from None
        if rc:
            code = errno.errorcode.get(-rc, rc)
            raise VfsError(-rc, f"handler {handler.subtype} refused the new {what}: {code}")

    # ---- what its handler reports, from any thread --------------------------------------------

    def notify_lock_lost(self) -> None:
        """tcmu_notify_lock_lost: another client took the lock (a lock_lost event)."""
        recovery.from_any_thread(self.core, lambda: recovery.lock_lost(self.core, self))

    def notify_conn_lost(self) -> None:
        """tcmu_notify_conn_lost: the backend stopped answering; the device is reopened until it
        opens again (conn_lost, then reopened), its commands BUSY meanwhile."""
        recovery.from_any_thread(self.core, lambda: recovery.conn_lost(self.core, self))

    # ---- events -------------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "device": self.name, **fields}
        self.events.publish(record)
        self.core.on_event(self, record)

    # ---- locks (HA) ---------------------------------------------------------------------------

    def lock_status(self) -> tuple[str, int | None]:
        handler = self.handler
        if not self.enabled or handler is None or handler.get_lock_state is None:
            return "unknown", None
        state = handler.get_lock_state(self)
        tag = None
        if handler.get_lock_tag is not None:
            sts, value = handler.get_lock_tag(self)
            tag = value if sts == 0 else None
        name = {
            LockState.UNLOCKED: "unlocked",
            LockState.READ_LOCKED: "read_locked",
            LockState.WRITE_LOCKED: "write_locked",
        }.get(LockState(state), "unknown")
        return name, tag

    def status(self) -> dict[str, Any]:
        handler = self.handler
        lock, tag = self.lock_status()
        return {
            "name": self.name,
            "config": self.config or "-",
            "handler": handler.subtype if handler else (self.config.split("/", 1)[0] if self.config else "-"),
            "enabled": self.enabled,
            "size": self.size,
            "block_size": self.block_size,
            "num_lbas": self.num_lbas if self.enabled else self.size // self.block_size,
            "write_cache": self.write_cache,
            "cmd_time_out": self.cmd_time_out,
            "max_xfer_len": self.max_xfer_len,
            "unmap": bool(handler and handler.unmap is not None),
            "serial": self.serial,
            "lock": lock,
            "lock_tag": tag,
            "format": "-" if self.format_progress is None else f"{self.format_progress * 100 // 0x10000}%",
            "progress": "-" if self.progress is None else "{} {}/{}".format(*self.progress),
            "unit_attention": self.pending_ua,
            "recovering": self.recovering,
            "in_flight": len(self.engine.in_flight) if self.engine else 0,
            "uptime": int(time.time() - self.opened_at) if self.enabled else 0,
            **(
                {f"kernel_{k}": v for k, v in self.kernel.status().items()}
                if self.kernel
                else {"kernel": "-"}
            ),
        }

    def definition(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "size": self.size,
            "block_size": self.block_size,
            "write_cache": self.write_cache,
            "cmd_time_out": self.cmd_time_out,
            "enabled": self.enabled,
            "serial": self.serial,
        }
