"""All management handles of one daemon, by name (vmk_MgmtInit registers here)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from backends.errors import VfsError
from backends.mgmt.handle import Handle, Key
from backends.mgmt.status import MgmtError, Status
from backends.mgmt.types import MAX_INSTANCES, ApiSignature

log = logging.getLogger("vfs.mgmt")


class KeyStore(Protocol):
    """Where persistent key values live (the daemon's state dir); cores do no I/O themselves."""

    def load(self, handle: str, key: str) -> str | None: ...

    def save(self, handle: str, key: str, value: str) -> None: ...


class Registry:
    def __init__(self, spawn: Callable[..., None], key_store: KeyStore | None = None) -> None:
        self.handles: dict[str, Handle] = {}
        self.spawn = spawn  # start a background task: spawn(async_fn, *args)
        self.key_store = key_store
        self.on_removed: list[Callable[[str], None]] = []  # hear of every handle that goes
        self.on_added: list[Callable[[str], None]] = []  # ... and of every one that comes
        # hear of every session that begins or ends: (handle, "session_opened"|"session_closed", session)
        self.on_session: list[Callable[[str, str, Any], None]] = []

    def init(
        self,
        signature: ApiSignature,
        *,
        cookie: Any = None,
        cleanup: Callable[[Any], Any] | None = None,
        session_announce: Callable[..., Any] | None = None,
        session_cleanup: Callable[..., Any] | None = None,
        max_instances: int | None = MAX_INSTANCES,
    ) -> Handle:
        """vmk_MgmtInit: validate the signature and register a handle under its name."""
        signature.validate()
        if signature.name in self.handles:
            raise MgmtError(Status.EXISTS, f"a management handle named {signature.name} already exists")
        handle = Handle(self, signature, cookie, cleanup, session_announce, session_cleanup, max_instances)
        self.handles[signature.name] = handle
        log.info("management handle %s (%s) registered", handle.keyval_name, signature.version_text)
        for hook in self.on_added:
            hook(handle.name)
        return handle

    def unlist(self, handle: Handle) -> None:
        if self.handles.get(handle.name) is handle:
            del self.handles[handle.name]
            for hook in self.on_removed:
                hook(handle.name)

    def restore_key(self, handle: Handle, key: Key) -> None:
        if self.key_store is None or key.set is None:
            return
        text = self.key_store.load(handle.name, key.name)
        if text is None:
            return
        try:
            value = handle.parse_key(key, text)
            result = key.set(handle.cookie, value)
            if isinstance(result, Awaitable):
                self.spawn(_await, result)
        except VfsError as e:
            log.error(
                "saved value of %s/%s refused (%s); keeping the default", handle.name, key.name, e.reason
            )

    def save_key(self, handle: Handle, key: Key, text: str) -> None:
        if self.key_store is not None:
            self.key_store.save(handle.name, key.name, text)


async def _await(awaitable: Awaitable[Any]) -> None:
    await awaitable
