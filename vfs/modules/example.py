"""The example module: the whole management API in one short file, for third-party authors.

Install yours through an entry point in your package's pyproject.toml:

    [project.entry-points."vfs.modules"]
    mydriver = "mydriver.vfsmodule:setup"

`setup(ctx)` runs in the daemon at mount time; `ctx.mgmt` is the registry (vmk_MgmtInit).
Try it:  cat mgmt/example/keys/counter;  echo hello > mgmt/example/keys/message
         cat mgmt/example/events     (another shell)
         exec 3<>mgmt/example/call; echo 'add instance=2 40 2' >&3; cat <&3
"""

from __future__ import annotations

from typing import Any

from backends.mgmt import (
    ApiSignature,
    CallbackInfo,
    Cookies,
    Envelope,
    KeyType,
    Location,
    MgmtError,
    Param,
    ParmType,
    Ref,
    Status,
)
from vfs.context import Context

NOTIFY = 16  # callback ids 0..15 are reserved
ADD = 17


def add(cookies: Cookies, envelope: Envelope, a: int, b: int, total: Ref, note: Ref) -> Status:
    """A synchronous kernel callback: IN parameters arrive as values, OUT ones as Refs."""
    total.value = a + b
    note.value = f"added by session {envelope.session_id}"
    return Status.OK


def add_checked(cookies: Cookies, envelope: Envelope, a: int, b: int, total: Ref, note: Ref) -> Status:
    """Instance 2 overrides `add`: same shape, its own behaviour."""
    if a < 0 or b < 0:
        raise MgmtError(Status.BAD_PARAM, "instance 2 adds only non-negative numbers")
    total.value = a + b
    note.value = "checked by instance 2"
    return Status.OK


def _int64(name: str, kind: ParmType = ParmType.IN) -> Param:
    return Param(kind, 8, "int", name)


SIGNATURE = ApiSignature(
    name="example",
    vendor="vfs",
    version=(1, 0, 0, 0),
    callbacks=(
        CallbackInfo(
            NOTIFY,
            "notify",
            Location.USER,
            synchronous=False,
            params=(Param(ParmType.IN, 256, "str", "message"), _int64("count")),
        ),
        CallbackInfo(
            ADD,
            "add",
            Location.KERNEL,
            synchronous=True,
            function=add,
            params=(
                _int64("a"),
                _int64("b"),
                _int64("sum", ParmType.OUT),
                Param(ParmType.OUT, 64, "str", "note"),
            ),
        ),
    ),
)


def setup(ctx: Context) -> None:
    state: dict[str, Any] = {"counter": 0, "message": "hello", "sessions": 0}

    def announce(handle: Any, cookie: Any, session_id: int) -> dict[str, int]:
        state["sessions"] += 1
        return {"number": state["sessions"]}  # the session cookie, given back to its callbacks

    def cleanup(handle: Any, cookie: Any, session_id: int, session_cookie: Any) -> None:
        state["sessions"] -= 1

    handle = ctx.mgmt.init(SIGNATURE, cookie=state, session_announce=announce, session_cleanup=cleanup)

    def set_counter(cookie: dict[str, Any], value: int) -> None:
        cookie["counter"] = value

    def set_message(cookie: dict[str, Any], value: str) -> None:
        cookie["message"] = value
        # A user-side callback to every listening session; NOT_FOUND just means nobody listens.
        handle.invoke(
            Envelope(instance_id=1), NOTIFY, value.encode()[:255].decode(errors="ignore"), len(value)
        )

    handle.add_key(
        KeyType.LONG,
        "counter",
        lambda c: c["counter"],
        set_counter,
        description="a number to get and set",
    )
    handle.add_key(
        KeyType.STRING,
        "message",
        lambda c: c["message"],
        set_message,
        persistent=True,
        description="setting it sends a notify callback to every events reader",
    )
    handle.add_key(
        KeyType.LONG,
        "sessions",
        lambda c: c["sessions"],
        None,  # no setter: a read-only key (mode 0444)
        description="open sessions, as counted by the announce and cleanup hooks",
    )
    handle.register_instance(1, "first")
    handle.register_instance(
        2,
        "second",
        [CallbackInfo(ADD, "add", Location.KERNEL, True, SIGNATURE.callbacks[1].params, add_checked)],
    )
