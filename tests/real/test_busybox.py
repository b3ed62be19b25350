"""Blocking files with busybox, the userland of alpine and busybox containers: its cat reads
through sendfile(), its head does not retry EINTR, its ash reads a line byte by byte."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest

from tests.conftest import Mount

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (Debian: busybox-static)")


def later(seconds: float, fn: object) -> None:
    threading.Timer(seconds, fn).start()  # type: ignore[arg-type]


def fire(mnt: Mount, text: str) -> None:
    mnt.p("mgmt/example/keys/message").write_text(text)


def test_busybox_cat_follows_events(mnt: Mount) -> None:
    later(0.6, lambda: fire(mnt, "one"))
    later(1.2, lambda: fire(mnt, "two"))
    r = mnt.sh("timeout 2 busybox cat mgmt/example/events")
    assert r.returncode == 124  # ended by timeout's signal, with what came before it
    assert [
        line.count('"params":["one"') + line.count('"params":["two"') for line in r.stdout.splitlines()
    ] == [1, 1]


def test_busybox_head_waits_past_many_slices_without_eintr(mnt: Mount) -> None:
    later(1.5, lambda: fire(mnt, "late"))
    r = mnt.sh("busybox head -n1 mgmt/example/events", timeout=10)
    assert r.returncode == 0, r.stderr  # no 'Input/output error' or EINTR at a slice
    assert '"params":["late",4]' in r.stdout


@pytest.mark.parametrize("kind", ["stream", "msg"])
def test_busybox_cat_and_ash_read_on_channel_ends(mnt: Mount, kind: str) -> None:
    assert mnt.sh("mkdir channels/c").returncode == 0
    later(0.5, lambda: mnt.sh(f"echo 'line one' > channels/c/connector/{kind}"))
    r = mnt.sh(f"timeout 5 busybox cat channels/c/listener/{kind}")
    assert (r.returncode, r.stdout) == (0, "line one\n"), r.stderr  # the connector's close is EOF


def test_busybox_ash_reads_a_line_from_a_stream(mnt: Mount) -> None:
    """ash's read takes one byte at a time (a msg end answers that EMSGSIZE: one message a read)."""
    assert mnt.sh("mkdir channels/c").returncode == 0
    kind = "stream"
    later(0.5, lambda: mnt.sh(f"echo 'line two' > channels/c/connector/{kind}"))
    r = mnt.sh(f"timeout 5 busybox sh -c 'read -r l < channels/c/listener/{kind}; echo \"got: $l\"'")
    assert (r.returncode, r.stdout) == (0, "got: line two\n"), r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_signal_ends_a_parked_read_at_once(mnt: Mount, sig: signal.Signals) -> None:
    reader = subprocess.Popen(
        [BUSYBOX or "busybox", "cat", str(mnt.p("mgmt/example/events"))],
        start_new_session=True,
        # A shell's background job (CI started with &) ignores SIGINT, and so would cat: the
        # test is about a signal that kills, so its default action is restored.
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL) if sig != signal.SIGKILL else None,
    )
    time.sleep(0.6)
    t0 = time.monotonic()
    reader.send_signal(sig)
    assert reader.wait(5) == -sig
    assert time.monotonic() - t0 < 0.6  # no process left in D state
    assert "parked_waits 0" in mnt.p("status").read_text()


def test_a_handled_signal_interrupts_and_the_reader_carries_on(mnt: Mount) -> None:
    """Python retries EINTR after its handler (PEP 475): the handler runs while the read is
    parked, and the read then returns the event that comes later."""
    code = (
        "import signal, sys, time\n"
        "t = time.monotonic()\n"
        "signal.signal(signal.SIGALRM, lambda *a: print('handler', round(time.monotonic() - t, 2), flush=True))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.5)\n"
        "f = open(sys.argv[1], 'rb', buffering=0)\n"
        "print(f.read(200).decode().strip(), flush=True)\n"
    )
    later(1.5, lambda: fire(mnt, "after"))
    r = subprocess.run(
        ["python3", "-c", code, mnt.p("mgmt/example/events")], capture_output=True, text=True, timeout=10
    )
    handler, event = r.stdout.splitlines()
    assert float(handler.split()[1]) < 1.0  # not held until the event came
    assert '"params":["after",5]' in event


def test_sendfile_delivers_data_or_refuses_with_a_reason(mnt: Mount) -> None:
    """Kernels that splice FOPEN_DIRECT_IO files through the page cache would cut the stream
    at the first short read; there the daemon refuses with EINVAL, and says why."""
    fd = os.open(mnt.p("mgmt/example/events"), os.O_RDONLY)
    r, w = os.pipe()
    try:
        later(0.5, lambda: fire(mnt, "spliced"))
        try:
            n = os.sendfile(w, fd, None, 65536)
        except OSError as e:
            assert e.errno == errno.EINVAL
            assert "use read()" in mnt.p("mgmt/example/last_error").read_text()
            assert b'"params":["spliced",7]' in os.read(fd, 4096)  # read() still has it all
        else:
            assert b'"params":["spliced",7]' in os.read(r, n)
    finally:
        for x in (fd, r, w):
            os.close(x)
