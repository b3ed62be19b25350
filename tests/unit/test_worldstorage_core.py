"""The world-storage core without a mount: slots, constructors, references, death by pidfd."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from typing import Any

import pytest
import trio

from backends.errors import VfsError
from backends.worldstorage import Block, WorldStorage


class Recorder:
    def __init__(self) -> None:
        self.destroyed: list[tuple[int, str, str, bytes]] = []

    def __call__(self, block: Block, cause: str) -> None:
        self.destroyed.append((block.world.wid, block.slot.name, cause, block.contents()))


async def wait_for(predicate: Any, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "30"])


async def test_staged_attributes_and_enable() -> None:
    async with trio.open_nursery() as n:
        core = WorldStorage(n.start_soon)
        slot = core.create_slot("s")
        for setter, text, code in [
            (slot.set_size, "0", errno.EINVAL),
            (slot.set_size, str((16 << 20) + 1), errno.EINVAL),
            (slot.set_size, "ten", errno.EINVAL),
            (slot.set_align, "3", errno.EINVAL),
            (slot.set_align, "8192", errno.EINVAL),
            (slot.set_init, "pattern:xyz", errno.EINVAL),
            (slot.set_init, "random", errno.EINVAL),
            (slot.set_on_exit, "keep", errno.EINVAL),
        ]:
            with pytest.raises(VfsError) as e:
                setter(text)
            assert e.value.errno == code and e.value.reason
        slot.set_size("0x10")
        with pytest.raises(VfsError) as e:
            slot.set_template(b"x" * 17)
        assert e.value.errno == errno.EFBIG
        slot.set_init("template")
        with pytest.raises(VfsError):
            core.enable(slot)  # no template yet
        slot.set_template(b"TPL")
        core.enable(slot)
        with pytest.raises(VfsError) as e:
            slot.set_size("32")
        assert e.value.errno == errno.EBUSY
        with pytest.raises(VfsError) as e:
            core.create_slot("s")
        assert e.value.errno == errno.EEXIST
        block = core.lookup_local(os.getpid(), "s")
        assert block.contents() == b"TPL" + bytes(13) and not block.materialized
        n.cancel_scope.cancel()


async def test_lazy_pattern_reads_like_an_eager_one() -> None:
    async with trio.open_nursery() as n:
        core = WorldStorage(n.start_soon)
        slot = core.create_slot("p")
        slot.set_size("10")
        slot.set_align("4096")
        slot.set_init("pattern:a1b2c3")
        core.enable(slot)
        block = core.lookup_local(os.getpid(), "p")
        lazy = [bytes(block.read(off, 3)) for off in range(0, 9, 3)]
        block.write(9, b"Z")
        assert block.materialized
        assert [bytes(block.read(off, 3)) for off in range(0, 9, 3)] == lazy
        assert block.contents() == bytes.fromhex("a1b2c3a1b2c3a1b2c3") + b"Z"
        import ctypes

        assert ctypes.addressof(ctypes.c_char.from_buffer(block.view)) % 4096 == 0  # type: ignore[arg-type]
        n.cancel_scope.cancel()


async def test_failing_constructor_fails_creation_and_destroys_what_was_built() -> None:
    procs = [sleeper() for _ in range(3)]
    try:
        async with trio.open_nursery() as n:
            rec = Recorder()
            core = WorldStorage(n.start_soon, rec)
            base = core.create_slot("base")
            core.enable(base)
            for p in procs:
                core.world(p.pid)
            calls: list[int] = []

            def picky(wid: int, view: memoryview) -> None:
                calls.append(wid)
                if wid == procs[2].pid:
                    raise VfsError(errno.ENOMEM, "no room for this one")
                view[:2] = b"ok"

            slot = core.create_slot("picky", constructor=picky)
            with pytest.raises(VfsError) as e:
                core.enable(slot)
            assert e.value.errno == errno.ENOMEM and "no room" in e.value.reason
            assert not slot.enabled and slot.blocks == {}
            assert sorted(w for w, s, c, _ in rec.destroyed if s == "picky") == sorted(calls[:-1])
            assert all(c == "construction failed" for _, s, c, _ in rec.destroyed)
            # and a failing constructor fails the creation of a new world
            slot.constructor = lambda wid, view: (_ for _ in ()).throw(VfsError(errno.EIO, "broken"))
            core.enable(core.create_slot("late"))  # fine: no constructor
            bad = core.create_slot("bad", constructor=slot.constructor)
            extra = sleeper()
            procs.append(extra)
            with pytest.raises(VfsError):
                core.enable(bad)
            n.cancel_scope.cancel()
    finally:
        for p in procs:
            p.kill()
            p.wait()


async def test_death_references_and_destructors() -> None:
    worker = sleeper()
    async with trio.open_nursery() as n:
        rec = Recorder()
        core = WorldStorage(n.start_soon, rec)
        a, b = core.create_slot("a"), core.create_slot("b")
        a.set_on_exit("event")
        core.enable(a)
        core.enable(b)
        core.lookup_local(worker.pid, "a").write(0, b"last words")
        held = core.lookup(worker.pid, "a")
        with pytest.raises(VfsError) as e:
            core.destroy_slot("a")
        assert e.value.errno == errno.EBUSY and str(worker.pid) in e.value.reason
        worker.kill()
        worker.wait()
        await wait_for(lambda: worker.pid not in core.worlds)
        assert [(w, s) for w, s, _, _ in rec.destroyed] == [(worker.pid, "b")]  # a is still held
        assert held.contents().startswith(b"last words")
        with pytest.raises(VfsError) as e:
            core.lookup(worker.pid, "a")
        assert e.value.errno == errno.ENOENT
        core.release(held)
        assert rec.destroyed[-1][:3] == (worker.pid, "a", "world exited")
        assert rec.destroyed[-1][3].startswith(b"last words")
        assert held.destroyed and a.blocks == {}
        core.destroy_slot("a")
        with pytest.raises(VfsError) as e:
            core.lookup_local(0, "b")
        assert e.value.errno == errno.EACCES
        n.cancel_scope.cancel()


async def test_ten_thousand_worlds() -> None:
    """10,000 live tasks (threads here) with a block each; all cleaned up when they end."""
    count = 10_000
    go = threading.Event()
    tids: list[int] = []
    lock = threading.Lock()

    def task() -> None:
        with lock:
            tids.append(threading.get_native_id())
        go.wait()

    threads = [threading.Thread(target=task, daemon=True) for _ in range(count)]
    try:
        for t in threads:
            t.start()
        while len(tids) < count:
            await trio.sleep(0.01)
        async with trio.open_nursery() as n:
            core = WorldStorage(n.start_soon)
            slot = core.create_slot("s")
            slot.set_size("64")
            core.enable(slot)
            for tid in tids:
                core.lookup_local(tid, "s").write(0, tid.to_bytes(4, "little"))
            assert len(core.worlds) == count and len(slot.blocks) == count
            assert all(
                bytes(core.lookup_local(t, "s").read(0, 4)) == t.to_bytes(4, "little") for t in tids[:100]
            )
            go.set()
            # Let the threads end first: 10,000 Python threads waking at once each want the GIL
            # the loop needs too, and starved it past 30 s on a loaded 2-core machine. Real
            # worlds are other processes, which take no GIL of ours.
            await trio.to_thread.run_sync(lambda: [t.join() for t in threads])
            await wait_for(lambda: not core.worlds, timeout=30)
            assert slot.blocks == {} and core.exited == count
            n.cancel_scope.cancel()
    finally:
        go.set()
        for t in threads:
            t.join()
