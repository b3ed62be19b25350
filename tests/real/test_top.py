"""`vfs top` as a user sees it: run in a real terminal (tmux) beside real I/O, its screen
captured; the device's write rate shows, and `q` gives the shell back."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import Mount, device, wait_for
from tests.terminal import VFS, Terminal


def test_top_shows_live_rates_and_quits_on_q(mnt: Mount, tmp_path: Path, terminal: list[Terminal]) -> None:
    data = device(mnt, "d0", "ram/", 64 << 20)
    load = subprocess.Popen(
        [
            "bash",
            "-c",
            f"while :; do dd if=/dev/zero of={data} bs=4k count=256 conv=notrunc status=none; done",
        ]
    )
    try:
        t = Terminal(f"vfs-top-{os.getpid()}", ["bash", "--norc", "--noprofile"], tmp_path, size=(160, 45))
        terminal.append(t)
        t.type(f"{VFS} top {mnt.path} --interval 0.5", "Enter")
        t.wait_for("storage slots")
        screen = t.wait_for("management sessions")
        assert f"vfs at {mnt.path}" in screen

        def write_iops() -> int:
            row = next(line for line in t.screen().splitlines() if re.search(r"\bd0\b", line))
            cells = [c.strip() for c in row.split("│") if c.strip()]
            return int(cells[3])  # device, state, read IOPS, write IOPS, ...

        wait_for(lambda: write_iops() > 0, 10)  # from the second frame on: a rate over 0.5 s
        assert "enabled" in t.screen()
        t.type("q")
        wait_for(lambda: t.running() == "bash", 10)  # vfs top has exited
        last = [line for line in t.screen().splitlines() if line.strip()][-1]
        assert re.fullmatch(r"\S*[#$]\s*", last), last  # and the prompt is back, the screen restored
    finally:
        load.kill()
        load.wait()


def test_top_once_prints_one_frame(mnt: Mount) -> None:
    device(mnt, "d0", "ram/", 1 << 20)
    r = subprocess.run(
        [VFS, "top", str(mnt.path), "--once", "--interval", "0.2"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "devices" in r.stdout and "d0" in r.stdout and "management sessions" in r.stdout
