"""Help where people look: tab completion in real bash and zsh (typed under tmux, the screen
captured), the man page rendered by man(1), --help with examples, and the mount's own README."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Mount, run
from tests.terminal import VFS, Terminal


def test_bash_completes_commands_and_options(tmp_path: Path, terminal: list[Terminal]) -> None:
    script = tmp_path / "vfs.bash"
    script.write_text(run(f"{VFS} completion bash").stdout)
    t = Terminal(f"vfs-bash-{os.getpid()}", ["bash", "--norc", "--noprofile"], tmp_path)
    terminal.append(t)
    t.type(f"source {script}", "Enter")
    t.type("vfs mou", "Tab")
    t.wait_for("vfs mount")
    t.type("C-u", "vfs mount --metr", "Tab")
    t.wait_for("vfs mount --metrics")
    t.type("C-u", "vfs scsi /x re", "Tab")  # a subsystem's subcommand, from its own parser
    t.wait_for("vfs scsi /x readcap")


def test_zsh_completes_from_its_fpath(tmp_path: Path, terminal: list[Terminal]) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (setup-debian --test)")
    functions = tmp_path / "zfunc"
    functions.mkdir()
    (functions / "_vfs").write_text(run(f"{VFS} completion zsh").stdout)
    assert run(f"zsh -n {functions / '_vfs'}").returncode == 0
    t = Terminal(f"vfs-zsh-{os.getpid()}", ["zsh", "-f"], tmp_path)
    terminal.append(t)
    t.type(f"fpath=({functions} $fpath); autoload -U compinit && compinit -u -D", "Enter")
    t.type("vfs umo", "Tab")
    t.wait_for("vfs umount")
    t.type("C-u", "vfs mount --image", "Tab")
    t.wait_for("vfs mount --image-dir")


def test_the_man_page_renders_every_command_and_option(tmp_path: Path) -> None:
    page = tmp_path / "vfs.1"
    page.write_text(run(f"{VFS} manpage").stdout)
    r = run(f"MANWIDTH=100 man -l {page}")
    assert r.returncode == 0, r.stderr
    for text in ("vfs mount", "--metrics [ADDR:]PORT", "--image-dir", "vfs scsi", "vfs keyval", "vfs umount"):
        assert text in r.stdout, text


def test_help_has_examples_and_units() -> None:
    out = run(f"{VFS} --help").stdout
    assert "examples:" in out and "vfs mount /mnt/vfs --metrics 9101" in out
    mount = run(f"{VFS} mount --help").stdout
    assert "bytes" in mount and "127.0.0.1" in mount


def test_the_mount_has_a_readme(tmp_path: Path, mounts: list[Mount]) -> None:
    mnt = Mount(tmp_path, modules=())  # the tree as users get it, without the tests' own module
    mounts.append(mnt.start())
    readme = mnt.p("README")
    assert oct(os.stat(readme).st_mode & 0o777) == "0o444"
    text = readme.read_text()
    for name in sorted(os.listdir(mnt.path)):
        if name != "README":
            assert name in text, name  # every top-level entry is named
    assert "docs/" in text
    assert mnt.sh("echo x > README").returncode != 0
