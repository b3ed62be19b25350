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


def _tasks(pid: int) -> Iterator[str]:
    """The /proc/<pid>/task/<tid> directories of `pid` and of its descendants."""
    todo, seen = [pid], 0
    while todo and seen < MAX_TASKS:
        base = f"/proc/{todo.pop()}/task"
        try:
            tids = os.listdir(base)
        except OSError:
            continue
        for tid in tids:
            seen += 1
            task = f"{base}/{tid}"
            yield task
            try:
                with open(f"{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                pass


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


def signalled(task: str) -> bool:
    """Is `task` asleep uninterruptibly (where FUSE parks a caller once a signal came) with a
    signal pending that it neither blocks nor ignores — one it expects to end the wait?"""
    s = _status(task)
    if not s.get("State", "").startswith("D"):
        return False
    try:
        pending = int(s["SigPnd"], 16) | int(s["ShdPnd"], 16)
        return bool(pending & ~int(s["SigBlk"], 16) & ~int(s["SigIgn"], 16))
    except (KeyError, ValueError):
        return False


def interrupted(pids: Iterable[int]) -> set[int]:
    """Those of `pids` (openers of waiting files) whose tree has a signalled task. An opener
    that is gone or unknown (0: outside our pid namespace) counts if any task on the host is."""
    found: set[int] = set()
    orphans: list[int] = []
    for pid in pids:
        if pid <= 0 or not os.path.exists(f"/proc/{pid}"):
            orphans.append(pid)
        elif any(signalled(t) for t in _tasks(pid)):
            found.add(pid)
    if orphans and any(signalled(t) for t in _all_tasks()):
        found.update(orphans)
    return found


def splicing(pid: int) -> bool:
    """Is a task of `pid`'s tree in sendfile(), splice(), tee() or copy_file_range()?"""
    for task in _tasks(pid):
        try:
            with open(f"{task}/syscall") as f:
                call = f.read().split(maxsplit=1)[0]
        except (OSError, IndexError):
            continue
        if call.isdigit() and int(call) in _SPLICE_CALLS:
            return True
    return False
