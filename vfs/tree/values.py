"""Value files: one value per file, sysfs/configfs style (README: value files).

Reads render the value once per open and end it in exactly one newline; a write sets the
whole value in one `write()` at offset 0 (one trailing newline stripped, NUL refused) and
returns the full length or an errno — never a short count, which shells would replay.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from errno import EFBIG, EINVAL
from typing import Any

from backends.errors import VfsError
from vfs.tree.nodes import Caller, File, OpenFile, maybe_await

Getter = Callable[[], "str | Awaitable[str]"]
Setter = Callable[[str], "None | Awaitable[None]"]
BytesSetter = Callable[[bytes], "None | Awaitable[None]"]

# One write() carries at most this much (the kernel's 1 MiB request); larger values would
# arrive split and half-applied, so they are refused whole.
# A value or request is one write, refused whole past this: the kernel splits a write at
# max_write (128 KiB where the kernel has no max_pages, 1 MiB here) less the buffer's offset in
# its first page, so anything longer could arrive in pieces and be stored or run in part.
MAX_VALUE = (128 << 10) - 4096


def parse_value(data: bytes) -> str:
    """The text a write carries, or EINVAL with the reason."""
    if b"\0" in data:
        raise VfsError(EINVAL, "value contains a NUL byte")
    if data.endswith(b"\n"):
        data = data[:-1]
    try:
        return data.decode()
    except UnicodeDecodeError as e:
        raise VfsError(EINVAL, f"value is not UTF-8 text ({e.reason} at byte {e.start})") from None


def check_whole(off: int, data: bytes) -> None:
    if off != 0:
        raise VfsError(EINVAL, "a value is set by one write at offset 0")
    if len(data) > MAX_VALUE:
        raise VfsError(EFBIG, f"a value is one write of at most {MAX_VALUE} bytes, not {len(data)}")


class OpenRendered(OpenFile):
    """An open file that serves one rendering of bytes per open (re-rendered after a write)."""

    def __init__(self, node: File, flags: int, caller: Caller) -> None:
        super().__init__(node, flags, caller)
        self._text: bytes | None = None

    async def render(self) -> bytes:
        raise VfsError(EINVAL, "nothing to read")

    async def read(self, off: int, size: int) -> bytes:
        if self._text is None or off == 0 and self._consumed:
            self._text = await self.render()
            self._consumed = False
        if off + size >= len(self._text):
            self._consumed = True
        return self._text[off : off + size]

    _consumed = False


class OpenValue(OpenRendered):
    node: ValueFile

    async def render(self) -> bytes:
        assert self.node.getter is not None
        value = await maybe_await(self.node.getter())
        return (value.rstrip("\n") + "\n").encode()

    async def write(self, off: int, data: bytes) -> int:
        check_whole(off, data)
        assert self.node.setter is not None
        await maybe_await(self.node.setter(parse_value(data)))
        self._text = None
        return len(data)


class GetSetFile(File):
    """A file with a getter (readable) and a setter (writable), rendered at each open."""

    def __init__(self, getter: Any = None, setter: Any = None) -> None:
        super().__init__()
        self.getter = getter
        self.setter = setter

    @property
    def readable(self) -> bool:  # type: ignore[override]
        return self.getter is not None

    @property
    def writable(self) -> bool:  # type: ignore[override]
        return self.setter is not None

    def size(self) -> int:
        return 4096  # like sysfs: the real length is only known when rendered


class ValueFile(GetSetFile):
    """A text value: 0644 with getter and setter, 0444 read-only, 0200 write-only (action)."""

    def __init__(self, getter: Getter | None = None, setter: Setter | None = None) -> None:
        super().__init__(getter, setter)

    async def open(self, flags: int, caller: Caller) -> OpenFile:
        self.check_open(flags)
        return OpenValue(self, flags, caller)


class OpenBytes(OpenRendered):
    node: BytesFile

    async def render(self) -> bytes:
        assert self.node.getter is not None
        return await maybe_await(self.node.getter())

    async def write(self, off: int, data: bytes) -> int:
        check_whole(off, data)
        assert self.node.setter is not None
        await maybe_await(self.node.setter(data))
        self._text = None
        return len(data)


class BytesFile(GetSetFile):
    """A binary value (a template, a payload): whole-value writes, raw bytes, no newline."""

    def __init__(
        self,
        getter: Callable[[], bytes | Awaitable[bytes]] | None = None,
        setter: BytesSetter | None = None,
    ) -> None:
        super().__init__(getter, setter)

    async def open(self, flags: int, caller: Caller) -> OpenFile:
        self.check_open(flags)
        return OpenBytes(self, flags, caller)


def flat_keyed(values: Mapping[str, Any]) -> str:
    """cgroup-style `key value` lines; nested mappings become `key.sub value`."""
    lines: list[str] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            lines.extend(f"{key}.{k} {_word(v)}" for k, v in value.items())
        else:
            lines.append(f"{key} {_word(value)}")
    return "\n".join(lines)


def _word(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple, set)):
        return ",".join(str(v) for v in value) or "-"
    return str(value).replace("\n", " ")


def constant(value: str) -> ValueFile:
    return ValueFile(lambda: value)


# What makes an object's `status`: its fields, now or once awaited.
Status = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]


def status_file(status: Status) -> ValueFile:
    async def render() -> str:
        return flat_keyed(await maybe_await(status()))

    return ValueFile(render)
