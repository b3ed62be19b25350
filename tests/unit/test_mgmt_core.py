"""The mgmt core without a mount: signatures, keys, instances, sessions, callbacks, destroy."""

from __future__ import annotations

import errno
import json
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from backends.errors import VfsError
from backends.mgmt import (
    ApiSignature,
    CallbackInfo,
    Envelope,
    KeyType,
    Location,
    MgmtError,
    Param,
    ParmType,
    Ref,
    Registry,
    Status,
)
from backends.mgmt.request import parse_request
from backends.mgmt.session import QUEUE_MAX


def int64(name: str, kind: ParmType = ParmType.IN) -> Param:
    return Param(kind, 8, "int", name)


def kernel_add(cookies: Any, envelope: Envelope, a: int, b: int, total: Ref) -> Status:
    total.value = a + b
    return Status.OK


EVENT = CallbackInfo(16, "event", Location.USER, False, (Param(ParmType.IN, 32, "str", "what"), int64("n")))
ADD = CallbackInfo(
    17, "add", Location.KERNEL, True, (int64("a"), int64("b"), int64("sum", ParmType.OUT)), kernel_add
)
SIG = ApiSignature("drv", "acme", (1, 2, 0, 0), (EVENT, ADD))


class MemoryKeys:
    def __init__(self) -> None:
        self.saved: dict[tuple[str, str], str] = {}

    def load(self, handle: str, key: str) -> str | None:
        return self.saved.get((handle, key))

    def save(self, handle: str, key: str, value: str) -> None:
        self.saved[(handle, key)] = value


