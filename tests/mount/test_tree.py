"""The file semantics of README's 'How every file behaves' through a real mount and real programs (the test-only tree)."""

from __future__ import annotations

import errno
import os
import select
import threading
import time

from tests.conftest import Mount


def test_attribute_read_write_with_and_without_newline(mnt: Mount) -> None:
    r = mnt.sh(
        "cat test/value; echo new > test/value; cat test/value; echo -n bare > test/value; cat test/value"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "initial\nnew\nbare\n"
    # exactly one trailing newline, whatever the setter got
    assert mnt.p("test/value").read_bytes() == b"bare\n"


def test_several_reads_of_one_open_agree(mnt: Mount) -> None:
    fd = os.open(mnt.p("test/value"), os.O_RDONLY)
    try:
        first = os.read(fd, 3)
        (mnt.p("test/value")).write_text("changed meanwhile\n")
        rest = os.read(fd, 100)
    finally:
        os.close(fd)
    assert first + rest == b"initial\n"


def test_bad_value_is_einval_with_reason(mnt: Mount) -> None:
    r = mnt.sh("echo bad > test/value")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert mnt.p("test/last_error").read_text() == "'bad' is not an acceptable value\n"
    assert mnt.p("test/value").read_text() == "initial\n"  # nothing lost
    r = mnt.sh("echo 0x1f > test/number && cat test/number; echo twelve > test/number")
    assert r.stdout == "31\n" and "Invalid argument" in r.stderr


def test_embedded_nul_is_einval(mnt: Mount) -> None:
    r = mnt.sh(r"printf 'a\0b' > test/value")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert "NUL" in mnt.p("test/last_error").read_text()
    assert mnt.p("test/value").read_text() == "initial\n"


def test_write_at_nonzero_offset_is_einval(mnt: Mount) -> None:
    r = mnt.sh("echo 5 | dd of=test/number bs=1 seek=1 conv=notrunc")
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    assert "offset 0" in mnt.p("test/last_error").read_text()
    assert mnt.p("test/number").read_text() == "7\n"


def test_no_short_writes_on_values(mnt: Mount) -> None:
    fd = os.open(mnt.p("test/value"), os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, b"x" * 10000) == 10000
    finally:
        os.close(fd)
    assert mnt.p("test/value").read_text() == "x" * 10000 + "\n"


def test_stray_files_links_and_renames_are_refused(mnt: Mount) -> None:
    r = mnt.sh("touch test/newfile")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = mnt.sh("echo 1 > test/typo")
    assert r.returncode != 0 and "Permission denied" in r.stderr
    for cmd in (
        "mv test/value test/value2",
        "ln test/value test/hard",
        "ln -s value test/soft",
        "mv test/value test/empty/",
        "rm test/value",
    ):
        r = mnt.sh(cmd)
        assert r.returncode != 0, cmd
        assert any(w in r.stderr for w in ("not permitted", "Permission denied", "cross-device")), (
            cmd,
            r.stderr,
        )
    assert sorted(os.listdir(mnt.p("test/empty"))) == []
    assert not mnt.p("test/newfile").exists() and mnt.p("test/value").exists()


def test_modes(mnt: Mount) -> None:
    r = mnt.sh(
        "stat -c '%a %n' test/value test/ro test/action test/status test/last_error test/objects version"
    )
    assert r.stdout.split("\n")[:7] == [
        "644 test/value",
        "444 test/ro",
        "200 test/action",
        "444 test/status",
        "444 test/last_error",
        "755 test/objects",
        "444 version",
    ]
    # root passes default_permissions, so the daemon enforces the modes itself
    assert "Permission denied" in mnt.sh("echo x > test/ro").stderr
    assert "Permission denied" in mnt.sh("cat test/action").stderr
    assert mnt.sh("echo go > test/action").returncode == 0
    assert "actions 1" in mnt.p("test/status").read_text()


def test_mkdir_rmdir_objects(mnt: Mount) -> None:
    r = mnt.sh(
        "mkdir test/objects/o1 && ls test/objects/o1 && echo v > test/objects/o1/value && "
        "cat test/objects/o1/status && rmdir test/objects/o1 && ls test/objects"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "last_error\nstatus\nvalue\nname o1\nvalue v\n"
    assert "File exists" in mnt.sh("mkdir test/objects/a && mkdir test/objects/a").stderr
    assert "Invalid argument" in mnt.sh("mkdir test/objects/.hidden").stderr
    assert "Invalid argument" in mnt.sh("mkdir 'test/objects/sp ace'").stderr
    assert "too long" in mnt.sh(f"mkdir test/objects/{'a' * 32}").stderr
    assert mnt.sh(f"mkdir test/objects/{'a' * 31}").returncode == 0
    assert "not permitted" in mnt.sh("mkdir test/empty/x").stderr
    assert "No such file" in mnt.sh("rmdir test/objects/nothere").stderr


def test_out_of_band_changes_are_visible_at_once(mnt: Mount) -> None:
    assert mnt.sh("ls test/objects/ghost").returncode != 0  # a negative lookup first
    mnt.p("test/spawn").write_text("ghost")
    r = mnt.sh("ls test/objects && cat test/objects/ghost/value")
    assert r.stdout == "ghost\nspawned\n", r.stderr
    mnt.p("test/vanish").write_text("ghost")
    r = mnt.sh("stat test/objects/ghost; ls test/objects")
    assert "No such file" in r.stderr and r.stdout == ""


def test_large_listing_is_complete(mnt: Mount) -> None:
    names = [f"o{i:04d}" for i in range(1500)]
    mnt.p("test/spawn").write_text(" ".join(names))
    assert sorted(os.listdir(mnt.p("test/objects"))) == names
    r = mnt.sh("ls -l test/objects | tail -n +2 | wc -l")
    assert r.stdout.strip() == "1500"


def test_blocking_read_is_interruptible(mnt: Mount) -> None:
    t0 = time.monotonic()
    r = mnt.sh("timeout 2 cat test/events")
    elapsed = time.monotonic() - t0
    assert r.returncode == 124  # killed by timeout, not stuck in D state
    assert 1.9 <= elapsed < 3.5


def test_poll_wakes_on_event_and_nonblock_gives_eagain(mnt: Mount) -> None:
    fd = os.open(mnt.p("test/events"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        try:
            os.read(fd, 100)
            raise AssertionError("expected EAGAIN")
        except BlockingIOError as e:
            assert e.errno == errno.EAGAIN
        p = select.poll()
        p.register(fd, select.POLLIN)
        assert p.poll(200) == []
        threading.Timer(0.5, lambda: mnt.p("test/fire").write_text("hello")).start()
        t0 = time.monotonic()
        events = p.poll(5000)
        assert events and events[0][1] & select.POLLIN
        assert time.monotonic() - t0 < 3
        assert os.read(fd, 100) == b'{"seq":1,"event":"hello"}\n'
    finally:
        os.close(fd)


def test_event_stream_with_shell_tools(mnt: Mount) -> None:
    r = mnt.sh(
        "(sleep 0.5; for i in 1 2 3; do echo e$i > test/fire; done) & timeout 10 cat test/events | head -n 3"
    )
    assert r.stdout.splitlines() == [f'{{"seq":{i},"event":"e{i}"}}' for i in (1, 2, 3)], r.stderr
    r = mnt.sh("(sleep 0.5; echo once > test/fire) & timeout 10 head -n1 test/events")
    assert r.returncode == 0 and r.stderr == "" and "once" in r.stdout


def test_parked_readers_do_not_starve_the_waker(mnt: Mount) -> None:
    n = 200
    fds = [os.open(mnt.p("test/events"), os.O_RDONLY) for _ in range(n)]
    got: list[bytes] = []

    def reader(fd: int) -> None:
        got.append(os.read(fd, 4096))  # Python retries EINTR by itself (PEP 475)

    threads = [threading.Thread(target=reader, args=(fd,), daemon=True) for fd in fds]
    try:
        for t in threads:
            t.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        mnt.p("test/fire").write_text("wake")
        assert time.monotonic() - t0 < 2.0
        for t in threads:
            t.join(10)
        assert len(got) == n and all(b'"wake"' in g for g in got)
    finally:
        for fd in fds:
            os.close(fd)


def test_injected_exception_is_eio_and_mount_keeps_serving(mnt: Mount) -> None:
    r = mnt.sh("cat test/boom")
    assert r.returncode != 0 and "Input/output error" in r.stderr
    assert "RuntimeError: injected failure" in mnt.log_text()
    assert "Traceback" in mnt.log_text()
    assert "internal error" in mnt.p("test/last_error").read_text()
    assert mnt.sh("cat test/value").stdout == "initial\n"


def test_data_file_any_offset(mnt: Mount, tmp_path: object) -> None:
    r = mnt.sh(
        "head -c 700000 /dev/urandom > /tmp/vfs-rand.$$ && "
        "dd if=/tmp/vfs-rand.$$ of=test/data bs=1000 seek=3 conv=notrunc status=none && "
        "cmp <(dd if=test/data bs=1000 skip=3 count=700 status=none) /tmp/vfs-rand.$$ && echo same;"
        "rm -f /tmp/vfs-rand.$$"
    )
    assert r.stdout == "same\n", r.stderr
    assert os.stat(mnt.p("test/data")).st_size == 1 << 20
    r = mnt.sh("echo x | dd of=test/data bs=1 seek=1048576 conv=notrunc")
    assert "No space left" in r.stderr


def test_transaction_file_round_trip(mnt: Mount) -> None:
    r = mnt.sh("exec 3<>test/tx; echo hello >&3; cat <&3; echo fail >&3; cat <&3")
    assert r.stdout == "HELLO\nthe request asked to fail\n"
    assert "Invalid argument" in r.stderr


def test_symlink_answers_per_caller(mnt: Mount) -> None:
    r = mnt.sh("echo $$; readlink test/me")
    pid, target = r.stdout.split()
    assert target.isdigit() and int(target) != mnt.pid
