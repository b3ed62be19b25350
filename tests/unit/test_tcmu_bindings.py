"""A handler's C binding: found at registration, loaded on first use, its failure a reason."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

from backends.errors import VfsError
from backends.tcmu.handlers.binding import Binding


def test_a_missing_binding_keeps_the_handler_out_and_names_the_package() -> None:
    with pytest.raises(ImportError, match="apt install python3-nothing"):
        Binding("vfs_no_such_binding", "python3-nothing")


def test_a_binding_is_imported_on_first_use_and_each_attribute_looked_up_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vfs_fake_binding.py").write_text("CONSTANT = 7\nloads = [1]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    binding = Binding("vfs_fake_binding", "python3-fake")
    assert "vfs_fake_binding" not in sys.modules  # found, not loaded
    assert binding.CONSTANT == 7
    assert "vfs_fake_binding" in sys.modules
    assert vars(binding)["CONSTANT"] == 7  # the next lookup does not go through the import
    del sys.modules["vfs_fake_binding"]


def test_a_binding_that_does_not_load_is_a_reason_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "vfs_broken_binding.py").write_text("raise ImportError('libfake.so.1: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    binding = Binding("vfs_broken_binding", "python3-fake")
    with pytest.raises(VfsError) as e:
        binding.Thing  # noqa: B018
    assert e.value.errno == errno.ELIBACC
    assert "libfake.so.1" in e.value.reason and "reinstall python3-fake" in e.value.reason


def test_the_nbd_directions_named_by_hand_are_libnbds() -> None:
    nbd = pytest.importorskip("nbd", reason="python3-libnbd is not installed")
    from backends.tcmu.handlers import nbd as handler

    assert (handler.READ, handler.WRITE) == (nbd.AIO_DIRECTION_READ, nbd.AIO_DIRECTION_WRITE)
