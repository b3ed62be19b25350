"""mgmt/ through a real mount: keys, events, sessions, call, overrides, keyval, persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from tests.conftest import REPO, Mount, run, wait_for

EX = "mgmt/example"
HANDLES = ["example", "tcmu", "v2v", "vfs", "worldstorage"]  # the built-in modules' handles


def test_tree_shape(mnt: Mount) -> None:
    assert sorted(os.listdir(mnt.p("mgmt"))) == HANDLES
    assert sorted(os.listdir(mnt.p(EX))) == [
        "call",
        "events",
        "instances",
        "keys",
        "last_error",
        "name",
        "sessions",
        "signature",
        "status",
        "vendor",
        "version",
    ]
    r = mnt.sh(
        f"cat {EX}/name {EX}/vendor {EX}/version; cat {EX}/signature; ls {EX}/instances; cat {EX}/instances/2/name {EX}/instances/2/callbacks"
    )
    assert r.stdout.splitlines() == [
        "example",
        "vfs",
        "1.0.0.0",
        "16 notify user async message=IN:str:256 count=IN:int:8",
        "17 add kernel sync a=IN:int:8 b=IN:int:8 sum=OUT:int:8 note=OUT:str:64",
        "1",
        "2",
        "second",
        "17",
    ]
    r = mnt.sh(f"stat -c '%a %n' {EX}/keys/counter {EX}/keys/sessions {EX}/events {EX}/call {EX}/signature")
    assert r.stdout.split() == [
        "644",
        f"{EX}/keys/counter",
        "444",
        f"{EX}/keys/sessions",
        "400",  # what flows through events and call is the owner's (docs/operations.md)
        f"{EX}/events",
        "600",
        f"{EX}/call",
        "444",
        f"{EX}/signature",
    ]
    assert "not permitted" in mnt.sh("mkdir mgmt/new").stderr


def test_long_keys(mnt: Mount) -> None:
    r = mnt.sh(
        f"cat {EX}/keys/counter; echo 42 > {EX}/keys/counter; cat {EX}/keys/counter; "
        f"echo -n 0x7fffffffffffffff > {EX}/keys/counter; cat {EX}/keys/counter; echo -5 > {EX}/keys/counter; cat {EX}/keys/counter"
    )
    assert r.stdout.split() == ["0", "42", str(2**63 - 1), "-5"], r.stderr
    for bad in ("12abc", "0x", "1.5", "9223372036854775808", "' 7'", "''"):
        r = mnt.sh(f"echo {bad} > {EX}/keys/counter")
        assert "Invalid argument" in r.stderr, bad
        assert "LONG key" in mnt.p(EX, "last_error").read_text()
    assert mnt.p(EX, "keys/counter").read_text() == "-5\n"


def test_string_keys_and_limit(mnt: Mount) -> None:
    r = mnt.sh(f"echo 'two words' > {EX}/keys/message; cat {EX}/keys/message")
    assert r.stdout == "two words\n"
    r = mnt.sh(
        f"printf '%s' \"$(head -c 4095 /dev/zero | tr '\\0' a)\" > {EX}/keys/message && wc -c < {EX}/keys/message"
    )
    assert r.stdout.strip() == "4096"  # 4095 bytes and the newline
    r = mnt.sh(f"printf '%s' \"$(head -c 5000 /dev/zero | tr '\\0' b)\" > {EX}/keys/message")
    assert "File too large" in r.stderr
    assert "at most 4095" in mnt.p(EX, "last_error").read_text()
    assert mnt.p(EX, "keys/message").read_text() == "a" * 4095 + "\n"
    assert "Permission denied" in mnt.sh(f"echo 3 > {EX}/keys/sessions").stderr


def test_events_from_key_writes_in_another_process(mnt: Mount) -> None:
    pipeline = subprocess.Popen(
        ["bash", "-c", f"cat {EX}/events | head -n 3"], cwd=mnt.path, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: len(os.listdir(mnt.p(EX, "sessions"))) == 1)
        assert mnt.sh(f"for m in one two three; do echo $m > {EX}/keys/message; done").returncode == 0
        assert pipeline.stdout is not None
        events = [json.loads(pipeline.stdout.readline()) for _ in range(3)]
        assert [e["params"] for e in events] == [["one", 3], ["two", 3], ["three", 5]]
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert all(
            e["event"] == "callback" and e["callback"] == "notify" and e["id"] == 16 and e["instance"] == 1
            for e in events
        )
        # head has left; cat learns it at its next write (SIGPIPE), as with any pipe
        mnt.p(EX, "keys/message").write_text("one more\n")
        assert pipeline.wait(10) == 0
        wait_for(lambda: os.listdir(mnt.p(EX, "sessions")) == [])
    finally:
        pipeline.kill()
        pipeline.wait()
    r = mnt.sh(
        f"(sleep 0.5; echo jq > {EX}/keys/message; sleep 0.5; echo x > {EX}/keys/message) & "
        f"timeout 10 cat {EX}/events | jq -r --unbuffered '.params[0]' | head -n 1"
    )
    assert r.stdout == "jq\n", r.stderr


def test_sessions_listed_and_dropped_when_reader_killed(mnt: Mount) -> None:
    readers = [
        subprocess.Popen(["cat", str(mnt.p(EX, "events"))], stdout=subprocess.DEVNULL) for _ in range(2)
    ]
    try:
        wait_for(lambda: len(os.listdir(mnt.p(EX, "sessions"))) == 2)
        assert mnt.p(EX, "keys/sessions").read_text() == "2\n"  # the announce hook ran twice
        sids = sorted(os.listdir(mnt.p(EX, "sessions")))
        pids = {mnt.p(EX, "sessions", s, "status").read_text().split("\n")[0] for s in sids}
        assert pids == {f"pid {p.pid}" for p in readers}
        status = mnt.p(EX, "sessions", sids[0], "status").read_text()
        assert "queued 0" in status and "dropped 0" in status and "kind events" in status
        readers[0].send_signal(signal.SIGKILL)
        readers[0].wait(5)
        wait_for(lambda: len(os.listdir(mnt.p(EX, "sessions"))) == 1)
        assert mnt.p(EX, "keys/sessions").read_text() == "1\n"  # the cleanup hook ran
    finally:
        for r in readers:
            r.kill()
            r.wait(5)
    wait_for(lambda: os.listdir(mnt.p(EX, "sessions")) == [])


def test_broadcast_reaches_three_sessions(mnt: Mount) -> None:
    fds = [os.open(mnt.p(EX, "events"), os.O_RDONLY) for _ in range(3)]
    try:
        mnt.p(EX, "keys/message").write_text("to all\n")
        lines = [json.loads(os.read(fd, 4096)) for fd in fds]
        assert all(line["params"] == ["to all", 6] for line in lines)
    finally:
        for fd in fds:
            os.close(fd)


def test_call_round_trip_from_bash(mnt: Mount) -> None:
    r = mnt.sh(
        f"exec 3<>{EX}/call; echo 'add 40 2' >&3; cat <&3; echo 'add instance=2 40 2' >&3; cat <&3; "
        f"echo 'add instance=1 1 1' >&3; cat <&3"
    )
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert results[0]["status"] == "OK" and results[0]["params"][0] == 42 and results[0]["instance"] == 0
    assert results[0]["params"][1].startswith("added by session")
    assert results[1]["params"] == [42, "checked by instance 2"]  # the override, not the default
    assert results[2]["params"][1].startswith("added by session")  # instance 1 has no override
    r = mnt.sh(f"exec 3<>{EX}/call; echo 'add instance=2 -1 2' >&3; cat <&3")
    result = json.loads(r.stdout)
    assert result["status"] == "BAD_PARAM" and "non-negative" in result["reason"]


def test_call_refusals_have_reasons(mnt: Mount) -> None:
    r = mnt.sh(
        f"exec 3<>{EX}/call; echo 'nosuch 1' >&3; cat <&3; echo 'add instance=9 1 2' >&3; cat <&3; "
        f"echo 'add 1' >&3; cat <&3"
    )
    assert r.stdout.splitlines() == [
        "'nosuch' is not a kernel callback of example (kernel callbacks: add)",
        "no instance 9 on example",
        "add takes 2 input parameters (a=IN:int:8 b=IN:int:8), got 1",
    ]
    assert r.stderr.count("Invalid argument") == 2 and "No such file" in r.stderr


def test_call_from_python_with_json(mnt: Mount) -> None:
    fd = os.open(mnt.p(EX, "call"), os.O_RDWR)
    try:
        os.write(fd, json.dumps({"callback": "add", "instance": 2, "params": [5, 6]}).encode())
        result = json.loads(os.read(fd, 4096))
        assert result == {
            "status": "OK",
            "callback": "add",
            "id": 17,
            "instance": 2,
            "params": [11, "checked by instance 2"],
        }
        os.write(fd, b"17 7 8")
        assert json.loads(os.read(fd, 4096))["params"][0] == 15
    finally:
        os.close(fd)


def test_vfs_log_level_is_live(mnt: Mount) -> None:
    assert mnt.p("mgmt/vfs/keys/logLevel").read_text() == "debug\n"
    mnt.p("mgmt/vfs/keys/logLevel").write_text("warning\n")
    before = len(mnt.log_text())
    mnt.sh("echo bad > test/value")  # logged at info when refused
    assert "refused" not in mnt.log_text()[before:]
    assert "Invalid argument" in mnt.sh("echo loud > mgmt/vfs/keys/logLevel").stderr
    assert "logLevel is one of" in mnt.p("mgmt/vfs/last_error").read_text()


def keyval(mnt: Mount, *args: str) -> subprocess.CompletedProcess[str]:
    return run(f"{sys.executable} -m vfs keyval -m {mnt.path} " + " ".join(args), cwd=REPO)


def test_keyval_every_flag(mnt: Mount) -> None:
    r = keyval(mnt, "-d")
    assert r.stdout.splitlines() == ["Key Value Instances:"] + [
        f"Key Value Instance: {h}/vfs" for h in HANDLES
    ]
    assert [line[20:] for line in r.stdout.splitlines()[1:]] == [
        f"{h}/vfs" for h in HANDLES
    ]  # the 20-char prefix
    assert keyval(mnt, "-s", "7", "-i", "example", "-k", "counter").returncode == 0
    r = keyval(mnt, "-g", "-i", "example/vfs", "-k", "counter")
    assert r.stdout == "Key 'counter': 7\n"
    r = keyval(mnt, "-l", "-i", "example")
    assert r.stdout.startswith(
        "Listing keys:\nName:   counter\nType:   LONG\nvalue:  7\n\nName:   message\nType:   STRING\n"
    )
    import re

    assert re.findall(r"Name:(.+?)Type:(.+?)value:", r.stdout, re.DOTALL)[0] == ("   counter\n", "   LONG\n")
    r = keyval(mnt, "-a")
    assert "Key Value Instance: example/vfs\nListing keys:\n" in r.stdout and "Name:   logLevel" in r.stdout
    r = keyval(mnt, "-s", "x7", "-i", "example", "-k", "counter")
    assert r.returncode == 1 and "not a decimal or 0x-hex integer" in r.stderr
    r = keyval(mnt, "-g", "-i", "nosuch", "-k", "x")
    assert r.returncode == 1 and "no instance" in r.stderr
    r = keyval(mnt, "-g", "-i", "example/other", "-k", "counter")
    assert r.returncode == 1 and "vendor" in r.stderr
    assert json.loads(keyval(mnt, "-g", "-i", "example", "-k", "counter", "--json").stdout)["value"] == "7"
    dump = json.loads(keyval(mnt, "-a", "--json").stdout)
    assert {d["instance"] for d in dump} == {f"{h}/vfs" for h in HANDLES}
    assert json.loads(keyval(mnt, "-d", "--json").stdout)[0]["version"] == "1.0.0.0"
    assert {
        k["name"]: k["type"] for k in json.loads(keyval(mnt, "-l", "-i", "vfs", "--json").stdout)["keys"]
    } == {"logLevel": "STRING", "stateDir": "STRING", "uptime": "LONG"}


def test_persistent_key_survives_remount(mnt: Mount) -> None:
    mnt.p(EX, "keys/message").write_text("keep me\n")
    mnt.p(EX, "keys/counter").write_text("9\n")  # not persistent
    mnt.stop()
    mnt.start()
    assert mnt.p(EX, "keys/message").read_text() == "keep me\n"
    assert mnt.p(EX, "keys/counter").read_text() == "0\n"


def test_handles_that_come_and_go_are_never_stale(mnt: Mount) -> None:
    assert mnt.sh("stat mgmt/scratch").returncode != 0
    mnt.p("test/handle_up").write_text("1\n")
    assert mnt.sh("cat mgmt/scratch/version").stdout == "1.0.0.0\n"
    mnt.p("test/handle_down").write_text("x\n")
    r = mnt.sh("stat mgmt/scratch; cat mgmt/scratch/version; ls mgmt")
    assert r.stderr.count("No such file") == 2 and "scratch" not in r.stdout
    mnt.p("test/handle_up").write_text("2\n")  # the same name again: the new object, not the old one
    assert mnt.sh("cat mgmt/scratch/version").stdout == "2.0.0.0\n"