class Spawner:
    """Collects background tasks; `run` drives them in a nursery (as the daemon does)."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Any, tuple[Any, ...]]] = []

    def __call__(self, fn: Any, *args: Any) -> None:
        self.tasks.append((fn, args))

    async def run(self) -> None:
        while self.tasks:
            fn, args = self.tasks.pop(0)
            await fn(*args)


@pytest.fixture
def spawner() -> Spawner:
    return Spawner()


@pytest.fixture
def registry(spawner: Spawner) -> Registry:
    return Registry(spawner, MemoryKeys())


def code(e: pytest.ExceptionInfo[VfsError]) -> int:
    return e.value.errno


# ---- signatures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig",
    [
        ApiSignature("drv", "acme", (1, 0, 0, 0), (CallbackInfo(15, "low", Location.USER, False),)),
        ApiSignature(
            "drv", "acme", (1, 0, 0, 0), (CallbackInfo(16, "many", Location.USER, False, (int64("a"),) * 5),)
        ),
        ApiSignature(
            "drv",
            "acme",
            (1, 0, 0, 0),
            (CallbackInfo(16, "o", Location.USER, False, (int64("a", ParmType.OUT),)),),
        ),
        ApiSignature(
            "drv",
            "acme",
            (1, 0, 0, 0),
            (CallbackInfo(16, "o", Location.KERNEL, False, (int64("a", ParmType.OUT),), kernel_add),),
        ),
        ApiSignature("drv", "acme", (1, 0, 0, 0), (CallbackInfo(16, "k", Location.KERNEL, True),)),
        ApiSignature("drv", "acme", (1, 0, 0, 0), (EVENT, EVENT)),
        ApiSignature(
            "drv",
            "acme",
            (1, 0, 0, 0),
            (CallbackInfo(16, "w", Location.USER, False, (Param(ParmType.IN, 3, "int"),)),),
        ),
        ApiSignature("bad/name", "acme", (1, 0, 0, 0)),
        ApiSignature("x" * 32, "acme", (1, 0, 0, 0)),
        ApiSignature("drv", "ac/me", (1, 0, 0, 0)),
        ApiSignature("drv", "acme", (1, 0, 256, 0)),
    ],
)
def test_bad_signatures_are_refused(registry: Registry, sig: ApiSignature) -> None:
    with pytest.raises(MgmtError) as e:
        registry.init(sig)
    assert e.value.status is Status.BAD_PARAM and code(e) == errno.EINVAL and e.value.reason


def test_handle_names_are_unique(registry: Registry) -> None:
    registry.init(SIG)
    with pytest.raises(MgmtError) as e:
        registry.init(SIG)
    assert code(e) == errno.EEXIST


# ---- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+7", 7),
        ("0x1F", 31),
        ("0X10", 16),
        ("-0x10", -16),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
async def test_long_keys_accept(registry: Registry, text: str, value: int) -> None:
    store: dict[str, int] = {}
    h = registry.init(SIG)
    h.add_key(KeyType.LONG, "n", lambda c: store.get("n", 0), lambda c, v: store.__setitem__("n", v))
    await h.set_key("n", text)
    assert store["n"] == value and await h.get_key("n") == str(value)


@pytest.mark.parametrize(
    "text", ["", " 1", "1 ", "1.5", "0x", "12abc", "0b101", "9223372036854775808", "--1", "٣"]
)
async def test_long_keys_refuse(registry: Registry, text: str) -> None:
    h = registry.init(SIG)
    h.add_key(KeyType.LONG, "n", lambda c: 0, lambda c, v: None)
    with pytest.raises(MgmtError) as e:
        await h.set_key("n", text)
    assert code(e) == errno.EINVAL and "n" in e.value.reason or "LONG" in e.value.reason


async def test_string_keys_limit_and_read_only(registry: Registry) -> None:
    h = registry.init(SIG)
    h.add_key(KeyType.STRING, "s", lambda c: "x", lambda c, v: None)
    h.add_key(KeyType.STRING, "ro", lambda c: "fixed", None)
    await h.set_key("s", "a" * 4095)
    with pytest.raises(MgmtError) as e:
        await h.set_key("s", "a" * 4096)
    assert code(e) == errno.EFBIG
    with pytest.raises(MgmtError) as e:
        await h.set_key("ro", "x")
    assert code(e) == errno.EROFS
    with pytest.raises(MgmtError) as e:
        await h.get_key("missing")
    assert code(e) == errno.ENOENT


def test_key_limits(registry: Registry) -> None:
    h = registry.init(SIG)
    for i in range(32):
        h.add_key(KeyType.LONG, f"k{i}", lambda c: 0, None)
    with pytest.raises(MgmtError) as e:
        h.add_key(KeyType.LONG, "k32", lambda c: 0, None)
    assert code(e) == errno.ENOSPC
    with pytest.raises(MgmtError) as e:
        h.add_key(KeyType.LONG, "k0", lambda c: 0, None)
    assert code(e) == errno.EEXIST


async def test_setter_status_and_persistence(spawner: Spawner) -> None:
    keys = MemoryKeys()
    registry = Registry(spawner, keys)
    h = registry.init(SIG)
    value = {"v": 1}

    def set_v(c: Any, v: int) -> Status:
        if v > 100:
            return Status.BAD_PARAM
        value["v"] = v
        return Status.OK

    h.add_key(KeyType.LONG, "v", lambda c: value["v"], set_v, persistent=True)
    await h.set_key("v", "0x20")
    with pytest.raises(MgmtError) as e:
        await h.set_key("v", "101")
    assert code(e) == errno.EINVAL
    assert keys.saved == {("drv", "v"): "32"}
    # a new daemon: the saved value is applied when the key is added
    value["v"] = 1
    h.destroy()
    await spawner.run()
    h2 = Registry(spawner, keys).init(SIG)
    h2.add_key(KeyType.LONG, "v", lambda c: value["v"], set_v, persistent=True)
    assert value["v"] == 32


# ---- instances -------------------------------------------------------------------------------


def test_instances(registry: Registry) -> None:
    h = registry.init(SIG)
    for bad_id in (0, -1, 2**64):
        with pytest.raises(MgmtError) as e:
            h.register_instance(bad_id, "x")
        assert code(e) == errno.EINVAL
    h.register_instance(1, "one")
    with pytest.raises(MgmtError) as e:
        h.register_instance(1, "again")
    assert code(e) == errno.EEXIST
    for i in range(2, 33):
        h.register_instance(i, f"i{i}")
    with pytest.raises(MgmtError) as e:
        h.register_instance(33, "too many")
    assert code(e) == errno.ENOSPC
    h.unregister_instance(5)
    with pytest.raises(MgmtError) as e:
        h.unregister_instance(5)
    assert code(e) == errno.EINVAL  # vmkapi: BAD_PARAM when not registered


def test_unbounded_instances_when_a_module_asks(registry: Registry) -> None:
    h = registry.init(SIG, max_instances=None)
    for i in range(1, 2001):
        h.register_instance(i, f"dev{i}")
    assert len(h.instances) == 2000


def test_override_must_match_shape(registry: Registry) -> None:
    h = registry.init(SIG)
    with pytest.raises(MgmtError):
        h.register_instance(
            1, "x", [CallbackInfo(17, "add", Location.KERNEL, True, (int64("a"),), kernel_add)]
        )
    with pytest.raises(MgmtError):
        h.register_instance(1, "x", [CallbackInfo(99, "nope", Location.KERNEL, True, (), kernel_add)])


# ---- calls (user → kernel) ---------------------------------------------------------------------


async def test_call_with_out_params_and_instance_override(registry: Registry) -> None:
    h = registry.init(SIG)

    def times(cookies: Any, env: Envelope, a: int, b: int, total: Ref) -> None:
        total.value = a * b

    h.register_instance(7, "seven", [CallbackInfo(17, "add", Location.KERNEL, True, ADD.params, times)])
    h.register_instance(8, "eight")
    s = await h.open_session(100, 0, listening=False)
    assert (await h.call(s, "add", 0, [2, 3])).outputs == [5]
    assert (await h.call(s, "add", 7, [2, 3])).outputs == [6]  # the override
    assert (await h.call(s, 17, 8, ["0x2", "3"])).outputs == [5]  # no override: the default
    with pytest.raises(MgmtError) as e:
        await h.call(s, "add", 9, [1, 2])
    assert code(e) == errno.ENOENT
    with pytest.raises(MgmtError) as e:
        await h.call(s, "add", 0, [1])
    assert code(e) == errno.EINVAL
    with pytest.raises(MgmtError) as e:
        await h.call(s, "event", 0, ["x", 1])  # a user-side callback cannot be called
    assert code(e) == errno.EINVAL
    with pytest.raises(MgmtError) as e:
        await h.call(s, "add", 0, [2**63, 1])
    assert code(e) == errno.EINVAL


async def test_inout_vectors_and_failing_callbacks(registry: Registry) -> None:
    def rev(cookies: Any, env: Envelope, items: Ref, count: Ref) -> None:
        items.value = list(reversed(items.value))
        count.value = len(items.value)

    def fails(cookies: Any, env: Envelope) -> None:
        raise MgmtError(Status.BUSY, "try later")

    sig = ApiSignature(
        "vec",
        "acme",
        (1, 0, 0, 0),
        (
            CallbackInfo(
                20,
                "rev",
                Location.KERNEL,
                True,
                (Param(ParmType.VECTOR_INOUT, 4, "int"), Param(ParmType.OUT, 4, "uint")),
                rev,
            ),
            CallbackInfo(21, "fails", Location.KERNEL, True, (), fails),
        ),
    )
    h = registry.init(sig)
    s = await h.open_session(1, 0, False)
    result = await h.call(s, "rev", 0, ["1,2,3"])
    assert result.outputs == [[3, 2, 1], 3]
    result = await h.call(s, "fails", 0, [])
    assert result.status is Status.BUSY and result.to_json()["reason"] == "try later"


async def test_async_kernel_callback_runs_later(registry: Registry, spawner: Spawner) -> None:
    ran: list[int] = []

    async def later(cookies: Any, env: Envelope, n: int) -> None:
        ran.append(n)

    h = registry.init(
        ApiSignature(
            "a",
            "acme",
            (1, 0, 0, 0),
            (CallbackInfo(30, "later", Location.KERNEL, False, (int64("n"),), later),),
        )
    )
    s = await h.open_session(1, 0, False)
    result = await h.call(s, "later", 0, [5])
    assert result.status is Status.OK and result.reason == "queued" and ran == []
    await spawner.run()
    assert ran == [5]


# ---- sessions and callbacks (kernel → user) ------------------------------------------------------


async def test_sessions_cookies_and_cleanup(registry: Registry) -> None:
    log: list[tuple[str, int, Any]] = []
    seen: list[Any] = []

    def announce(handle: Any, cookie: Any, sid: int) -> str:
        log.append(("announce", sid, cookie))
        return f"cookie-{sid}"

    def cleanup(handle: Any, cookie: Any, sid: int, session_cookie: Any) -> None:
        log.append(("cleanup", sid, session_cookie))

    def peek(cookies: Any, env: Envelope) -> None:
        seen.append((cookies.handle_cookie, cookies.session_cookie, env.session_id))

    sig = ApiSignature(
        "s", "acme", (1, 0, 0, 0), (CallbackInfo(16, "peek", Location.KERNEL, True, (), peek),)
    )
    h = registry.init(sig, cookie="H", session_announce=announce, session_cleanup=cleanup)
    a = await h.open_session(10, 0, True)
    b = await h.open_session(11, 0, False)
    await h.call(b, "peek", 0, [])
    assert seen == [("H", f"cookie-{b.id}", b.id)]
    await h.close_session(a)
    await h.close_session(a)  # twice is harmless
    assert log == [("announce", a.id, "H"), ("announce", b.id, "H"), ("cleanup", a.id, f"cookie-{a.id}")]
    assert list(h.sessions) == [b.id]


async def test_invoke_broadcast_single_and_nobody(registry: Registry) -> None:
    h = registry.init(SIG)
    assert h.invoke(Envelope(), "event", "x", 1) is Status.NOT_FOUND  # nobody listens
    listeners = [await h.open_session(i, 0, True) for i in range(3)]
    caller = await h.open_session(9, 0, False)
    assert h.invoke(Envelope(instance_id=4), "event", "all", 2) is Status.OK
    assert all(len(s.queue) == 1 for s in listeners) and not caller.queue
    assert h.invoke(Envelope(session_id=listeners[1].id), 16, "one", 3) is Status.OK
    assert [len(s.queue) for s in listeners] == [1, 2, 1]
    assert h.invoke(Envelope(session_id=caller.id), "event", "x", 1) is Status.NOT_FOUND
    line = json.loads(listeners[1].read_now(4096).splitlines()[0])
    assert line == {
        "seq": 1,
        "event": "callback",
        "callback": "event",
        "id": 16,
        "instance": 4,
        "params": ["all", 2],
    }
    with pytest.raises(MgmtError):
        h.invoke(Envelope(), "add", 1, 2)  # a kernel callback
    with pytest.raises(MgmtError):
        h.invoke(Envelope(), "event", "x" * 40, 1)  # too long for str:32
    with pytest.raises(MgmtError):
        h.invoke(Envelope(), "event", "x")


async def test_slow_reader_gets_a_bounded_queue(registry: Registry) -> None:
    h = registry.init(SIG)
    s = await h.open_session(1, 0, True)
    for i in range(QUEUE_MAX + 50):
        h.invoke(Envelope(), "event", "e", i)
    assert len(s.queue) == QUEUE_MAX and s.dropped == 50
    s.read_now(1 << 20)
    h.invoke(Envelope(), "event", "after", 0)
    lines = [json.loads(x) for x in s.read_now(1 << 20).splitlines()]
    assert lines[0]["event"] == "dropped" and lines[0]["count"] == 50
    assert lines[1]["params"] == ["after", 0]
    assert [x["seq"] for x in lines] == [QUEUE_MAX + 1, QUEUE_MAX + 2]


async def test_long_lines_are_read_in_pieces(registry: Registry) -> None:
    h = registry.init(SIG)
    s = await h.open_session(1, 0, True)
    h.invoke(Envelope(), "event", "x" * 31, 1)
    h.invoke(Envelope(), "event", "y", 2)
    first = s.read_now(10)
    rest = b""
    while s.queue:
        rest += s.read_now(10)
    assert len(first) == 10 and (first + rest).count(b"\n") == 2


# ---- destruction -----------------------------------------------------------------------------


async def test_destroy_is_deferred_until_in_flight_ends(spawner: Spawner) -> None:
    release = trio.Event()
    cleaned: list[str] = []

    async def slow(cookies: Any, env: Envelope) -> None:
        await release.wait()

    registry = Registry(spawner)
    sig = ApiSignature(
        "d", "acme", (1, 0, 0, 0), (CallbackInfo(16, "slow", Location.KERNEL, True, (), slow),)
    )
    h = registry.init(
        sig,
        cookie="c",
        cleanup=lambda c: cleaned.append(c),
        session_cleanup=lambda *a: cleaned.append("session"),
    )
    caller = await h.open_session(1, 0, False)
    listener = await h.open_session(2, 0, True)
    async with trio.open_nursery() as n:
        n.start_soon(h.call, caller, "slow", 0, [])
        await trio.sleep(0.01)
        assert h.in_flight == 1
        assert h.destroy() is Status.OK
        assert h.destroy() is Status.BAD_PARAM
        assert "d" not in registry.handles  # no new users
        await spawner.run()
        assert cleaned == []  # still in flight
        release.set()
    assert cleaned == ["session", "session", "c"]
    assert listener.readable()
    with pytest.raises(VfsError) as e:
        listener.read_now(100)
    assert e.value.errno == errno.ENODEV
    with pytest.raises(MgmtError) as e2:
        h.add_key(KeyType.LONG, "late", lambda c: 0, None)
    assert e2.value.errno == errno.EBADF


# ---- the request codec ---------------------------------------------------------------------------


def test_parse_request_forms() -> None:
    r = parse_request(b"add instance=2 40 2\n")
    assert (r.callback, r.instance_id, r.inputs) == ("add", 2, ["40", "2"])
    r = parse_request(b"say 'two words'")
    assert r.inputs == ["two words"] and r.instance_id == 0
    r = parse_request(b'{"callback": 17, "instance": "0x3", "params": [1, "x"]}')
    assert (r.callback, r.instance_id, r.inputs) == (17, 3, [1, "x"])
    for bad in (
        b"",
        b"\n",
        b"a\nb",
        b"{",
        b'{"params": []}',
        b'{"callback": true}',
        b"'unclosed",
        b"\xff",
        b"add instance=-1",
        b'{"callback": "a", "instance": -2}',
    ):
        with pytest.raises(MgmtError):
            parse_request(bad)


@given(st.binary(max_size=200))
def test_parse_request_never_raises_anything_else(data: bytes) -> None:
    try:
        parse_request(data)
    except MgmtError as e:
        assert e.errno == errno.EINVAL


@given(st.text(alphabet="ab \"'\\\t\né", max_size=16))
def test_split_words_is_shlex_in_linear_time(text: str) -> None:
    import shlex

    from backends.mgmt.request import split_words

    try:
        expected: list[str] | str = shlex.split(text)
    except ValueError:
        expected = "error"
    try:
        got: list[str] | str = split_words(text)
    except ValueError:
        got = "error"
    assert got == expected
