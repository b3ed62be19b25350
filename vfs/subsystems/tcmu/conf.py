"""tcmu-runner's configuration file (/etc/tcmu/tcmu.conf), read where it exists and followed
while the daemon runs, as libtcmu's inotify watch does: `log_level` (0 CRIT .. 5 DEBUG SCSI
CMD) sets the TCMU log level; `log_dir` (tcmu-runner 1.5; `log_dir_path` before it) adds a
log file, `<log_dir>/vfs-tcmu.log`, beside tcmu-runner's own. Anything else is named in the log
and left alone; a bad value keeps the setting it would have replaced."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Callable
from pathlib import Path

import trio

log = logging.getLogger("vfs.tcmu")

DEFAULT = Path("/etc/tcmu/tcmu.conf")
POLL = 1.0  # seconds between looks at the file
# tcmu-runner's six levels onto Python's; 5 (its per-command log) is debug: vfs logs no command,
# `stats` and `events` count and report them
LEVELS = {0: "CRITICAL", 1: "ERROR", 2: "WARNING", 3: "INFO", 4: "DEBUG", 5: "DEBUG"}
LOG_FILE = "vfs-tcmu.log"


def parse(text: str) -> tuple[dict[str, str], list[str]]:
    """`key = value` lines (values may be quoted; `#` starts a comment) -> settings, problems."""
    settings: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key:
            problems.append(f"line {number}: not 'key = value': {raw.strip()!r}")
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if key == "log_dir_path":  # the older spelling
            key = "log_dir"
        if key not in ("log_level", "log_dir"):
            problems.append(f"line {number}: {key} is not a setting vfs follows (log_level, log_dir)")
            continue
        settings[key] = value
    return settings, problems


class TcmuConf:
    """Applies the file to the `vfs.tcmu` logger; `set_level` is how the log level is set (the
    tcmu `logLevel` key's setter, so the key shows what the file chose)."""

    def __init__(self, path: Path, set_level: Callable[[str], None]) -> None:
        self.path = path
        self.set_level = set_level
        self.applied: dict[str, str] = {}
        self.file_handler: logging.Handler | None = None
        self._seen: str | None = None

    def load(self) -> None:
        """Read the file if it changed since the last look (a missing file changes nothing)."""
        try:  # a few hundred bytes: compared whole, as two edits may share an mtime and a size
            text = self.path.read_text(errors="replace")
        except OSError:
            return
        if text == self._seen:
            return
        self._seen = text
        settings, problems = parse(text)
        for problem in problems:
            log.warning("%s %s", self.path, problem)
        if settings.get("log_level", self.applied.get("log_level")) != self.applied.get("log_level"):
            self._level(settings["log_level"])
        if settings.get("log_dir", self.applied.get("log_dir")) != self.applied.get("log_dir"):
            self._dir(settings["log_dir"])

    def _level(self, value: str) -> None:
        if not value.isdigit() or int(value) not in LEVELS:
            log.error("%s: log_level is 0..5 (CRIT .. DEBUG SCSI CMD), not %r; kept", self.path, value)
            return
        self.set_level(LEVELS[int(value)].lower())
        self.applied["log_level"] = value
        log.info("log level now %s (log_level = %s in %s)", LEVELS[int(value)].lower(), value, self.path)

    def _dir(self, value: str) -> None:
        target = Path(value) / LOG_FILE
        try:
            Path(value).mkdir(parents=True, exist_ok=True)
            handler = logging.handlers.WatchedFileHandler(target)  # follows logrotate's moves
        except OSError as e:
            log.error("%s: log_dir %s cannot hold %s: %s; kept", self.path, value, LOG_FILE, e.strerror)
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        if self.file_handler is not None:
            log.removeHandler(self.file_handler)
            self.file_handler.close()
        log.addHandler(handler)
        self.file_handler = handler
        self.applied["log_dir"] = value
        log.info("TCMU log file now %s (log_dir in %s)", target, self.path)

    async def follow(self) -> None:
        while True:
            self.load()
            await trio.sleep(POLL)

    def close(self) -> None:
        if self.file_handler is not None:
            log.removeHandler(self.file_handler)
            self.file_handler.close()
            self.file_handler = None
