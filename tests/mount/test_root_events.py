"""The root `events`: one JSON Lines stream of every object's events, read with cat and jq while
devices, channels, slots and management sessions are made, used, refused and removed."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time

from tests.conftest import Mount
from tests.mount.test_v2v import attached, channel
from tests.mount.test_worldstorage import make_slot, worker


class Reader:
    """`cat events | jq -c .` kept running; the lines it printed, parsed."""

    def __init__(self, mnt: Mount) -> None:
        self.proc = subprocess.Popen(
            f"cat {mnt.p('events')} | jq -c --unbuffered .", shell=True, stdout=subprocess.PIPE, bufsize=0
        )
        self.seen: list[dict] = []  # type: ignore[type-arg]
        self._partial = b""
        time.sleep(0.3)  # subscribed before anything happens

    def until(self, **wanted: object) -> dict:  # type: ignore[type-arg]
        """The first record (from now on) with these fields, or a failure after 10 s."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 10
        while True:
            for record in self.seen:
                if all(record.get(k) == v for k, v in wanted.items()):
                    self.seen = self.seen[self.seen.index(record) + 1 :]
                    return record
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no event with {wanted}; seen {self.seen}"
            self._partial += os.read(self.proc.stdout.fileno(), 65536)
            *lines, self._partial = self._partial.split(b"\n")
            self.seen += [json.loads(line) for line in lines if line]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_every_kind_of_object_reports_to_one_stream(mnt: Mount) -> None:
    assert oct(os.stat(mnt.p("events")).st_mode & 0o777) == "0o400"  # the host view: the owner reads it
    r = Reader(mnt)
    try:
        assert (
            mnt.sh(
                "mkdir devices/d && echo ram/ > devices/d/config && echo 1048576 > devices/d/size"
            ).returncode
            == 0
        )
        first = r.until(event="created", object="devices/d")
        assert first["seq"] >= 1
        assert mnt.sh("echo 1 > devices/d/enable && echo 2097152 > devices/d/size").returncode == 0
        assert r.until(event="capacity_changed", object="devices/d")["seq"] > first["seq"]
        assert mnt.sh("echo 1000 > devices/d/size").returncode != 0
        error = r.until(event="error", object="devices/d")
        assert error["errno"] == "EINVAL" and "multiple of the block size" in error["reason"]

        ch = channel(mnt)
        r.until(event="created", object="channels/c")
        with attached(ch / "listener/msg", ch / "connector/msg", os.O_RDONLY, os.O_WRONLY):
            state = r.until(event="state", object="channels/c/listener", state="connected")
            assert state["channel"] == "c" and state["end"] == "listener"
        assert mnt.sh("rmdir channels/c").returncode == 0
        r.until(event="removed", object="channels/c")

        make_slot(mnt)
        r.until(event="created", object="storage/s")
        world = worker(mnt, "hi")
        world.kill()
        world.wait()
        gone = r.until(event="block_destroyed", object="storage/s")
        assert gone["world"] == world.pid

        assert mnt.sh("echo 0 > devices/d/enable && rmdir devices/d").returncode == 0
        r.until(event="removed", object="devices/d")

        listener = subprocess.Popen(["cat", str(mnt.p("mgmt", "tcmu", "events"))], stdout=subprocess.DEVNULL)
        opened = r.until(event="session_opened", object="mgmt/tcmu", kind="events")
        assert opened["pid"] == listener.pid
        listener.kill()
        listener.wait()
        assert r.until(event="session_closed", object="mgmt/tcmu")["session"] == opened["session"]
    finally:
        r.close()
