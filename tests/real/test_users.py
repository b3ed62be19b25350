"""Two unprivileged users and root on one `--allow-other` mount, with the shell tools a user
has: who may read data, events, channel ends and world blocks, and how chown/chmod delegate
(docs/operations.md, "Who may use what")."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Mount, wait_for

ALICE, BOB = 60001, 60002
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="acting as other users needs root (setpriv)")


def as_user(uid: int, cmd: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def shared(mounts: list[Mount]) -> Iterator[Mount]:
    """A mount other users can reach: pytest's tmp dirs are root's only (0700)."""
    base = Path(tempfile.mkdtemp(prefix="vfs-users-"))
    base.chmod(0o755)
    m = Mount(base, extra=("--allow-other", "--image-dir", str(base)))
    mounts.append(m)
    yield m.start()
    m.stop()
    shutil.rmtree(base, ignore_errors=True)


def denied(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode != 0 and ("Permission denied" in r.stderr or "not permitted" in r.stderr)


def owner(m: Mount, path: str) -> tuple[int, int, int]:
    st = os.stat(m.p(path))
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def test_a_root_object_is_closed_to_users_until_chowned(shared: Mount) -> None:
    m = shared
    assert (
        m.sh("mkdir devices/d0 && echo ram/ > devices/d0/config && echo 1048576 > devices/d0/size").returncode
        == 0
    )
    assert owner(m, "devices/d0/data") == (0, 0, 0o600)
    for uid in (ALICE, BOB):
        assert denied(as_user(uid, "dd if=devices/d0/data of=/dev/null count=1", m.path))
        assert denied(as_user(uid, "echo 1 > devices/d0/enable", m.path))
        assert as_user(uid, "cat devices/d0/status", m.path).returncode == 0  # sysfs: status is public

    assert m.sh(f"chown {ALICE}:{ALICE} devices/d0").returncode == 0
    assert owner(m, "devices/d0/data") == (ALICE, ALICE, 0o600)  # the object's files follow it
    r = as_user(
        ALICE,
        "echo 1 > devices/d0/enable && head -c 65536 /dev/urandom > /tmp/vfs-alice.bin"
        " && dd if=/tmp/vfs-alice.bin of=devices/d0/data conv=notrunc status=none"
        " && cmp -n 65536 /tmp/vfs-alice.bin devices/d0/data && rm /tmp/vfs-alice.bin",
        m.path,
    )
    assert r.returncode == 0, r.stderr
    assert denied(as_user(BOB, "dd if=devices/d0/data of=/dev/null count=1", m.path))
    assert denied(as_user(BOB, "exec 3<> devices/d0/scsi", m.path))
    assert denied(as_user(BOB, "echo 0 > devices/d0/enable", m.path))
    assert denied(as_user(ALICE, f"chown {BOB} devices/d0", m.path))  # only root gives away
    assert denied(as_user(BOB, "chmod 666 devices/d0/data", m.path))  # only the owner sets modes
    # The owner lets its group read: chmod on a file is that file's own.
    assert as_user(ALICE, "chmod 640 devices/d0/data", m.path).returncode == 0
    assert owner(m, "devices/d0/data") == (ALICE, ALICE, 0o640)
    assert m.sh("chmod 666 version").returncode == 0
    assert owner(m, "version")[2] == 0o444  # what a file cannot do, chmod cannot add


def test_a_sticky_collection_lets_users_create_and_keeps_their_objects_theirs(shared: Mount) -> None:
    m = shared
    assert denied(as_user(ALICE, "mkdir channels/a", m.path))
    assert m.sh("chmod 1777 channels").returncode == 0
    assert as_user(ALICE, "mkdir channels/a", m.path).returncode == 0
    assert as_user(BOB, "mkdir channels/b", m.path).returncode == 0
    assert owner(m, "channels/a")[:2] == (ALICE, ALICE)
    assert owner(m, "channels/b/listener/stream") == (BOB, BOB, 0o600)
    assert denied(as_user(BOB, "rmdir channels/a", m.path))  # the sticky bit: not yours
    assert denied(as_user(BOB, "exec 3< channels/a/listener/stream", m.path))
    assert as_user(ALICE, "rmdir channels/a", m.path).returncode == 0


def test_each_end_of_a_channel_to_its_own_user(shared: Mount) -> None:
    m = shared
    assert (
        m.sh(
            f"mkdir channels/c && chown {ALICE} channels/c/listener && chown {BOB} channels/c/connector"
        ).returncode
        == 0
    )
    reader = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={ALICE}",
            f"--regid={ALICE}",
            "--clear-groups",
            "timeout",
            "10",
            "cat",
            "channels/c/listener/stream",
        ],
        cwd=m.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: m.p("channels/c/listener/state").read_text().strip() == "listening", 5)
    assert denied(as_user(ALICE, "exec 3> channels/c/connector/stream", m.path))
    assert denied(as_user(BOB, "exec 3< channels/c/listener/stream", m.path))
    r = as_user(BOB, "echo from-bob > channels/c/connector/stream", m.path)
    assert r.returncode == 0, r.stderr
    out, err = reader.communicate(timeout=15)
    assert (reader.returncode, out) == (0, "from-bob\n"), err


def test_a_world_belongs_to_its_process(shared: Mount) -> None:
    m = shared
    assert m.sh("mkdir storage/s && echo 4096 > storage/s/size && echo 1 > storage/s/enable").returncode == 0
    assert denied(as_user(ALICE, "echo x > storage/s/size", m.path))
    # A user uses its own block through `self`, and the block shows under its pid as its own.
    holder = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={ALICE}",
            f"--regid={ALICE}",
            "--clear-groups",
            "sh",
            "-c",
            "exec 3<>storage/s/self; echo secret >&3; echo $$; sleep 30",
        ],
        cwd=m.path,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        pid = holder.stdout.readline().strip()
        wait_for(lambda: m.p(f"worlds/{pid}/s").exists(), 5)
        assert owner(m, f"worlds/{pid}")[:2] == (ALICE, ALICE)
        assert owner(m, f"worlds/{pid}/s") == (ALICE, ALICE, 0o600)
        assert denied(as_user(BOB, f"cat worlds/{pid}/s", m.path))  # /proc's rule: same user or root
        assert as_user(ALICE, f"head -c 6 worlds/{pid}/s", m.path).stdout == "secret"
        assert m.p(f"worlds/{pid}/s").read_bytes()[:6] == b"secret"
        r = m.sh(f"chown {BOB} worlds/{pid}")
        assert r.returncode != 0 and "belong to its process" in m.p(f"worlds/{pid}/last_error").read_text()
        # Bob's own self is his own block, not Alice's.
        assert as_user(BOB, "head -c 6 storage/s/self", m.path).stdout == "\0" * 6
    finally:
        holder.kill()
        holder.wait()


def test_events_and_calls_of_a_handle_are_its_owners(shared: Mount) -> None:
    m = shared
    assert denied(as_user(ALICE, "exec 3< mgmt/v2v/events", m.path))
    assert denied(as_user(ALICE, "exec 3<> mgmt/v2v/call", m.path))
    assert m.sh(f"chown {ALICE} mgmt/v2v").returncode == 0
    assert as_user(ALICE, "exec 3< mgmt/v2v/events", m.path).returncode == 0
    assert denied(as_user(BOB, "exec 3< mgmt/v2v/events", m.path))


def test_grants_outlive_the_daemon_and_die_with_the_object(shared: Mount) -> None:
    m = shared
    assert (
        m.sh(
            f"mkdir devices/d0 devices/d1 && chown {ALICE}:{BOB} devices/d0 && chmod 1777 channels"
        ).returncode
        == 0
    )
    assert as_user(BOB, "mkdir channels/b", m.path).returncode == 0
    m.stop()
    m.start()
    assert owner(m, "devices/d0/config")[:2] == (ALICE, BOB)
    assert owner(m, "channels") == (0, 0, 0o1777)
    assert owner(m, "channels/b")[:2] == (BOB, BOB)
    # rmdir drops the grant: a new object of that name is its new creator's.
    assert m.sh("rmdir devices/d0 && mkdir devices/d0").returncode == 0
    assert owner(m, "devices/d0/data") == (0, 0, 0o600)


def test_a_rootless_user_namespace_sees_its_own_objects_as_root(shared: Mount) -> None:
    m = shared
    probe = as_user(ALICE, "unshare -r true", m.path)
    if probe.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are off here: {probe.stderr.strip()}")
    assert (
        m.sh(
            "for d in mine roots; do mkdir devices/$d && echo ram/ > devices/$d/config"
            " && echo 4096 > devices/$d/size && echo 1 > devices/$d/enable; done"
            f" && chown {ALICE}:{ALICE} devices/mine"
        ).returncode
        == 0
    )
    r = as_user(
        ALICE,
        "unshare -r sh -c 'stat -c %u devices/mine/data devices/roots/data; head -c 4 devices/mine/data | wc -c'",
        m.path,
    )
    assert r.stdout.split() == ["0", "65534", "4"], r.stderr
    assert denied(as_user(ALICE, "unshare -r head -c 4 devices/roots/data", m.path))
    assert denied(as_user(ALICE, "unshare -r chown 0 devices/roots", m.path))
    assert denied(as_user(ALICE, "unshare -r chmod 666 devices/roots/data", m.path))
