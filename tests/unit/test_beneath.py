"""Opening beneath a directory while an attacker swaps the name for a symlink to the outside."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from backends import beneath
from backends.beneath import check_regular, open_beneath
from backends.errors import VfsError


@pytest.fixture(params=["openat2", "walk"])
def how(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways: the kernel's openat2, and the O_NOFOLLOW walk for kernels without it."""
    monkeypatch.setattr(beneath, "_openat2_missing", request.param == "walk")
    return str(request.param)


def test_symlinks_dotdot_and_hard_links_are_refused(tmp_path: Path, how: str) -> None:
    inside, outside = tmp_path / "images", tmp_path / "outside"
    (inside / "sub").mkdir(parents=True)
    outside.write_text("secret")
    (inside / "link").symlink_to(outside)
    (inside / "dirlink").symlink_to(tmp_path)
    os.link(outside, inside / "hard")
    top = os.open(inside, os.O_PATH | os.O_DIRECTORY)
    try:
        for name in ("link", "dirlink/outside", "../outside", "sub/../../outside"):
            with pytest.raises(VfsError) as e:
                os.close(open_beneath(top, name, os.O_RDONLY))
            assert e.value.errno == errno.EACCES, name
        fd = open_beneath(top, "hard", os.O_RDONLY)
        with pytest.raises(VfsError) as e:
            check_regular(fd, "hard")
        os.close(fd)
        assert e.value.errno == errno.EACCES and "hard links" in e.value.reason
        fd = open_beneath(top, "sub/new.img", os.O_RDWR | os.O_CREAT)
        check_regular(fd, "new")
        os.close(fd)
        assert (inside / "sub/new.img").is_file()
    finally:
        os.close(top)


def test_no_escape_in_10000_racing_opens(tmp_path: Path, how: str) -> None:
    inside, outside = tmp_path / "images", tmp_path / "outside"
    inside.mkdir()
    outside.write_text("secret")
    target = inside / "race.img"
    real = inside / "real.img"
    real.write_bytes(b"")
    stop = threading.Event()

    def flip() -> None:  # race.img: a regular file, then a symlink to the outside, again and again
        while not stop.is_set():
            os.replace(inside / "real.img", target) if (inside / "real.img").exists() else None
            tmp = inside / "swap"
            try:
                tmp.symlink_to(outside)
                os.replace(tmp, target)
            except FileExistsError:
                pass
            (inside / "real.img").write_bytes(b"")

    flipper = threading.Thread(target=flip)
    flipper.start()
    top = os.open(inside, os.O_PATH | os.O_DIRECTORY)
    escapes = opened = refused = 0
    try:
        tries = 0
        # 10,000 opens, and more (up to 100,000) until the race went both ways: on a busy
        # machine the flipping thread may not have run at all during the first 10,000.
        while tries < 10_000 or not (opened and refused) and tries < 100_000:
            tries += 1
            try:
                fd = open_beneath(top, "race.img", os.O_RDWR | os.O_CREAT)
            except VfsError:
                refused += 1
                continue
            opened += 1
            if os.fstat(fd).st_ino == os.stat(outside).st_ino:
                escapes += 1
            os.close(fd)
    finally:
        stop.set()
        flipper.join()
        os.close(top)
    assert escapes == 0
    assert opened and refused  # the race was really run both ways
    assert outside.read_text() == "secret"
