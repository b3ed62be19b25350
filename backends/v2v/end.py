"""One end of a channel: v2v's endpoint state machine over an NC2 ring pair.

    unready → listening → connected (accept) → disconnecting → disconnected     (listener)
    unready ─────────────→ connected (connect) ──────────────→ disconnected     (connector)
    crashed: the process serving an end went away without disconnecting

An end is used through one attachment at a time: a byte stream (type 1 DATA records, v2v's
stream protocol), messages (one record of type 0 per write/read), or raw records. Every call
here is non-blocking; the FUSE face waits (time-sliced) on `End.changed`.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any

import trio

from backends.errors import VfsError
from backends.events import Hub
from backends.notify import Changed
from backends.v2v import layout
from backends.v2v.layout import ENDING, IN_USE, State
from backends.v2v.ring import HEADER, PAD_TYPE, Nc2, RingError, RingStats
from backends.v2v.transport import peer_of

if TYPE_CHECKING:
    from backends.v2v.channel import Channel

log = logging.getLogger("vfs.v2v")

DATA = 1  # STREAM_MSG_DATA
FAST_CHUNK = 2048  # MAX_INLINE_BYTES: stream chunks while the peer is in fast-receive mode
DISCONNECT_WAIT = 2.0  # the listener's disconnect waits this long for its peer (v2v: forever)


class End:
    def __init__(self, channel: Channel, role: str) -> None:
        self.channel = channel
        self.role = role
        self.peer = peer_of(role)
        self.changed = Changed()
        self.nc2: Nc2 | None = None
        self.attached: str | None = None
        self.inbox = bytearray()  # stream bytes pulled from the ring (the deadlock-avoidance queue)
        self.connected_once = False
        self.error = ""
        self.stats = RingStats()
        self.events = Hub()  # the readers of this end's `events`
        self.fast = False
        self._seen: tuple[State, State] | None = None
        self._watch: trio.CancelScope | None = None

    # ---- states ---------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.channel.transport.state(self.role)

    @property
    def remote_state(self) -> State:
        return self.channel.transport.state(self.peer)

    def _set(self, state: State) -> None:
        self.channel.transport.set_state(self.role, state)
        self.refresh()

    def refresh(self) -> None:
        """Look at both states again: accept a connector, report changes, wake waiters."""
        if self.state is State.LISTENING and self.remote_state is State.CONNECTED and self.attached:
            self.channel.transport.set_state(self.role, State.CONNECTED)  # accept
        local, remote = self.state, self.remote_state
        if local is State.CONNECTED and self.attached:
            self.connected_once = True
        if (local, remote) != self._seen:
            self._seen = (local, remote)
            self.emit({"event": "state", "state": local.label, "remote_state": remote.label})
            self.channel.on_state(self)
        self.changed.fire()

    def emit(self, record: dict[str, Any]) -> None:
        record = {"channel": self.channel.name, "end": self.role, **record}
        self.events.publish(record)
        self.channel.core.on_event(record)

    def fail(self, error: RingError) -> VfsError:
        """A broken ring: this end stops trusting it; the reason stays for status/last_error.
        The peer is told the only way v2v has — this end disconnects — so its writer gets EPIPE
        at once instead of waiting on a ring nobody reads; waiters here wake to the error."""
        if not self.error:
            self.error = str(error)
            log.error("channel %s (%s): %s", self.channel.name, self.role, error)
            self.emit({"event": "error", "reason": self.error})
            if self.attached is not None:
                self.channel.transport.set_state(self.role, State.DISCONNECTED)
            self.channel.on_state(self)
            self.changed.fire()
        return VfsError(errno.EIO, f"channel {self.channel.name} is broken: {self.error}")

    # ---- attach and detach (open and close of stream/msg/records) --------------------------------

    def attach(self, kind: str) -> None:
        if self.attached is not None:
            raise VfsError(errno.EBUSY, f"the {self.role} is already open as {self.attached}")
        ch = self.channel
        tr = ch.transport
        tr.claim(self.role)
        try:
            if self.role == "listener":
                if self.state in IN_USE:
                    raise VfsError(errno.EBUSY, "the listener is still in use")
                if self.remote_state in (State.CONNECTED, State.DISCONNECTING):
                    raise VfsError(
                        errno.EBUSY, "the connector has not disconnected from the last session yet"
                    )
                messages, size = tr.take_unread()  # of the last session: dropped, counted
                self.stats.dropped_messages += messages
                self.stats.dropped_bytes += size
                tr.create(ch.prod_order, ch.cons_order)
                self._map(ch.prod_order, ch.cons_order)
                ch.start(self.role)
                self.attached = kind
                self._set(State.LISTENING)
            else:
                orders = tr.open_existing()
                if tr.state("listener") is not State.LISTENING:
                    raise VfsError(errno.ECONNREFUSED, f"nobody listens on {ch.name}")
                self._map(*orders)
                ch.start(self.role)
                self.attached = kind
                self._set(State.CONNECTED)
        except BaseException:
            self.attached = None
            tr.release(self.role)
            raise
        self.error = ""
        self.inbox.clear()
        self.connected_once = self.state is State.CONNECTED
        self._watch_peer()

    def _map(self, prod_order: int, cons_order: int) -> None:
        tr = self.channel.transport
        control, l2c, c2l = layout.rings(tr.buf, prod_order, cons_order)
        local, tx, rx = (0, l2c, c2l) if self.role == "listener" else (64, c2l, l2c)
        self.nc2 = Nc2(control, local, tx, rx, self.stats, lambda: tr.notify(self.peer))
        self.nc2.attach()
        self.nc2.set_fast_receive(self.fast)

    def _watch_peer(self) -> None:
        tr = self.channel.transport
        if not tr.peers_elsewhere:
            return
        scope = trio.CancelScope()
        self._watch = scope

        def gone() -> None:
            if self.remote_state in IN_USE:
                log.warning(
                    "channel %s: the %s's process went away without disconnecting",
                    self.channel.name,
                    self.peer,
                )
                tr.set_state(self.peer, State.CRASHED)
            self.refresh()

        async def watch() -> None:
            with scope:
                # only once the peer is there; before that its lock is free anyway
                while self.remote_state not in IN_USE:
                    await self.changed.wait(self.changed.seq)
                if tr.peer_alive(self.role):
                    await tr.watch_peer(self.role, gone)
                else:
                    gone()

        self.channel.spawn(watch)

    async def detach(self) -> None:
        """Close of the attachment = v2v_disconnect."""
        if self.attached is None:
            return
        tr = self.channel.transport
        try:
            if self.role == "connector" or self.state is not State.CONNECTED:
                self._set(State.DISCONNECTED)
            else:
                self._set(State.DISCONNECTING)
                with trio.move_on_after(DISCONNECT_WAIT):  # bounded, unlike v2v's
                    while self.remote_state is State.CONNECTED:
                        await self.changed.wait(self.changed.seq)
                self._set(State.DISCONNECTED)
        finally:
            self.attached = None
            self.nc2 = None
            self.stats.dropped_bytes += len(self.inbox)
            self.inbox.clear()
            if self._watch is not None:
                self._watch.cancel()
                self._watch = None
            tr.release(self.role)
            self.refresh()

    # ---- conditions -------------------------------------------------------------------------------

    def _ring(self) -> Nc2:
        if self.error:
            raise VfsError(errno.EIO, f"channel {self.channel.name} is broken: {self.error}")
        if self.nc2 is None:
            raise VfsError(errno.ENOTCONN, f"the {self.role} is not open")
        return self.nc2

    def peer_gone(self) -> bool:
        return self.connected_once and (self.remote_state in ENDING or self.state in ENDING)

    def _end_of_data(self) -> bytes:
        """What a drained read returns once the peer has gone: EOF, ECONNRESET for a crash, EIO
        for a state word that is no state at all (written over: not a clean disconnect)."""
        if self.remote_state is State.CRASHED:
            raise VfsError(errno.ECONNRESET, f"the {self.peer} crashed")
        self._check_state_words()
        return b""

    def _check_state_words(self) -> None:
        for role in (self.peer, self.role):
            if self.channel.transport.state(role) is State.UNKNOWN:
                word = layout.raw_state(self.channel.transport.words, role)
                raise self.fail(RingError(f"the {role}'s state word reads {word:#x}, which is no state"))

    def _pending(self) -> bool:
        try:
            return self._ring().pending()
        except RingError as e:
            raise self.fail(e) from None

    def _send(self, nc2: Nc2) -> None:
        if nc2.send():
            self.channel.transport.notify(self.peer)

    def _finish(self, nc2: Nc2) -> None:
        if nc2.finish():
            self.channel.transport.notify(self.peer)

    def _writable_state(self) -> None:
        if self.peer_gone():
            self._check_state_words()  # one written over is an error here too, not EPIPE
            raise VfsError(errno.EPIPE, f"the {self.peer} has gone ({self.remote_state.label})")

    # ---- byte stream --------------------------------------------------------------------------------

    def _pull_incoming(self) -> None:
        """Move every pending incoming DATA record into the inbox (and free the peer's ring), so
        two ends that both write cannot deadlock on full rings."""
        nc2 = self._ring()
        try:
            while (msg := nc2.get()) is not None:
                if msg.type == DATA:
                    self.inbox += msg.payload
                self._finish(nc2)
        except RingError as e:
            raise self.fail(e) from None

    def stream_readable(self) -> bool:
        return bool(self.inbox) or self.error != "" or self._pending() or self.peer_gone()

    def stream_read(self, size: int) -> bytes:
        self._pull_incoming()
        if self.inbox:
            chunk = bytes(self.inbox[:size])
            del self.inbox[:size]
            return chunk
        return self._end_of_data()

    def stream_writable(self, size: int) -> bool:
        if self.peer_gone() or self.error:
            return True  # the write will answer EPIPE / EIO at once
        if self.state is not State.CONNECTED:
            return False
        self._pull_incoming()
        try:
            return self._ring().has_room()
        except RingError as e:
            raise self.fail(e) from None

    def stream_write(self, data: memoryview) -> int:
        self._writable_state()
        nc2 = self._ring()
        done = 0
        try:
            fast = nc2.remote_fast_receive()
            while done < len(data):
                room = nc2.producer_bytes_available()
                n = min(room, len(data) - done, FAST_CHUNK if fast else room)
                if n <= 0:
                    break
                slot = nc2.prep(n, DATA)
                if slot is None:
                    break
                slot[:] = data[done : done + n]
                done += n
                if fast:
                    self._send(nc2)  # fast-receive: latency over batching
            self._send(nc2)
        except RingError as e:
            raise self.fail(e) from None
        return done

    # ---- messages and records ---------------------------------------------------------------------

    def _next(self, types: tuple[int, ...] | None) -> Any:
        nc2 = self._ring()
        try:
            while (msg := nc2.get()) is not None:
                if types is None or msg.type in types:
                    return msg
                self._finish(nc2)  # not for this attachment: skipped, as the v2v stream does
        except RingError as e:
            raise self.fail(e) from None
        return None

    def msg_readable(self) -> bool:
        return self.error != "" or self._pending() or self.peer_gone()

    def msg_read(self, size: int, records: bool) -> bytes:
        msg = self._next(None if records else (0,))
        if msg is None:
            return self._end_of_data()
        data = (
            HEADER.pack(msg.type, msg.flags, len(msg.payload) + 4) + msg.payload if records else msg.payload
        )
        if len(data) > size:
            raise VfsError(
                errno.EMSGSIZE, f"the next message is {len(data)} bytes; read with a larger buffer"
            )
        assert self.nc2 is not None
        self._finish(self.nc2)
        return data

    def msg_writable(self, size: int, records: bool) -> bool:
        if self.peer_gone() or self.error:
            return True
        if self.state is not State.CONNECTED:
            return False
        nc2 = self._ring()
        try:
            if nc2.can_prep(max(0, size - 4) if records else size):
                return True
            self._send(nc2)  # a pad it may have written alone
            return False
        except RingError as e:
            raise self.fail(e) from None

    def msg_write(self, data: memoryview, records: bool) -> int:
        self._writable_state()
        nc2 = self._ring()
        if records:
            if len(data) < 4:
                raise VfsError(
                    errno.EINVAL, "a record starts with its 4-byte header {u8 type, u8 flags, u16 size}"
                )
            type_, flags, size = HEADER.unpack_from(data)
            if size != len(data) or type_ >= PAD_TYPE:
                raise VfsError(
                    errno.EINVAL, f"header says type {type_} size {size}; the write is {len(data)} bytes"
                )
            payload = data[4:]
        else:
            if not len(data):
                raise VfsError(errno.EINVAL, "zero-length messages are refused")
            type_, flags, payload = 0, 0, data
        if len(payload) > nc2.max_payload():
            raise VfsError(
                errno.EMSGSIZE, f"a message carries at most {nc2.max_payload()} bytes on this ring"
            )
        try:
            if nc2.remote_fast_receive():
                self._send(nc2)
            slot = nc2.prep(len(payload), type_, flags)
            if slot is None:
                self._send(nc2)  # a pad it may have written alone
                return 0
            slot[:] = payload
            self._send(nc2)
        except RingError as e:
            raise self.fail(e) from None
        return len(data)

    # ---- attributes -------------------------------------------------------------------------------

    def set_fast_receive(self, on: bool) -> None:
        self.fast = on
        if self.nc2 is not None:
            self.nc2.set_fast_receive(on)

    def bytes_available(self) -> int:
        if self.nc2 is None or self.error or self.state is not State.CONNECTED:
            return 0
        try:
            return self.nc2.producer_bytes_available()
        except RingError as e:
            raise self.fail(e) from None

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "state": self.state.label,
            "remote_state": self.remote_state.label,
            "attached": self.attached or "-",
            "fast_receive": self.fast,
            "error": self.error or "-",
            "inbox": len(self.inbox),
        }
