"""vmkapi mgmt types (vmkapi_mgmt_types.h): signatures, callbacks, parameters, limits.

Parameters carry a `fmt` beside vmkapi's type and size, so values can travel as text and JSON:
"int"/"uint" (1, 2, 4 or 8 bytes), "str" (NUL-terminated in `size` bytes), "bytes" (raw, hex
in text). Vector parameters are lists of such units; `size` is the size of one unit.
Conversions here do no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from backends import values
from backends.errors import VfsError
from backends.mgmt.status import MgmtError, Status
from backends.names import NAME_MAX, check_name

MAX_CALLBACK_PARMS = 4
RESERVED_CALLBACKS = 15  # ids 0..15 are vmkapi's
MAX_KEYS = 32
MAX_INSTANCES = 32
KEY_STRING_MAXLEN = 4096  # with the NUL: 4095 bytes of text
NO_INSTANCE_ID = 0
SESSION_ID_ALL = 0
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
VECTOR_MAX_UNITS = 1 << 16  # a bound on what one call may carry


class ParmType(IntEnum):
    IN = 0
    OUT = 1
    INOUT = 2
    VECTOR_IN = 3
    VECTOR_OUT = 4
    VECTOR_INOUT = 5

    @property
    def vector(self) -> bool:
        return self >= ParmType.VECTOR_IN

    @property
    def takes_input(self) -> bool:
        return self in (ParmType.IN, ParmType.INOUT, ParmType.VECTOR_IN, ParmType.VECTOR_INOUT)

    @property
    def gives_output(self) -> bool:
        return self in (ParmType.OUT, ParmType.INOUT, ParmType.VECTOR_OUT, ParmType.VECTOR_INOUT)


class Location(IntEnum):
    KERNEL = 1  # runs in the daemon, invoked from user space (the `call` file)
    USER = 2  # delivered to user space (the `events` file)


class KeyType(IntEnum):
    LONG = 1
    STRING = 2


FORMATS = ("int", "uint", "str", "bytes")


def bad(reason: str) -> MgmtError:
    return MgmtError(Status.BAD_PARAM, reason)


@dataclass(frozen=True)
class Param:
    """One callback parameter: vmkapi type and unit size, plus how its value reads as text."""

    type: ParmType
    size: int
    fmt: str = "bytes"
    name: str = ""

    def validate(self) -> None:
        if self.fmt not in FORMATS:
            raise bad(f"parameter format {self.fmt!r} is not one of {', '.join(FORMATS)}")
        if self.size <= 0:
            raise bad("parameter size must be positive")
        if self.fmt in ("int", "uint") and self.size not in (1, 2, 4, 8):
            raise bad(f"an integer parameter is 1, 2, 4 or 8 bytes, not {self.size}")
        if self.fmt == "str" and self.size < 2:
            raise bad("a string parameter needs at least 2 bytes (text and NUL)")

    def describe(self) -> str:
        label = f"{self.type.name}:{self.fmt}:{self.size}"
        return f"{self.name}={label}" if self.name else label

    # ---- values -------------------------------------------------------------------------------

    def unit(self, value: Any) -> Any:
        """Check one unit (a Python value or its JSON form) and return its canonical value."""
        if self.fmt in ("int", "uint"):
            if isinstance(value, str):
                value = parse_int(value, f"parameter {self.name or self.describe()}")
            if not isinstance(value, int) or isinstance(value, bool):
                raise bad(f"{self.describe()} takes an integer, not {value!r}")
            bits = 8 * self.size
            lo, hi = (
                (0, (1 << bits) - 1) if self.fmt == "uint" else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
            )
            if not lo <= value <= hi:
                raise bad(f"{value} does not fit {self.describe()} ({lo}..{hi})")
            return value
        if self.fmt == "str":
            if not isinstance(value, str):
                raise bad(f"{self.describe()} takes text, not {value!r}")
            if len(value.encode()) > self.size - 1 or "\0" in value:
                raise bad(f"text for {self.describe()} must be at most {self.size - 1} bytes, no NUL")
            return value
        if isinstance(value, str):
            try:
                value = bytes.fromhex(value)
            except ValueError:
                raise bad(f"{self.describe()} takes hex bytes, not {value!r}") from None
        if not isinstance(value, (bytes, bytearray)) or len(value) > self.size:
            raise bad(f"{self.describe()} takes at most {self.size} bytes")
        return bytes(value)

    def value(self, value: Any) -> Any:
        """A whole parameter value: a unit, or for vectors a list of units."""
        if not self.type.vector:
            return self.unit(value)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if value else []
        if isinstance(value, (bytes, bytearray)) and self.fmt == "bytes":
            value = [bytes(value[i : i + self.size]) for i in range(0, len(value), self.size)]
        if not isinstance(value, (list, tuple)):
            raise bad(f"{self.describe()} takes a list")
        if len(value) > VECTOR_MAX_UNITS:
            raise bad(f"{self.describe()} takes at most {VECTOR_MAX_UNITS} units")
        return [self.unit(v) for v in value]

    def empty(self) -> Any:
        """The initial value of an OUT parameter."""
        if self.type.vector:
            return []
        return {"int": 0, "uint": 0, "str": "", "bytes": b""}[self.fmt]

    def to_json(self, value: Any) -> Any:
        if self.type.vector:
            return [self._unit_json(v) for v in value]
        return self._unit_json(value)

    def _unit_json(self, value: Any) -> Any:
        return value.hex() if isinstance(value, (bytes, bytearray)) else value


class Ref:
    """An OUT or INOUT parameter as a kernel callback sees it: set `.value`."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Ref({self.value!r})"


