"""A device's kernel side: commands the kernel puts in its TCMU ring run through the device's
engine — the same engine, range locks and stats as `data` and `scsi` — and their responses go
back into the ring. Sans fd: `uio.py` owns the mapping, the waits and the kicks.

The ring is served on a thread of its own, as tcmu-runner's cmdproc thread serves it: a READ or
WRITE the engine can do at once (`Engine.rw_now`) is done and answered there, a batch at a time
with one kick, so the common command never waits for the event loop; every other command goes
to worker tasks on the loop and runs through the engine's full SCSI front end."""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from backends.tcmu import scsi
from backends.tcmu.ring import Command, Ring, RingError, Tmr
from backends.tcmu.status import Sts, to_scsi

if TYPE_CHECKING:
    from backends.tcmu.device import Device
    from backends.tcmu.engine import Engine

log = logging.getLogger("vfs.tcmu")

RESET_LIMIT, RESET_WINDOW = 3, 10.0
_RW10, _RW16 = struct.Struct(">2xIxH"), struct.Struct(">2xQI")  # LBA, transfer length
# The commands served at once where the engine can: opcode -> (a write?, its LBA and length,
# the CDB's byte 1 bits that send it to the loop: protection information; FUA, write-through)
AT_ONCE = {
    scsi.READ_10: (False, _RW10, 0xE0),
    scsi.WRITE_10: (True, _RW10, 0xE8),
    scsi.READ_16: (False, _RW16, 0xE0),
    scsi.WRITE_16: (True, _RW16, 0xE8),
}
GOOD_ANSWER = to_scsi(Sts.OK)
# Commands done at once are answered a batch at a time, one kick each; a batch ends early
# once it has moved this much, so a long transfer is not held back by the ones after it.
ANSWER_AFTER = 256 << 10


