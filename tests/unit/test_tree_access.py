"""Owners and modes without a mount: the AccessBook over a small node tree."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from backends.errors import VfsError
from vfs.persist import Store
from vfs.tree.access import AccessBook, key
from vfs.tree.data import DataFile
from vfs.tree.nodes import Caller, StaticDir
from vfs.tree.objects import ObjectDir
from vfs.tree.values import ValueFile

ROOT, ALICE, BOB = Caller(1, 0, 0), Caller(2, 1000, 1000), Caller(3, 1001, 1001)


def tree() -> tuple[StaticDir, ObjectDir]:
    obj = ObjectDir(
        dict,
        {
            "data": DataFile(lambda flags, caller: None, lambda: 0),  # type: ignore[arg-type,return-value]
            "setting": ValueFile(lambda: "x", lambda text: None),
            "version": ValueFile(lambda: "1"),
        },
    )
    devices = StaticDir({"d-0": obj, "d-0x": ObjectDir(dict)})
    return StaticDir({"devices": devices}), obj


def test_defaults_are_the_daemons_user_and_the_kinds_modes() -> None:
    root, obj = tree()
    book = AccessBook(0, 0)
    assert key(obj.children["data"]) == "devices/d-0/data"
    assert book.resolve(obj.children["data"]) == (0, 0, 0o600)
    assert book.resolve(obj.children["setting"]) == (0, 0, 0o644)
    assert book.resolve(obj) == (0, 0, 0o755)


def test_a_creator_owns_the_object_and_everything_in_it() -> None:
    root, obj = tree()
    book = AccessBook(0, 0)
    book.created(obj, ALICE)
    assert book.resolve(obj.children["data"]) == (1000, 1000, 0o600)
    book.created(obj, ROOT)  # the name made anew by root: Alice's grant went with the old one
    assert book.resolve(obj.children["data"]) == (0, 0, 0o600)


def test_chown_and_chmod_rules() -> None:
    root, obj = tree()
    book = AccessBook(0, 0)
    data = obj.children["data"]
    with pytest.raises(VfsError) as e:
        book.change(obj, ALICE, 1000, None, None)
    assert e.value.errno == errno.EPERM and "only root" in e.value.reason
    book.change(obj, ROOT, 1000, None, None)
    with pytest.raises(VfsError):
        book.change(data, BOB, None, None, 0o666)  # not Bob's
    book.change(data, ALICE, None, 1001, 0o666)
    assert book.resolve(data) == (1000, 1001, 0o666)
    book.change(obj.children["version"], ROOT, None, None, 0o777)
    assert book.resolve(obj.children["version"])[2] == 0o444  # read-only stays read-only
    with pytest.raises(VfsError):
        book.change(root, ROOT, 1000, None, None)


def test_forget_takes_the_subtree_and_nothing_beside_it(tmp_path: Path) -> None:
    root, obj = tree()
    store = Store(tmp_path)
    book = AccessBook(0, 0, store)
    book.change(obj, ROOT, 1000, None, None)
    book.change(obj.children["data"], ROOT, None, None, 0o640)
    sibling = root.children["devices"].children["d-0x"]  # type: ignore[attr-defined]
    book.change(sibling, ROOT, 1001, None, None)
    assert AccessBook(0, 0, store).resolve(obj.children["data"]) == (1000, 0, 0o640)  # persisted
    book.forget("devices/d-0")
    again = AccessBook(0, 0, store)
    assert again.resolve(obj.children["data"]) == (0, 0, 0o600)
    assert again.resolve(sibling)[0] == 1001


def test_a_process_owns_its_world_and_chown_cannot_move_it() -> None:
    world = ObjectDir(dict, {"slot": DataFile(lambda flags, caller: None, lambda: 0)})  # type: ignore[arg-type,return-value]
    owner: list[tuple[int, int] | None] = [(1000, 1000)]
    world.owned_by = lambda: owner[0]
    StaticDir({"worlds": StaticDir({"7": world})})
    book = AccessBook(0, 0)
    assert book.resolve(world.children["slot"]) == (1000, 1000, 0o600)
    with pytest.raises(VfsError) as e:
        book.change(world.children["slot"], ROOT, None, None, 0o644)
    assert "its process" in e.value.reason
    owner[0] = None  # the task is gone: only root may look
    assert book.resolve(world.children["slot"]) == (0, 0, 0o600)
