"""tcmu-runner's tcmu.conf: parsed as libtcmu reads it, applied to the TCMU logger, followed
as it changes."""

from __future__ import annotations

import logging
from pathlib import Path

from vfs.subsystems.tcmu.conf import LOG_FILE, TcmuConf, parse

DEBIAN_DEFAULT = """# Master TCMU configuration file
# log_level = 3
# log_dir = "/var/log"
"""


def test_parse_reads_keys_quotes_and_names_what_it_ignores() -> None:
    assert parse(DEBIAN_DEFAULT) == ({}, [])
    settings, problems = parse(
        'log_level = 4\nlog_dir_path="/var/log/x"  # old name\nmax_data_area_mb = 8\nnonsense\n'
    )
    assert settings == {"log_level": "4", "log_dir": "/var/log/x"}
    assert problems == [
        "line 3: max_data_area_mb is not a setting vfs follows (log_level, log_dir)",
        "line 4: not 'key = value': 'nonsense'",
    ]


def test_level_and_log_dir_follow_the_file(tmp_path: Path, caplog: object) -> None:
    conf_file = tmp_path / "tcmu.conf"
    levels: list[str] = []
    conf = TcmuConf(conf_file, levels.append)
    conf.load()  # no file: nothing changes
    assert levels == [] and conf.file_handler is None
    conf_file.write_text(f'log_level = 4\nlog_dir = "{tmp_path}/logs"\n')
    conf.load()
    assert levels == ["debug"]
    logging.getLogger("vfs.tcmu").warning("to the file")
    assert "to the file" in (tmp_path / "logs" / LOG_FILE).read_text()
    conf.load()  # unchanged: nothing applied again
    assert levels == ["debug"]
    conf_file.write_text("log_level = 9\n")  # bad: kept
    conf.load()
    assert levels == ["debug"]
    conf_file.write_text("log_level = 1\n")
    conf.load()
    assert levels == ["debug", "error"]
    conf.close()