class KernelPort:
    def __init__(
        self,
        dev: Device,
        ring: Ring,
        kick: Callable[[], None],
        uio_name: str = "-",
        reset: Callable[[], bool] | None = None,
    ) -> None:
        self.dev = dev
        self.uio_name = uio_name
        self.ring = ring
        self.kick = kick
        # reset(): the kernel fails what it has queued (CHECK CONDITION, so initiators retry)
        # and starts the ring again at 0; False where it cannot
        self.reset = reset
        self.ring_size = ring.cmdr_size
        self.data_area = len(ring.mem) - ring.data_off
        self.commands = 0
        self.bad_entries = 0
        self.tmrs = 0
        self.resets: list[float] = []  # when the ring was reset after it went wrong
        self.last_ring_error = ""
        self.error = ""  # the ring is broken for good: why (nothing more is taken from it)
        # One kick for the commands of one take() that complete together: a write() on the uio
        # fd costs as much as a 4k command's Python under TCG, and the kernel reaps all at once.
        self._kick_due = False  # responses written, the kick left to a command still queued
        self.kicks = 0
        # Commands run on worker tasks that park between commands: waking one costs a fraction
        # of starting a task per command (the consumer's largest cost after the engine).
        self._queue: deque[tuple[Ring, Command]] = deque()  # taken, not yet running; with their ring
        self._idle: list[trio.lowlevel.Task] = []
        self.workers = 0
        # The ring is taken and answered on the ring's thread and answered from the loop too.
        self.lock = threading.Lock()
        self.at_once = 0  # commands answered on the ring's thread
        self._spawn: Callable[..., Any] | None = None  # starts a worker task (on the loop)
        self._token: trio.lowlevel.TrioToken | None = None
        self._loop_thread = 0

    def on_loop(self, spawn: Callable[..., Any]) -> None:
        """Called on the event loop: its worker tasks start with `spawn`, and `take` may be
        called from any thread from here on."""
        self._spawn = spawn
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()

    def _to_loop(self, fn: Callable[[], None]) -> None:
        if self._token is None or threading.get_ident() == self._loop_thread:
            fn()
            return
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:  # the daemon is stopping: the kernel keeps the ring
            pass

    def take(self, spawn: Callable[..., Any] | None = None) -> int:
        """Every command the kernel has queued, on whichever thread serves the ring: what the
        engine can do at once is done and answered here, the rest starts on worker tasks on
        the loop; how many were taken. `spawn` (or the one `on_loop` gave) starts a worker
        where no parked one can take a command (they live until serving is cancelled)."""
        if spawn is not None:
            self._spawn = spawn
        with self.lock:
            if self.error:
                return 0
            ring = self.ring
            try:
                commands, tmrs = ring.take()
            except RingError as e:
                self.went_wrong(str(e))
                return 0
        for tmr in tmrs:
            self._tmr(tmr)
        if not commands:
            return 0
        self.commands += len(commands)
        engine = self.dev.engine
        answers: list[tuple[int, Sts]] = []
        rest: list[Command] = []
        moved = 0
        for cmd in commands:
            sts = None if engine is None else self._at_once(engine, ring, cmd)
            if sts is None:
                rest.append(cmd)
                continue
            answers.append((cmd.cmd_id, sts))
            moved += cmd.length
            if moved >= ANSWER_AFTER:  # long transfers: the initiator may queue the next now
                self._answer(ring, answers)
                answers, moved = [], 0
        if answers:
            self._answer(ring, answers)
        if rest:
            self._to_loop(lambda: self._start(ring, rest))
        return len(commands)

    def _answer(self, ring: Ring, answers: list[tuple[int, Sts]]) -> None:
        """Responses of commands done at once, with one kick for them all."""
        with self.lock:
            if ring is not self.ring or self.error:  # a reset failed them already
                return
            try:
                for cmd_id, sts in answers:
                    status, sense = GOOD_ANSWER if sts is Sts.OK else to_scsi(sts)
                    ring.complete(cmd_id, status, sense)
            except RingError as e:
                self.went_wrong(str(e))
                return
            self.at_once += len(answers)
            self.kicks += 1
            self.kick()

    @staticmethod
    def _at_once(engine: Engine, ring: Ring, cmd: Command) -> Sts | None:
        """A plain READ or WRITE the engine does at once: its status; None: the loop's.
        (Few calls here and in Ring.take: under TCG their Python is most of a 4k command.)"""
        cdb = cmd.cdb
        kind = AT_ONCE.get(cdb[0]) if cdb else None
        if kind is None or cmd.bidi:
            return None
        write, fields, to_loop = kind
        if cdb[1] & to_loop:
            return None
        lba, blocks = fields.unpack_from(cdb)
        return engine.rw_now(write, lba, blocks, ring.views(cmd.iovs), cmd.length)

    def _start(self, ring: Ring, commands: list[Command]) -> None:
        """On the loop: the commands the ring's thread left to worker tasks."""
        self._queue.extend((ring, cmd) for cmd in commands)
        for _ in commands:
            if self._idle:
                trio.lowlevel.reschedule(self._idle.pop())
            else:
                assert self._spawn is not None
                self.workers += 1
                self._spawn(self._worker)

    @property
    def idle(self) -> bool:
        """No command queued or running: every worker is parked."""
        return not self._queue and len(self._idle) == self.workers

    async def _worker(self) -> None:
        """Run queued commands; park when there are none (serving's cancellation ends it)."""
        task = trio.lowlevel.current_task()

        def abort(_: object) -> trio.lowlevel.Abort:
            self._idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            while True:
                while self._queue:
                    ring, cmd = self._queue.popleft()
                    await self.run(cmd, ring)
                self._idle.append(task)
                await trio.lowlevel.wait_task_rescheduled(abort)
        finally:
            self.workers -= 1

    def went_wrong(self, reason: str) -> None:
        """A ring that cannot be: reset it (commands in it fail, to be retried) unless it went
        wrong RESET_LIMIT times in RESET_WINDOW seconds, which only a hostile writer does.
        Called with `lock` held, on either thread."""
        now = time.monotonic()
        self.resets = [t for t in self.resets if now - t < RESET_WINDOW]
        self.last_ring_error = reason
        log.error("device %s: the kernel's ring went wrong: %s", self.dev.name, reason)
        if self.reset is not None and len(self.resets) < RESET_LIMIT and self.reset():
            self.resets.append(now)
            try:
                self.ring = Ring(self.ring.mem)
            except RingError as e:
                self.broken(f"{reason}; after a reset: {e}")
                return
            self._to_loop(lambda: self.dev.emit("ring_reset", reason=reason))
            return
        self.broken(reason)

    def broken(self, reason: str) -> None:
        self.error = reason
        log.error("device %s: the kernel's ring is broken: %s", self.dev.name, reason)
        self._to_loop(lambda: self.dev.emit("ring_broken", reason=reason))

    def _tmr(self, tmr: Tmr) -> None:
        # Commands here are already running through the engine and end on their own; the kernel
        # has stopped waiting for those it names and drops their responses.
        self.tmrs += 1
        log.info("device %s: task management %d for commands %s", self.dev.name, tmr.tmr_type, tmr.cmd_ids)

    async def run(self, cmd: Command, ring: Ring) -> None:
        if not self._queue and self._kick_due:  # this one may wait: the others' go now
            with self.lock:
                self._kick()
        if ring is not self.ring or self.error:  # a reset since it came failed it in the kernel
            return
        if cmd.error:
            self.bad_entries += 1  # (on the loop: an entry error is never done at once)
            log.error("device %s: command %d failed: %s", self.dev.name, cmd.cmd_id, cmd.error)
            self.dev.emit("bad_entry", cmd_id=cmd.cmd_id, reason=cmd.error)
            status, sense = to_scsi(Sts.INVALID_CDB)
            self._complete(self.ring, cmd.cmd_id, status, sense, None)
            return
        iovs = cmd.iovs
        total = cmd.length
        if cmd.cdb[0] in scsi.DATA_OUT:
            response = await self.dev.engine.execute(cmd.cdb, ring.gather(iovs), 0)
            self._complete(ring, cmd.cmd_id, response.status, response.sense, None)
            return
        target = cmd.bidi or iovs
        direct = ring.view(target[0]) if len(target) == 1 else None  # a READ lands in place
        response = await self.dev.engine.execute(cmd.cdb, b"", total, direct)
        if ring is not self.ring or self.error:
            return
        data = response.data
        landed = isinstance(data, memoryview) and direct is not None and data.obj is direct.obj
        done = len(data) if landed else ring.scatter(target, data)
        self._complete(ring, cmd.cmd_id, response.status, response.sense, done if done < total else None)

    def _complete(self, ring: Ring, cmd_id: int, status: int, sense: bytes, read_len: int | None) -> None:
        # A broken ring takes no more responses (the kernel times the command out), and one
        # reset since the command came has failed it already: its slot may be another's now.
        with self.lock:
            if self.error or ring is not self.ring:
                return
            try:
                ring.complete(cmd_id, status, sense, read_len)
            except RingError as e:
                self.went_wrong(str(e))
                return
            if self._queue:  # a command still queued runs in this turn: it kicks
                self._kick_due = True
            else:
                self._kick()

    def _kick(self) -> None:
        self._kick_due = False
        self.kicks += 1
        self.kick()

    def status(self) -> dict[str, Any]:
        return {
            "uio": self.uio_name,
            "ring_size": self.ring_size,
            "data_area": self.data_area,
            "in_flight": 0 if self.error else self.ring.in_flight,
            "commands": self.commands,
            "at_once": self.at_once,
            "kicks": self.kicks,
            "bad_entries": self.bad_entries,
            "tmrs": self.tmrs,
            "ring_resets": len(self.resets),
            "ring_error": self.last_ring_error or "-",
            "ring_broken": self.error or "-",
        }
