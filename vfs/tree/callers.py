"""What the tasks behind a request are doing, read from /proc — what FUSE does not tell us.

pyfuse3 gives a read no request context and never passes FUSE_INTERRUPT on, so a parked read
learns of a signal, and of being called from sendfile(), by looking at the process that opened
the file and its descendants (the reader is one of them unless the fd was passed elsewhere).
Every function here is blocking file I/O on /proc: run it in a worker thread for many tasks.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable, Iterator

# A process tree is walked this far at most: a fork bomb under a reader must not stall a probe.
MAX_TASKS = 4096

# Syscalls that read a file through the page cache rather than through read(): splice family.
_SPLICE_CALLS = {
    "x86_64": {40, 275, 276, 326},  # sendfile, splice, tee, copy_file_range
    "aarch64": {71, 76, 77, 285},
}.get(platform.machine(), set())


def _all_tasks() -> Iterator[str]:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                for tid in os.listdir(f"/proc/{name}/task"):
                    yield f"/proc/{name}/task/{tid}"
            except OSError:
                continue


def _status(task: str) -> dict[str, str]:
    try:
        with open(f"{task}/status") as f:
            return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    except OSError:
        return {}


def _parked_with_signal(task: str) -> bool:
    """Is `task` asleep uninterruptibly (where FUSE parks a caller once a signal came) with a
    signal pending that it neither blocks nor ignores — one it expects to end the wait?"""
    data = _raw_status(task)
    return b"\nState:\tD" in data and _deliverable(data)


def _raw_status(task: str) -> bytes:
    try:
        with open(f"{task}/status", "rb") as f:
            return f.read()
    except OSError:
        return b""


# The four signal masks of a status file (consecutive lines: SigPnd, ShdPnd, SigBlk, SigIgn),
# without parsing its other fifty lines: with 10,000 parked processes read every slice, the
# full parse was two thirds of the probe's time (46 -> 20 us a process).
def _deliverable(data: bytes) -> bool:
    try:
        at = data.index(b"\nSigPnd:")
        m = dict(line.split(b":\t") for line in data[at + 1 :].split(b"\n", 4)[:4])
        pending = int(m[b"SigPnd"], 16) | int(m[b"ShdPnd"], 16)
        return bool(pending & ~int(m[b"SigBlk"], 16) & ~int(m[b"SigIgn"], 16))
    except (ValueError, KeyError):
        return False


def process_of(tid: int) -> int:
    """The process (thread group) of a task FUSE names (it names the thread), 0 if gone."""
    try:
        return int(_status(f"/proc/{tid}").get("Tgid", "0")) if tid > 0 else 0
    except ValueError:
        return 0


def _children(tgid: int) -> list[int]:
    try:
        with open(f"/proc/{tgid}/task/{tgid}/children") as f:
            return [int(c) for c in f.read().split()]
    except (OSError, ValueError):
        return []


def signalled_processes(tgids: Iterable[int]) -> set[int]:
    """Those of `tgids` (the processes that opened waiting files) with a signal pending for
    them or for a process they forked: a signal to a process (kill, Ctrl-C, timeout, SIGKILL)
    shows in /proc/<pid>/status as ShdPnd, so one read a process will do. A process given as 0
    (gone, or outside our pid namespace) counts if any task on the host sleeps in D with one."""
    found: set[int] = set()
    unknown = False
    for tgid in set(tgids):
        if tgid <= 0:
            unknown = True
            continue
        todo, seen = [tgid], 0
        while todo and seen < MAX_TASKS:
            pid = todo.pop()
            seen += 1
            if _deliverable(_raw_status(f"/proc/{pid}")):
                found.add(tgid)
                break
            todo.extend(_children(pid))
    if unknown and any(_parked_with_signal(t) for t in _all_tasks()):
        found.add(0)
    return found


def _lineage(tid: int, limit: int = 64) -> Iterator[str]:
    """The task `tid` and the main threads of the processes it forked, and theirs: cheap enough
    for a read's path (a process's other threads are not asked)."""
    todo = [f"/proc/{tid}/task/{tid}"]
    while todo and limit > 0:
        task = todo.pop()
        limit -= 1
        yield task
        try:
            with open(f"{task}/children") as f:
                todo.extend(f"/proc/{c}/task/{c}" for c in f.read().split())
        except OSError:
            pass


def splicing(pid: int) -> bool:
    """Is the task `pid` (or one it forked) in sendfile(), splice(), tee() or copy_file_range()?"""
    for task in _lineage(pid):
        try:
            with open(f"{task}/syscall") as f:
                call = f.read().split(maxsplit=1)[0]
        except (OSError, IndexError):
            continue
        if call.isdigit() and int(call) in _SPLICE_CALLS:
            return True
    return False


def owner_of(pid: int) -> tuple[int, int] | None:
    """(uid, gid) as /proc shows the task: its effective ids, root's if it is not dumpable —
    the owner /proc's ptrace rule protects. None once the task is gone."""
    try:
        st = os.stat(f"/proc/{pid}")
    except OSError:
        return None
    return st.st_uid, st.st_gid