@dataclass(frozen=True)
class Envelope:
    """Addressing of one callback: the instance it concerns and the session it is for/from."""

    instance_id: int = NO_INSTANCE_ID
    session_id: int = SESSION_ID_ALL


@dataclass(frozen=True)
class Cookies:
    handle_cookie: Any
    session_cookie: Any


KernelFn = Callable[..., Any]  # (cookies, envelope, *params) -> Status | None, plain or async


@dataclass(frozen=True)
class CallbackInfo:
    """vmk_MgmtCallbackInfo. Kernel callbacks have a `function`; user ones are delivered as events."""

    id: int
    name: str
    location: Location
    synchronous: bool = True
    params: Sequence[Param] = ()
    function: KernelFn | None = None

    def validate(self) -> None:
        if self.id <= RESERVED_CALLBACKS:
            raise bad(f"callback {self.name}: ids 0..{RESERVED_CALLBACKS} are reserved (got {self.id})")
        if not self.name.isidentifier():
            raise bad(f"callback name {self.name!r} must be an identifier")
        if len(self.params) > MAX_CALLBACK_PARMS:
            raise bad(f"callback {self.name}: at most {MAX_CALLBACK_PARMS} parameters")
        for p in self.params:
            p.validate()
            if p.type.gives_output and not (self.location is Location.KERNEL and self.synchronous):
                raise bad(f"callback {self.name}: OUT/INOUT parameters need a synchronous kernel callback")
        if self.location is Location.KERNEL and self.function is None:
            raise bad(f"kernel callback {self.name} has no function")
        if self.location is Location.USER and self.function is not None:
            raise bad(f"user callback {self.name} runs in user space; it takes no function")

    def describe(self) -> str:
        where = "kernel" if self.location is Location.KERNEL else "user"
        mode = "sync" if self.synchronous else "async"
        parms = " ".join(p.describe() for p in self.params)
        return f"{self.id} {self.name} {where} {mode}" + (f" {parms}" if parms else "")

    def same_shape(self, other: CallbackInfo) -> bool:
        return (self.location, self.synchronous, tuple(self.params)) == (
            other.location,
            other.synchronous,
            tuple(other.params),
        )


@dataclass(frozen=True)
class ApiSignature:
    """vmk_MgmtApiSignature: name and version identify the API; vendor names its maker."""

    name: str
    vendor: str
    version: tuple[int, int, int, int]
    callbacks: Sequence[CallbackInfo] = field(default_factory=tuple)

    def validate(self) -> None:
        try:
            check_name(self.name, "handle name")
        except VfsError as e:
            raise bad(e.reason) from None
        if (
            not self.vendor
            or len(self.vendor.encode()) > NAME_MAX
            or not self.vendor.isprintable()
            or "/" in self.vendor
        ):
            raise bad(f"vendor {self.vendor!r} must be 1-{NAME_MAX} printable bytes without '/'")
        if len(self.version) != 4 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.version):
            raise bad(f"version {self.version!r} must be four numbers 0..255 (major.minor.update.patch)")
        ids: set[int] = set()
        names: set[str] = set()
        for cb in self.callbacks:
            cb.validate()
            if cb.id in ids or cb.name in names:
                raise bad(f"callback id {cb.id} or name {cb.name} appears twice")
            ids.add(cb.id)
            names.add(cb.name)

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    def callback(self, ref: int | str) -> CallbackInfo | None:
        for cb in self.callbacks:
            if cb.id == ref or cb.name == ref or str(cb.id) == ref:
                return cb
        return None


def parse_version(text: str) -> tuple[int, int, int, int]:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise bad(f"version {text!r} is not major.minor.update.patch")
    a, b, c, d = (int(p) for p in parts)
    return (a, b, c, d)


def parse_int(text: str, what: str = "value") -> int:
    try:
        return values.parse_int(text, what)
    except VfsError as e:
        raise bad(e.reason) from None


def parse_long(text: str) -> int:
    value = parse_int(text, "LONG key")
    if not INT64_MIN <= value <= INT64_MAX:
        raise bad(f"LONG key: {text} is outside int64")
    return value


def check_string(text: str) -> str:
    if len(text.encode()) > KEY_STRING_MAXLEN - 1:
        raise MgmtError(
            Status.LIMIT_EXCEEDED, f"STRING key: {len(text.encode())} bytes, at most {KEY_STRING_MAXLEN - 1}"
        )
    return text
