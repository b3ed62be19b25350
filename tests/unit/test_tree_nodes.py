"""Node-model pieces that need no mount: value parsing, names, inode table, change signals."""

from __future__ import annotations

import errno
import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from backends.errors import VfsError
from backends.names import check_name
from backends.notify import Changed
from vfs.fuse.inodes import ROOT_INODE, InodeTable
from vfs.tree import callers
from vfs.tree.nodes import StaticDir
from vfs.tree.streams import LONGEST_WAIT, SLICE, _slices, lost_wakeups, wait_until
from vfs.tree.values import flat_keyed, parse_value


def test_parse_value_strips_one_newline_only() -> None:
    assert parse_value(b"5\n") == "5"
    assert parse_value(b"5\n\n") == "5\n"
    assert parse_value(b"") == ""
    with pytest.raises(VfsError) as e:
        parse_value(b"a\0")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(VfsError):
        parse_value(b"\xff")


@given(st.binary(max_size=64))
def test_parse_value_never_raises_anything_else(data: bytes) -> None:
    try:
        parse_value(data)
    except VfsError as e:
        assert e.errno == errno.EINVAL and e.reason


@pytest.mark.parametrize("name", ["a", "dev0", "a.b-c_d", "x" * 31])
def test_good_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("", errno.EINVAL),
        (".x", errno.EINVAL),
        ("a/b", errno.EINVAL),
        ("a b", errno.EINVAL),
        ("x" * 32, errno.ENAMETOOLONG),
    ],
)
def test_bad_names(name: str, code: int) -> None:
    with pytest.raises(VfsError) as e:
        check_name(name)
    assert e.value.errno == code


def test_flat_keyed() -> None:
    assert (
        flat_keyed({"a": 1, "b": True, "c": None, "d": [1, 2], "e": {"x": 3}})
        == "a 1\nb 1\nc -\nd 1,2\ne.x 3"
    )


def test_inode_numbers_are_stable_and_forgotten() -> None:
    root = StaticDir()
    child = root.add("c", StaticDir())
    table = InodeTable(root)
    ino = table.remember(child)
    assert ino != ROOT_INODE and table.remember(child) == ino
    table.forget(ino, 1)
    assert table.get(ino) is child
    table.forget(ino, 1)
    with pytest.raises(VfsError):
        table.get(ino)
    assert table.remember(child) == ino  # same node, same number
    table.forget(ROOT_INODE, 10)
    assert table.get(ROOT_INODE) is root


async def test_changed_is_level_triggered() -> None:
    changed = Changed()
    seen = changed.seq
    changed.fire()  # fired before anyone waits: not lost
    with trio.fail_after(1):
        await changed.wait(seen)


@pytest.fixture
def signalled(monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """The openers whose tasks have a signal pending, as /proc would tell the slice watcher."""
    pids: set[int] = set()
    monkeypatch.setattr(callers, "process_of", lambda tid: tid)  # a process per opener
    monkeypatch.setattr(callers, "signalled_processes", lambda asked: pids & set(asked))
    return pids


async def test_a_wait_ends_on_readiness_or_its_openers_signal_only(signalled: set[int]) -> None:
    changed = Changed()
    with pytest.raises(VfsError) as e:
        await wait_until(lambda: False, changed, nonblock=True)
    assert e.value.errno == errno.EAGAIN
    with trio.move_on_after(4 * SLICE) as scope:  # no signal: slices pass, the wait goes on
        await wait_until(lambda: False, changed, nonblock=False, pid=7)
    assert scope.cancelled_caught
    signalled.add(7)
    start = trio.current_time()
    with pytest.raises(VfsError) as e:
        await wait_until(lambda: False, changed, nonblock=False, pid=7)
    assert e.value.errno == errno.EINTR and SLICE <= trio.current_time() - start <= LONGEST_WAIT + 0.1
    flag = [False]

    async def later() -> None:
        await trio.sleep(0.1)
        flag[0] = True
        changed.fire()

    async with trio.open_nursery() as n:
        n.start_soon(later)
        await wait_until(lambda: flag[0], changed, nonblock=False, pid=7)


async def test_each_parked_wait_asks_for_its_own_opener_and_leaves_nothing_parked(
    signalled: set[int],
) -> None:
    signalled.add(1)
    ended: dict[int, float] = {}
    start = trio.current_time()

    async def wait(pid: int, delay: float) -> None:
        await trio.sleep(delay)
        with pytest.raises(VfsError) as e:
            await wait_until(lambda: False, Changed(), nonblock=False, pid=pid)
        assert e.value.errno == errno.EINTR
        ended[pid] = trio.current_time() - start - delay

    with trio.fail_after(3):
        async with trio.open_nursery() as n:
            n.start_soon(wait, 1, 0.0)
            n.start_soon(wait, 2, 0.15)  # parks while the first is parked; its opener has no signal
            await trio.sleep(1.0)
            assert list(ended) == [1]
            signalled.add(2)
    assert SLICE <= ended[1] <= LONGEST_WAIT + 0.1, ended
    assert 0 <= ended[2] - 0.85 <= LONGEST_WAIT + 0.1, ended  # at its first slice after the signal
    assert not _slices.parked  # every wait took its entry with it
    # nothing parked: the watcher keeps no timer (an idle daemon does not wake) until a wait
    # parks again, and then times that one
    await trio.sleep(LONGEST_WAIT)
    await trio.testing.wait_all_tasks_blocked()
    assert trio.lowlevel.current_statistics().seconds_to_next_deadline == math.inf
    with pytest.raises(VfsError), trio.fail_after(LONGEST_WAIT + 0.5):
        await wait_until(lambda: False, Changed(), nonblock=False, pid=1)


async def test_data_found_only_at_a_slice_is_a_lost_wakeup(signalled: set[int]) -> None:
    before = lost_wakeups()
    flag = [False]

    async def silently() -> None:
        await trio.sleep(0.05)
        flag[0] = True  # and no fire(): a lost wake-up

    with trio.fail_after(LONGEST_WAIT + 0.5):
        async with trio.open_nursery() as n:
            n.start_soon(silently)
            await wait_until(lambda: flag[0], Changed(), nonblock=False, pid=3)
    assert lost_wakeups() == before + 1


async def test_a_failing_poll_watcher_does_not_end_the_slices(signalled: set[int]) -> None:
    signalled.add(5)
    changed = Changed()

    def broken() -> None:
        raise RuntimeError("stale poll handle")

    changed.watch_once(broken)  # fired by the slice watcher when the wait's slice ends
    for _ in range(2):  # the second wait is timed too: the watcher lived on
        with pytest.raises(VfsError) as e, trio.fail_after(LONGEST_WAIT + 0.5):
            await wait_until(lambda: False, changed, nonblock=False, pid=5)
        assert e.value.errno == errno.EINTR


def test_a_log_record_is_capped() -> None:
    import logging

    from vfs.daemon import LOG_RECORD_MAX, CappedFormatter

    record = logging.LogRecord("vfs", logging.INFO, __file__, 1, "refused: %s", ("x" * (1 << 20),), None)
    text = CappedFormatter("%(message)s").format(record)
    assert len(text) < LOG_RECORD_MAX + 100 and text.endswith(
        f"({(1 << 20) + 9 - LOG_RECORD_MAX} more characters not logged)"
    )
