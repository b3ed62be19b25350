"""The persistence module: crash-safe saves (temp, fsync, rename, fsync dir) and restore."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vfs.persist import Store

KILL_BETWEEN_WRITE_AND_RENAME = """
import os, signal, sys
from pathlib import Path
from vfs.persist import Store
store = Store(Path(sys.argv[1]))
store.write_temp("devices", "d0", {"size": 2})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_save_load_delete(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save("devices", "d0", {"size": 1, "config": "ram/"})
    store.save("devices", "d1", {"size": 2})
    store.save("devices", "d0", {"size": 3, "config": "ram/"})
    assert store.load_all("devices") == {"d0": {"size": 3, "config": "ram/"}, "d1": {"size": 2}}
    store.delete("devices", "d1")
    store.delete("devices", "never-saved")
    assert store.load_all("devices") == {"d0": {"size": 3, "config": "ram/"}}
    assert store.load_all("channels") == {}


def test_kill_between_write_and_rename_keeps_the_old_definition(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save("devices", "d0", {"size": 1})
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_WRITE_AND_RENAME, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p.name for p in (tmp_path / "devices").iterdir()]
    assert any(n.endswith(".tmp") for n in leftovers)  # the kill really hit between the two steps
    assert Store(tmp_path).load_all("devices") == {"d0": {"size": 1}}
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "devices").iterdir())


def test_unreadable_definition_is_skipped_not_fatal(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.save("slots", "good", {"size": 8})
    (tmp_path / "slots" / "torn.json").write_bytes(b'{"size": ')
    assert store.load_all("slots") == {"good": {"size": 8}}
    assert os.path.exists(tmp_path / "slots" / "torn.json")  # kept for a person to inspect
