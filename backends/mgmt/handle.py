"""A management handle (vmk_MgmtHandle): keys, instances, sessions, callbacks both ways."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backends.errors import VfsError
from backends.mgmt.session import Session
from backends.mgmt.status import MgmtError, Status, status_of
from backends.mgmt.types import (
    MAX_INSTANCES,
    MAX_KEYS,
    NO_INSTANCE_ID,
    SESSION_ID_ALL,
    ApiSignature,
    CallbackInfo,
    Cookies,
    Envelope,
    KeyType,
    Location,
    Ref,
    bad,
    check_string,
    parse_long,
)
from backends.names import NAME_MAX, check_name

if TYPE_CHECKING:
    from backends.mgmt.registry import Registry

log = logging.getLogger("vfs.mgmt")

Getter = Callable[[Any], Any]  # (handle_cookie) -> int | str, plain or async
Setter = Callable[[Any, Any], Any]  # (handle_cookie, value) -> Status | None, plain or async


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if isinstance(result, Awaitable):
        result = await result
    return result


def _check_status(result: Any, what: str) -> None:
    if isinstance(result, Status) and result is not Status.OK:
        raise MgmtError(result, f"{what} returned {result.name}")


@dataclass
class Key:
    name: str
    type: KeyType
    get: Getter
    set: Setter | None
    persistent: bool = False
    description: str = ""


@dataclass
class Instance:
    id: int
    display_name: str
    overrides: dict[int, CallbackInfo]


@dataclass
class CallResult:
    status: Status
    callback: CallbackInfo
    instance_id: int
    outputs: list[Any]
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status.name,
            "callback": self.callback.name,
            "id": self.callback.id,
            "instance": self.instance_id,
            "params": self.outputs,
        }
        if self.reason:
            out["reason"] = self.reason
        return out


class Handle:
    """Created by `Registry.init` (vmk_MgmtInit). Every method checks the handle is live."""

    def __init__(
        self,
        registry: Registry,
        signature: ApiSignature,
        cookie: Any = None,
        cleanup: Callable[[Any], Any] | None = None,
        session_announce: Callable[[Handle, Any, int], Any] | None = None,
        session_cleanup: Callable[[Handle, Any, int, Any], Any] | None = None,
        max_instances: int | None = MAX_INSTANCES,
    ) -> None:
        self.registry = registry
        self.signature = signature
        self.cookie = cookie
        self._cleanup = cleanup
        self._announce = session_announce
        self._session_cleanup = session_cleanup
        self.max_instances = max_instances
        self.keys: dict[str, Key] = {}
        self.instances: dict[int, Instance] = {}
        self.sessions: dict[int, Session] = {}
        self.dropped = 0  # events dropped by sessions that have ended (live ones count their own)
        self._sids = itertools.count(1)
        self.in_flight = 0
        self.destroying = False
        self.destroyed = False
        self.counters = {"calls": 0, "events_sent": 0, "events_unheard": 0, "key_gets": 0, "key_sets": 0}

    @property
    def name(self) -> str:
        return self.signature.name

    @property
    def keyval_name(self) -> str:
        """The instance name vmkmgmt_keyval shows: `<name>/<vendor>`."""
        return f"{self.signature.name}/{self.signature.vendor}"

    def _live(self) -> None:
        if self.destroying or self.destroyed:
            raise MgmtError(Status.INVALID_HANDLE, f"management handle {self.name} is destroyed")

    # ---- keys (vmk_MgmtAddKey) ----------------------------------------------------------------

    def add_key(
        self,
        key_type: KeyType,
        name: str,
        get: Getter,
        set: Setter | None,  # noqa: A002  (vmkapi's name; None makes a read-only key)
        *,
        persistent: bool = False,
        description: str = "",
    ) -> Key:
        self._live()
        try:
            check_name(name, "key name")
        except VfsError as e:
            raise bad(e.reason) from None
        if name in self.keys:
            raise MgmtError(Status.EXISTS, f"key {name} already exists on {self.name}")
        if len(self.keys) >= MAX_KEYS:
            raise MgmtError(Status.NO_SPACE, f"{self.name} already has {MAX_KEYS} keys")
        if not callable(get) or (set is not None and not callable(set)):
            raise bad(f"key {name}: get (and set, if given) must be callable")
        key = Key(name, KeyType(key_type), get, set, persistent, description)
        self.keys[name] = key
        if persistent and set is not None:
            self.registry.restore_key(self, key)
        return key

    def parse_key(self, key: Key, text: str) -> Any:
        return parse_long(text) if key.type is KeyType.LONG else check_string(text)

    async def get_key(self, name: str) -> str:
        key = self._key(name)
        self.counters["key_gets"] += 1
        async with self._operation():
            value = await _call(key.get, self.cookie)
        if key.type is KeyType.LONG:
            if not isinstance(value, int):
                raise MgmtError(Status.FAILURE, f"key {name}: get returned {type(value).__name__}, not int")
            return str(value)
        return str(value)

    async def set_key(self, name: str, text: str) -> None:
        key = self._key(name)
        if key.set is None:
            raise MgmtError(Status.READ_ONLY, f"key {name} is read-only")
        value = self.parse_key(key, text)
        self.counters["key_sets"] += 1
        async with self._operation():
            _check_status(await _call(key.set, self.cookie, value), f"set of key {name}")
        if key.persistent:
            self.registry.save_key(self, key, str(value))

    def _key(self, name: str) -> Key:
        self._live()
        key = self.keys.get(name)
        if key is None:
            raise MgmtError(Status.NOT_FOUND, f"no key {name} on {self.name}")
        return key

    # ---- instances ----------------------------------------------------------------------------

    def register_instance(
        self, instance_id: int, display_name: str, callbacks: Sequence[CallbackInfo] = ()
    ) -> Instance:
        """vmk_MgmtRegisterInstanceCallbacks: `callbacks` override the signature's by id."""
        self._live()
        if not isinstance(instance_id, int) or instance_id <= NO_INSTANCE_ID or instance_id >= 1 << 64:
            raise bad(f"instance id must be 1..2^64-1, not {instance_id!r}")
        if instance_id in self.instances:
            raise MgmtError(Status.EXISTS, f"instance {instance_id} is already registered on {self.name}")
        if self.max_instances is not None and len(self.instances) >= self.max_instances:
            raise MgmtError(Status.NO_SPACE, f"{self.name} already has {self.max_instances} instances")
        if not display_name or len(display_name.encode()) > NAME_MAX or "\n" in display_name:
            raise bad(f"display name {display_name!r} must be 1-{NAME_MAX} bytes on one line")
        overrides: dict[int, CallbackInfo] = {}
        for cb in callbacks:
            base = self.signature.callback(cb.id)
            if base is None:
                raise bad(f"override for callback id {cb.id}, which the signature of {self.name} lacks")
            cb.validate()
            if not base.same_shape(cb):
                raise bad(f"override of {base.name} must keep its location, mode and parameters")
            overrides[cb.id] = cb
        instance = Instance(instance_id, display_name, overrides)
        self.instances[instance_id] = instance
        return instance

    def unregister_instance(self, instance_id: int) -> None:
        self._live()
        if self.instances.pop(instance_id, None) is None:
            raise bad(f"instance {instance_id} is not registered on {self.name}")

    # ---- sessions -----------------------------------------------------------------------------

    async def open_session(self, pid: int, uid: int, listening: bool) -> Session:
        """A user-space connection begins (its announce hook runs and may set a cookie)."""
        self._live()
        session = Session(next(self._sids), pid, uid, listening)
        if self._announce is not None:
            async with self._operation():
                session.cookie = await _call(self._announce, self, self.cookie, session.id)
        self.sessions[session.id] = session
        for hook in self.registry.on_session:
            hook(self.name, "session_opened", session)
        return session

    async def close_session(self, session: Session) -> None:
        """The connection ends: fd closed or process killed. The cleanup hook cannot fail."""
        if session.closed:
            return
        session.closed = True
        self.dropped += session.dropped
        if self.sessions.pop(session.id, None) is None:
            return  # already cleaned up by the handle's destruction
        for hook in self.registry.on_session:
            hook(self.name, "session_closed", session)
        await self._cleanup_session(session)

    async def _cleanup_session(self, session: Session) -> None:
        if self._session_cleanup is None:
            return
        try:
            await _call(self._session_cleanup, self, self.cookie, session.id, session.cookie)
        except Exception:
            log.exception("session cleanup of %s session %d failed", self.name, session.id)

    # ---- callbacks to user space (vmk_MgmtCallbackInvoke) -------------------------------------

    def invoke(self, envelope: Envelope, callback: int | str, *params: Any) -> Status:
        """Queue a user-side callback for one session or all; never blocks, copies at once.

        Returns Status.NOT_FOUND when nobody listens; bad callbacks or parameters raise.
        """
        self._live()
        cb = self.signature.callback(callback)
        if cb is None or cb.location is not Location.USER:
            raise bad(f"{callback!r} is not a user-side callback of {self.name}")
        if len(params) != len(cb.params):
            raise bad(f"{cb.name} takes {len(cb.params)} parameters, got {len(params)}")
        values = [p.to_json(p.value(v)) for p, v in zip(cb.params, params, strict=True)]
        event = {
            "event": "callback",
            "callback": cb.name,
            "id": cb.id,
            "instance": envelope.instance_id,
            "params": values,
        }
        if envelope.session_id == SESSION_ID_ALL:
            targets = [s for s in self.sessions.values() if s.listening]
        else:
            one = self.sessions.get(envelope.session_id)
            targets = [one] if one is not None and one.listening else []
        if not targets:
            self.counters["events_unheard"] += 1
            return Status.NOT_FOUND
        for session in targets:
            session.deliver(event)
        self.counters["events_sent"] += 1
        return Status.OK

    # ---- callbacks from user space (the `call` file) ------------------------------------------

    def resolve(self, callback: int | str, instance_id: int) -> CallbackInfo:
        """The kernel callback to run for `callback` on `instance_id` (instance override first)."""
        self._live()
        cb = self.signature.callback(callback)
        if cb is None or cb.location is not Location.KERNEL:
            kernel = ", ".join(c.name for c in self.signature.callbacks if c.location is Location.KERNEL)
            raise bad(
                f"{callback!r} is not a kernel callback of {self.name} (kernel callbacks: {kernel or 'none'})"
            )
        if instance_id != NO_INSTANCE_ID:
            instance = self.instances.get(instance_id)
            if instance is None:
                raise MgmtError(Status.NOT_FOUND, f"no instance {instance_id} on {self.name}")
            return instance.overrides.get(cb.id, cb)
        return cb

    async def call(
        self, session: Session, callback: int | str, instance_id: int, inputs: Sequence[Any]
    ) -> CallResult:
        """Run a kernel callback with the IN/INOUT values `inputs`; OUT/INOUT values come back."""
        cb = self.resolve(callback, instance_id)
        wanted = [p for p in cb.params if p.type.takes_input]
        if len(inputs) != len(wanted):
            names = " ".join(p.describe() for p in wanted) or "nothing"
            raise bad(f"{cb.name} takes {len(wanted)} input parameters ({names}), got {len(inputs)}")
        given = iter(inputs)
        args: list[Any] = []
        for p in cb.params:
            if p.type.gives_output:
                args.append(Ref(p.value(next(given)) if p.type.takes_input else p.empty()))
            else:
                args.append(p.value(next(given)))
        cookies = Cookies(self.cookie, session.cookie)
        envelope = Envelope(instance_id, session.id)
        assert cb.function is not None
        self.counters["calls"] += 1
        if not cb.synchronous:
            self.registry.spawn(self._run_async, cb, cookies, envelope, args)
            return CallResult(Status.OK, cb, instance_id, [], "queued")
        async with self._operation():
            try:
                result = await _call(cb.function, cookies, envelope, *args)
                status, reason = (result if isinstance(result, Status) else Status.OK), ""
            except VfsError as e:
                status, reason = status_of(e), e.reason
        outputs = []
        for p, a in zip(cb.params, args, strict=True):
            if p.type.gives_output:
                outputs.append(p.to_json(p.value(a.value)))
        return CallResult(status, cb, instance_id, outputs, reason)

    async def _run_async(
        self, cb: CallbackInfo, cookies: Cookies, envelope: Envelope, args: list[Any]
    ) -> None:
        async with self._operation():
            try:
                await _call(cb.function, cookies, envelope, *args)  # type: ignore[arg-type]
            except Exception:
                log.exception("async callback %s of %s failed", cb.name, self.name)

    # ---- destruction (vmk_MgmtDestroy) --------------------------------------------------------

    def _operation(self) -> _InFlight:
        return _InFlight(self)

    def destroy(self) -> Status:
        """Deferred: the handle goes once every in-flight operation has ended."""
        if self.destroying or self.destroyed:
            return Status.BAD_PARAM
        self.destroying = True
        self.registry.unlist(self)
        if self.in_flight == 0:
            self.registry.spawn(self._finish)
        return Status.OK

    async def _finish(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            session.end()
            await self._cleanup_session(session)
        if self._cleanup is not None:
            try:
                await _call(self._cleanup, self.cookie)
            except Exception:
                log.exception("cleanup of handle %s failed", self.name)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "vendor": self.signature.vendor,
            "version": self.signature.version_text,
            "keys": len(self.keys),
            "instances": len(self.instances),
            "sessions": len(self.sessions),
            "listening": sum(1 for s in self.sessions.values() if s.listening),
            "in_flight": self.in_flight,
            "state": "destroyed" if self.destroyed else "destroying" if self.destroying else "live",
            **self.counters,
            "keytype": {k.name: k.type.name for k in self.keys.values()},
        }


class _InFlight:
    """Counts an operation so destruction waits for it."""

    def __init__(self, handle: Handle) -> None:
        self.handle = handle

    async def __aenter__(self) -> None:
        self.handle.in_flight += 1

    async def __aexit__(self, *exc: object) -> None:
        self.handle.in_flight -= 1
        if self.handle.destroying and self.handle.in_flight == 0:
            await self.handle._finish()
