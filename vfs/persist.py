"""Crash-safe persistence of object definitions under the state dir.

One JSON file per object: `<state>/<kind>/<name>.json`, written as temp file, fsync, rename,
fsync of the directory — so after a crash at any point either the old or the new definition
is there, never a torn one. Leftover temp files are ignored and cleaned at load.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("vfs.persist")

TMP_SUFFIX = ".tmp"


class StateDirBusyError(Exception):
    """Another daemon serves this state dir (and so its enabled devices and their images)."""


def _flock_state_dir(state_dir: Path) -> int:
    fd = os.open(Path(state_dir) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StateDirBusyError(
            f"state dir {state_dir} is in use by {holder}; give this mount its own --state-dir"
        ) from None
    return fd


def lock_state_dir(state_dir: Path, mountpoint: str) -> int:
    """Hold `<state>/lock` for as long as the returned fd is open (the kernel drops it with the
    process), naming this daemon in it; StateDirBusyError names the holder. Two daemons on one
    state dir would serve the same images twice."""
    fd = _flock_state_dir(state_dir)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"the daemon pid {os.getpid()} serving {mountpoint}\n".encode(), 0)
    return fd


def check_state_dir(state_dir: Path) -> None:
    """StateDirBusyError if a daemon holds the state dir (the holder's name is left as it is)."""
    os.close(_flock_state_dir(state_dir))


class Store:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)

    def _dir(self, kind: str) -> Path:
        d = self.root / kind
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_temp(self, kind: str, name: str, data: Any) -> Path:
        """First half of a save: the new contents, durable, beside the live file."""
        tmp = self._dir(kind) / f".{name}.json{TMP_SUFFIX}"
        payload = json.dumps(data, sort_keys=True, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def commit(self, tmp: Path, kind: str, name: str) -> None:
        """Second half: atomically replace the live file, then make the rename durable."""
        d = self._dir(kind)
        os.replace(tmp, d / f"{name}.json")
        _fsync_dir(d)

    def save(self, kind: str, name: str, data: Any) -> None:
        self.commit(self.write_temp(kind, name, data), kind, name)

    def delete(self, kind: str, name: str) -> None:
        d = self._dir(kind)
        try:
            os.unlink(d / f"{name}.json")
        except FileNotFoundError:
            return
        _fsync_dir(d)

    def load_all(self, kind: str) -> dict[str, Any]:
        """Every saved definition of `kind`; unreadable files are logged and skipped."""
        d = self.root / kind
        if not d.is_dir():
            return {}
        out: dict[str, Any] = {}
        for path in sorted(d.iterdir()):
            if path.name.endswith(TMP_SUFFIX):
                path.unlink(missing_ok=True)  # an interrupted save; the live file still stands
                continue
            if path.suffix != ".json":
                continue
            try:
                out[path.stem] = json.loads(path.read_bytes())
            except (OSError, ValueError) as e:
                log.error("skipping unreadable saved definition %s: %s", path, e)
        return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
