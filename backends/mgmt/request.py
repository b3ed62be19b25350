"""The `call` request codec: one line of text or one JSON object → (callback, instance, inputs).

Text:  <callback> [instance=<id>] <arg>...   (shell-style quoting; vectors as a,b,c)
JSON:  {"callback": "add", "instance": 2, "params": [1, 2]}
No I/O here: bytes in, values out, MgmtError(BAD_PARAM) for anything malformed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from backends.mgmt.types import NO_INSTANCE_ID, bad, parse_int

# shlex's quoting, by one regex pass: shlex builds a token a character at a time (quadratic:
# a 1 MiB request held the event loop ~7 s)
_TOKEN = re.compile(r"""'([^']*)'|"((?:[^"\\]|\\.)*)"|\\(.)|([^\s'"\\]+)|(\s+)|(.)""", re.S)
_DQ_ESCAPE = re.compile(r'\\([\\"])')


def split_words(text: str) -> list[str]:
    """shlex.split(text) (POSIX mode), in time linear in the text."""
    words: list[str] = []
    word: list[str] = []
    started = False
    for m in _TOKEN.finditer(text):
        single, double, escaped, plain, space, stray = m.groups()
        if space is not None:
            if started:
                words.append("".join(word))
                word, started = [], False
            continue
        if stray is not None:
            raise ValueError("no closing quotation" if stray in "'\"" else "no escaped character")
        started = True
        if single is not None:
            word.append(single)
        elif double is not None:
            word.append(_DQ_ESCAPE.sub(r"\1", double))
        else:
            word.append(escaped if escaped is not None else plain)
    if started:
        words.append("".join(word))
    return words


@dataclass(frozen=True)
class Request:
    callback: int | str
    instance_id: int
    inputs: list[Any]


def parse_request(data: bytes) -> Request:
    try:
        text = data.decode().strip()
    except UnicodeDecodeError:
        raise bad("a request is UTF-8 text") from None
    if not text:
        raise bad("empty request: write '<callback> [instance=<id>] <arg>...' or a JSON object")
    if "\n" in text:
        raise bad("one request per write: the request has several lines")
    if text.startswith("{"):
        return _parse_json(text)
    try:
        words = split_words(text)
    except ValueError as e:
        raise bad(f"cannot split the request: {e}") from None
    callback, rest = words[0], words[1:]
    instance = NO_INSTANCE_ID
    if rest and rest[0].startswith("instance="):
        instance = _instance(rest.pop(0)[len("instance=") :])
    return Request(callback, instance, rest)


def _parse_json(text: str) -> Request:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise bad(f"bad JSON request: {e}") from None
    except RecursionError:
        raise bad("bad JSON request: nested too deeply") from None
    if not isinstance(obj, dict) or "callback" not in obj:
        raise bad('a JSON request is an object with "callback" (and "instance", "params")')
    callback = obj["callback"]
    if not isinstance(callback, (str, int)) or isinstance(callback, bool):
        raise bad('"callback" is a name or an id')
    params = obj.get("params", [])
    if not isinstance(params, list):
        raise bad('"params" is a list')
    instance = obj.get("instance", NO_INSTANCE_ID)
    instance = _instance(instance) if isinstance(instance, str) else instance
    if not isinstance(instance, int) or isinstance(instance, bool) or instance < 0:
        raise bad('"instance" is a non-negative integer')
    return Request(callback, instance, params)


def _instance(text: str) -> int:
    value = parse_int(text, "instance")
    if value < 0:
        raise bad("instance ids are not negative")
    return value
