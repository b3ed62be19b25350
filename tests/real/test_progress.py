"""Progress on long work: FORMAT UNIT and WRITE SAME in the device's status and as a bar in a
terminal (tmux), quiet when not a terminal; a restore of many objects reported to `vfs mount`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, Mount, device, wait_for
from tests.terminal import VFS, Terminal

GiB = 1 << 30


def progress_of(mnt: Mount, name: str) -> str:
    line = next(
        x for x in mnt.p("devices", name, "status").read_text().splitlines() if x.startswith("progress ")
    )
    return line.split(" ", 1)[1]


def test_format_unit_draws_a_bar_on_a_terminal(mnt: Mount, tmp_path: Path, terminal: list[Terminal]) -> None:
    device(mnt, "f", f"file/{mnt.state_dir}/images/f.img", 4 * GiB)
    t = Terminal(f"vfs-progress-{os.getpid()}", ["bash", "--norc", "--noprofile"], tmp_path, size=(120, 10))
    terminal.append(t)
    t.type(f"{VFS} scsi {mnt.p('devices', 'f')} raw 04 00 00 00 00 00", "Enter")
    screen = t.wait_for("f: format", 20)
    assert "%" in screen
    assert progress_of(mnt, "f").startswith("format ")  # the same numbers, in status
    t.wait_for("status: GOOD", 120)
    assert "f: format" not in t.screen()  # the bar goes once it is done
    assert progress_of(mnt, "f") == "-"


def test_write_same_reports_progress_and_draws_nothing_off_a_terminal(mnt: Mount) -> None:
    device(mnt, "w", f"file/{mnt.state_dir}/images/w.img", 4 * GiB)
    blocks = 4 * GiB // 512
    cdb = (
        ["93", "00"]
        + [f"{b:02x}" for b in (0).to_bytes(8, "big")]
        + [f"{b:02x}" for b in blocks.to_bytes(4, "big")]
        + ["00", "00"]
    )
    run = subprocess.Popen(
        [VFS, "scsi", str(mnt.p("devices", "w")), "raw", *cdb, "--out", "ab" * 512],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    while run.poll() is None:
        state = progress_of(mnt, "w")
        if state != "-":
            seen.append(state)
        time.sleep(0.05)
    out, err = run.communicate()
    assert run.returncode == 0 and "GOOD" in out, out + err
    assert err == ""  # no bar, no escape codes where nobody watches
    assert seen and all(s.startswith("writesame ") and s.endswith(f"/{blocks}") for s in seen)
    done = [int(s.split()[1].split("/")[0]) for s in seen]
    assert done == sorted(done) and done[-1] > done[0]  # it moved forward
    assert progress_of(mnt, "w") == "-"


def test_a_restore_of_many_objects_reports_its_progress(tmp_path: Path, mounts: list[Mount]) -> None:
    m = Mount(tmp_path)
    mounts.append(m.start())
    assert m.sh("for i in $(seq 1 450); do mkdir devices/d$i || exit 1; done").returncode == 0
    m.stop()
    read_end, write_end = os.pipe()
    again = Mount(tmp_path, state_dir=m.state_dir)
    mounts.append(again)
    again.proc = subprocess.Popen(
        [*again.argv(), "--ready-fd", str(write_end)],
        cwd=REPO,
        pass_fds=(write_end,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        lines = []
        while (line := ready.readline()) and line != b"ready\n":
            lines.append(line.decode().split())
    assert line == b"ready\n"
    assert lines[0] == ["progress", "devices", "0", "450"] and lines[-1] == [
        "progress",
        "devices",
        "450",
        "450",
    ]
    assert len(os.listdir(again.p("devices"))) == 450
    quiet = subprocess.run(  # `vfs mount` off a terminal prints its one line, no bar
        [sys.executable, "-m", "vfs", "umount", str(again.path)], capture_output=True, text=True, cwd=REPO
    )
    assert quiet.returncode == 0
    wait_for(lambda: again.proc is not None and again.proc.poll() is not None, 30)
    r = subprocess.run(
        [sys.executable, "-m", "vfs", "mount", str(again.path), "--state-dir", str(m.state_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    try:
        assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("vfs: mounted"), (
            r.stdout + r.stderr
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "vfs", "umount", str(again.path)], capture_output=True, cwd=REPO
        )
