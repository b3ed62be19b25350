"""Where a channel's shared area lives and how its two ends wake each other: the Transport
interface, and LocalTransport — a buffer in this daemon, both ends served here. Shared memory
between two daemons is ShmTransport (shm.py)."""

from __future__ import annotations

import logging
import mmap
from abc import ABC, abstractmethod
from collections.abc import Callable

import trio

from backends.v2v import layout
from backends.v2v.layout import State

log = logging.getLogger("vfs.v2v")
ROLES = ("listener", "connector")


def peer_of(role: str) -> str:
    return "connector" if role == "listener" else "listener"


class Transport(ABC):
    buf: memoryview
    words: memoryview  # layout.state_words(buf), set with it by _use
    spec = ""
    # The peer end may be served by another process, which can die without closing: an end
    # watches it (watch_peer) and marks it crashed.
    peers_elsewhere = False

    def __init__(self, wake: Callable[[str, bool], None]) -> None:
        # wake(role, states): the end `role` served here should look again at its rings, and
        # with states=True at both state words too
        self.wake = wake

    def _use(self, buf: memoryview, unmap: mmap.mmap | None = None) -> None:
        """Work on `buf` from now on; `unmap` (the old mapping) goes once no view of it is left."""
        if unmap is not None:
            try:
                self.words.release()
                self.buf.release()
                unmap.close()
            except BufferError:  # a view still lives (a ring error's traceback): left to the GC
                log.debug("an old mapping is still referenced; left to the garbage collector")
        self.buf = buf
        self.words = layout.state_words(buf)

    def state(self, role: str) -> State:
        return layout.get_state(self.words, role)

    def set_state(self, role: str, state: State) -> None:
        layout.put_state(self.words, role, state)
        self.state_changed(role)
        self.state_changed(peer_of(role))

    def state_changed(self, role: str) -> None:
        self.notify(role)

    def take_unread(self) -> tuple[int, int]:
        """(messages, bytes) the last session left unread: a new one drops and counts them."""
        return layout.unread(self.buf)

    @abstractmethod
    def notify(self, role: str) -> None:
        """Make the end `role` look again (wherever it is served)."""

    def create(self, prod_order: int, cons_order: int) -> None:  # noqa: B027  (optional hook; local needs none)
        """Listener side: a fresh shared area."""

    @abstractmethod
    def open_existing(self) -> tuple[int, int]:
        """Connector side: map what the listener made; its orders."""

    def claim(self, role: str) -> None:  # noqa: B027  (optional hook; local needs none)
        """This daemon serves `role` now (EBUSY if another process does)."""

    def release(self, role: str) -> None:  # noqa: B027  (optional hook; local needs none)
        pass

    def start(self, nursery: trio.Nursery, role: str) -> None:  # noqa: B027  (optional hook; local needs none)
        """The end `role` is attached here: start what serves it (bells, the fd server)."""

    def peer_alive(self, role: str) -> bool:
        """Does a process serve the peer of `role`? (Only asked where peers_elsewhere.)"""
        return True

    async def watch_peer(self, role: str, on_gone: Callable[[], None]) -> None:
        """Return when the process serving the peer of `role` is gone."""
        await trio.sleep_forever()

    def close(self) -> None:  # noqa: B027  (optional hook; local needs none)
        pass


class LocalTransport(Transport):
    """Rings in this daemon's memory, only while an end is open: an idle channel keeps its state
    words (64 bytes), not 150 KB of rings (10,000 channels took 1.5 GB and kept it after rmdir).
    The rings are an anonymous mapping, so closing it gives the memory back to the kernel."""

    spec = "local"

    def __init__(self, wake: Callable[[str, bool], None], prod_order: int, cons_order: int) -> None:
        super().__init__(wake)
        self.orders = (prod_order, cons_order)
        self._rings: mmap.mmap | None = None
        self._claimed: tuple[str, ...] = ()  # the roles open here; a set costs 216 bytes idle
        self._unread = (0, 0)  # left in rings already dropped
        self._use(memoryview(bytearray(layout.IDLE)))
        layout.init_header(self.buf, prod_order, cons_order)

    def notify(self, role: str) -> None:
        self.wake(role, False)  # data or space: the end only needs to look at its rings

    def state_changed(self, role: str) -> None:
        self.wake(role, True)

    def create(self, prod_order: int, cons_order: int) -> None:
        """Fresh rings for a listen, all zero, every state unready (v2v grants fresh pages)."""
        self._drop_rings()
        self.orders = (prod_order, cons_order)
        self._rings = mmap.mmap(-1, layout.total_size(prod_order, cons_order))
        self._use(memoryview(self._rings))
        layout.init_header(self.buf, prod_order, cons_order)

    def open_existing(self) -> tuple[int, int]:
        return self.orders

    def take_unread(self) -> tuple[int, int]:
        now = super().take_unread()
        dropped, self._unread = self._unread, (0, 0)
        return dropped[0] + now[0], dropped[1] + now[1]

    def claim(self, role: str) -> None:
        if role not in self._claimed:
            self._claimed += (role,)

    def release(self, role: str) -> None:
        self._claimed = tuple(r for r in self._claimed if r != role)
        if not self._claimed:
            self._drop_rings()

    def close(self) -> None:
        self._drop_rings()

    def _drop_rings(self) -> None:
        """Back to a page with the state words; the rings go back to the kernel."""
        if self._rings is None:
            return
        unread = layout.unread(self.buf)
        self._unread = (self._unread[0] + unread[0], self._unread[1] + unread[1])
        rings, self._rings = self._rings, None
        self._use(memoryview(bytearray(self.buf[: layout.IDLE])), unmap=rings)
