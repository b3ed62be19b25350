"""storage/ and worlds/ through a real mount, with real processes as worlds (docs/storage.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.conftest import Mount, wait_for

S = "storage/s"


def make_slot(mnt: Mount, name: str = "s", **attrs: str) -> None:
    assert mnt.sh(f"mkdir storage/{name}").returncode == 0
    for key, value in attrs.items():
        r = mnt.sh(f"echo '{value}' > storage/{name}/{key}")
        assert r.returncode == 0, (key, r.stderr)
    assert mnt.sh(f"echo 1 > storage/{name}/enable").returncode == 0


def worker(mnt: Mount, text: str, slot: str = "s") -> subprocess.Popen[bytes]:
    """A world that writes its block, then sleeps (exec keeps its pid)."""
    proc = subprocess.Popen(
        ["bash", "-c", f"echo {text} > storage/{slot}/self && exec sleep 60"], cwd=mnt.path
    )
    wait_for(
        lambda: (
            mnt.p("worlds", str(proc.pid)).exists()
            and mnt.p("worlds", str(proc.pid), slot).read_bytes().startswith(text.encode())
        )
    )
    return proc


def test_two_shells_each_see_only_their_own_block(mnt: Mount) -> None:
    make_slot(mnt)
    script = f'echo mine-$$ > {S}/self; sleep 0.3; read -r v < {S}/self; echo "$$ $v"'
    procs = [
        subprocess.Popen(["bash", "-c", script], cwd=mnt.path, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=10)[0].split() for p in procs]
    for pid, value in outs:
        assert value == f"mine-{pid}"
    assert outs[0][0] != outs[1][0]


def test_monitor_reads_a_sleeping_worker_and_death_cleans_up(mnt: Mount) -> None:
    make_slot(mnt)
    w = worker(mnt, "busy-step-3")
    pid = str(w.pid)
    r = mnt.sh(f"head -c 12 worlds/{pid}/s; echo; cat worlds/{pid}/status; cat {S}/worlds")
    lines = r.stdout.splitlines()
    assert lines[0] == "busy-step-3"
    assert f"pid {pid}" in lines and "comm sleep" in lines and "state alive" in lines and "blocks 1" in lines
    assert pid in lines
    assert os.stat(mnt.p("worlds", pid, "s")).st_size == 4096
    assert os.readlink(mnt.p("worlds/self")) == str(os.getpid())
    w.send_signal(signal.SIGKILL)
    w.wait()
    took = wait_for(lambda: not mnt.p("worlds", pid).exists(), timeout=1.0)
    assert took < 1.0
    assert pid not in mnt.p(S, "worlds").read_text().split()
    assert "No such file" in mnt.sh(f"cat worlds/{pid}/s").stderr


def test_reference_taken_before_death_still_reads(mnt: Mount) -> None:
    make_slot(mnt, on_exit="event")
    events = subprocess.Popen(
        ["cat", str(mnt.p("mgmt/worldstorage/events"))], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: len(os.listdir(mnt.p("mgmt/worldstorage/sessions"))) == 1)
        w = worker(mnt, "final-words")
        fd = os.open(mnt.p("worlds", str(w.pid), "s"), os.O_RDONLY)
        try:
            assert "references 1" in mnt.p("worlds", str(w.pid), "status").read_text()
            r = mnt.sh("rmdir storage/s")  # another world holds a block open
            assert "Device or resource busy" in r.stderr
            assert f"world(s) {w.pid} are held open" in mnt.p("storage/s/last_error").read_text()
            w.kill()
            w.wait()
            wait_for(lambda: not mnt.p("worlds", str(w.pid)).exists())
            assert os.pread(fd, 11, 0) == b"final-words"  # the block lives while referenced
        finally:
            os.close(fd)
        assert events.stdout is not None
        event = json.loads(events.stdout.readline())
        assert event["callback"] == "destroyed" and event["params"][:3] == [w.pid, "s", "world exited"]
        assert bytes.fromhex(event["params"][3]).startswith(b"final-words\n")
        assert len(bytes.fromhex(event["params"][3])) == 4096
        assert event["instance"] == int(os.listdir(mnt.p("mgmt/worldstorage/instances"))[0])
        assert mnt.sh("rmdir storage/s").returncode == 0  # nothing held now
        assert not mnt.p(S).exists()
    finally:
        events.kill()
        events.wait()


def test_pattern_and_template_seen_by_a_new_world(mnt: Mount) -> None:
    make_slot(mnt, "p", size="8", init="pattern:c0ffee")
    assert mnt.sh("od -An -tx1 storage/p/self").stdout.split() == [
        "c0",
        "ff",
        "ee",
        "c0",
        "ff",
        "ee",
        "c0",
        "ff",
    ]
    mnt.sh(
        "mkdir storage/t && echo template > storage/t/init && printf 'TPL\\x01' > storage/t/template && "
        "echo 6 > storage/t/size && echo 1 > storage/t/enable"
    )
    assert mnt.p("storage/t/self").read_bytes() == b"TPL\x01\0\0"
    assert mnt.p("storage/t/template").read_bytes() == b"TPL\x01"
    assert mnt.p("storage/t/init").read_text() == "template\n"
    mnt.sh("mkdir storage/n && echo template > storage/n/init")
    r = mnt.sh("echo 1 > storage/n/enable")
    assert "Invalid argument" in r.stderr and "needs a template" in mnt.p("storage/n/last_error").read_text()


def test_size_and_alignment_enforced(mnt: Mount) -> None:
    mnt.sh("mkdir storage/z")
    for attr, value, err in [
        ("size", "0", "Invalid"),
        ("size", "16777217", "Invalid"),
        ("size", "big", "Invalid"),
        ("align", "3", "Invalid"),
        ("align", "8192", "Invalid"),
        ("init", "pattern:zz", "Invalid"),
        ("on_exit", "keep", "Invalid"),
    ]:
        r = mnt.sh(f"echo {value} > storage/z/{attr}")
        assert err in r.stderr, (attr, value)
    assert (
        mnt.sh(
            "echo 16 > storage/z/size && echo 4096 > storage/z/align && echo 1 > storage/z/enable"
        ).returncode
        == 0
    )
    r = mnt.sh("bash -c 'printf 0123456789abcdef > storage/z/self; head -c 100 storage/z/self | wc -c'")
    assert r.stdout.strip() == "16"
    r = mnt.sh("printf x | dd of=storage/z/self bs=1 seek=16 conv=notrunc")
    assert "No space left" in r.stderr
    r = mnt.sh("echo 32 > storage/z/size")
    assert (
        "Device or resource busy" in r.stderr and "before enable" in mnt.p("storage/z/last_error").read_text()
    )
    status = mnt.p("storage/z/status").read_text()
    assert "size 16" in status and "align 4096" in status and "enabled 1" in status


def test_definitions_restored_after_remount(mnt: Mount) -> None:
    make_slot(mnt, "keep", size="128", align="64", init="pattern:ab", on_exit="event")
    mnt.sh("mkdir storage/staged && echo 32 > storage/staged/size")
    mnt.stop()
    mnt.start()
    assert sorted(os.listdir(mnt.p("storage"))) == ["keep", "staged"]
    r = mnt.sh(
        "cat storage/keep/size storage/keep/align storage/keep/init storage/keep/on_exit storage/keep/enable "
        "storage/staged/size storage/staged/enable"
    )
    assert r.stdout.split() == ["128", "64", "pattern:ab", "event", "1", "32", "0"]
    assert mnt.p("storage/keep/self").read_bytes() == b"\xab" * 128
    assert mnt.sh("rmdir storage/keep storage/staged").returncode == 0
    mnt.stop()
    mnt.start()
    assert os.listdir(mnt.p("storage")) == []


def test_many_worlds_come_and_go(mnt: Mount) -> None:
    make_slot(mnt, size="64")
    procs = [
        subprocess.Popen(["bash", "-c", f"echo w{i} > {S}/self && exec sleep 60"], cwd=mnt.path)
        for i in range(150)
    ]
    try:
        wait_for(lambda: len(mnt.p(S, "worlds").read_text().split()) == 150, timeout=30)
        assert all(
            mnt.p("worlds", str(p.pid), "s").read_bytes().startswith(f"w{i}\n".encode())
            for i, p in enumerate(procs)
        )
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
    wait_for(lambda: mnt.p(S, "worlds").read_text() == "\n", timeout=5)
    assert [n for n in os.listdir(mnt.p("worlds")) if n != "self"] == []
