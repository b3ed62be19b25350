"""A handler's C binding: found at registration, loaded on first use, its failure a reason."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from backends.errors import VfsError
from backends.tcmu.handlers.binding import Binding


def test_a_missing_binding_keeps_the_handler_out_and_names_the_package() -> None:
    with pytest.raises(ImportError, match="apt install python3-nothing"):
        Binding("vfs_no_such_binding", "python3-nothing")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Binding]:
    """A Binding for module `name` made of `source`, found first on sys.path."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(name: str, source: str) -> Binding:
        (tmp_path / f"{name}.py").write_text(source)
        return Binding(name, "python3-fake")

    return make


def test_a_binding_is_imported_on_first_use_and_each_attribute_looked_up_once(
    fake: Callable[[str, str], Binding],
) -> None:
    binding = fake("vfs_fake_binding", "CONSTANT = 7\n")
    assert "vfs_fake_binding" not in sys.modules  # found, not loaded
    assert binding.CONSTANT == 7
    assert "vfs_fake_binding" in sys.modules
    assert vars(binding)["CONSTANT"] == 7  # the next lookup does not go through the import
    del sys.modules["vfs_fake_binding"]


def test_a_binding_that_does_not_load_is_a_reason_not_a_crash(fake: Callable[[str, str], Binding]) -> None:
    binding = fake("vfs_broken_binding", "raise ImportError('libfake.so.1: cannot open')\n")
    with pytest.raises(VfsError) as e:
        binding.Thing  # noqa: B018
    assert e.value.errno == errno.ELIBACC
    assert "libfake.so.1" in e.value.reason and "reinstall python3-fake" in e.value.reason


def test_the_nbd_directions_named_by_hand_are_libnbds() -> None:
    nbd = pytest.importorskip("nbd", reason="python3-libnbd is not installed")
    from backends.tcmu.handlers import nbd as handler

    assert (handler.READ, handler.WRITE) == (nbd.AIO_DIRECTION_READ, nbd.AIO_DIRECTION_WRITE)
