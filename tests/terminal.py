"""A shell in a detached tmux session, for tests of what people see: keys in, the screen out."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

VFS = str(Path(sys.executable).parent / "vfs")


class Terminal:
    """A shell in a detached tmux session: keys in, the screen out."""

    def __init__(self, name: str, shell: list[str], home: Path, size: tuple[int, int] = (150, 30)) -> None:
        self.name = name
        env = f"env -i HOME={home} TERM=xterm PATH={Path(VFS).parent}:/usr/bin:/bin"
        columns, rows = size
        argv = [
            "tmux",
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            str(columns),
            "-y",
            str(rows),
            f"{env} {' '.join(shell)}",
        ]
        subprocess.run(argv, check=True)

    def type(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def screen(self) -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-t", self.name, "-p"], capture_output=True, text=True, check=True
        ).stdout

    def wait_for(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def running(self) -> str:
        """The command in the pane's foreground now."""
        return subprocess.run(
            ["tmux", "list-panes", "-t", self.name, "-F", "#{pane_current_command}"],
            capture_output=True,
            text=True,
        ).stdout.strip()

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
