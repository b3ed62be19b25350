"""The face of management handles: `mgmt/<handle>/...` built from the mgmt core (docs/mgmt.md)."""

from __future__ import annotations

import json
from typing import Any

from backends.mgmt import Handle, Instance, Registry, Session
from backends.mgmt.request import parse_request
from vfs.persist import Store
from vfs.tree.nodes import Caller, MappedDir, Node
from vfs.tree.objects import Collection, ObjectDir
from vfs.tree.streams import QueueStream, StreamFile
from vfs.tree.transactions import TxFile
from vfs.tree.values import ValueFile, constant


class StoredKeys:
    """Persistent key values under `<state dir>/keys/<handle>/<key>.json`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self, handle: str, key: str) -> str | None:
        value = self.store.load_all(f"keys/{handle}").get(key)
        return value.get("value") if isinstance(value, dict) else None

    def save(self, handle: str, key: str, value: str) -> None:
        self.store.save(f"keys/{handle}", key, {"value": value})


class CallSession:
    """An open `call` fd: each write is a request, the next read its JSON result."""

    def __init__(self, handle: Handle, session: Session) -> None:
        self.handle = handle
        self.session = session

    async def request(self, data: bytes) -> bytes:
        req = parse_request(data)
        result = await self.handle.call(self.session, req.callback, req.instance_id, req.inputs)
        return json.dumps(result.to_json(), separators=(",", ":")).encode() + b"\n"

    async def close(self) -> None:
        await self.handle.close_session(self.session)


def handle_dir(name: str, handle: Handle) -> Node:
    sig = handle.signature

    def key_file(key_name: str, key: Any) -> Node:
        async def get() -> str:
            return await handle.get_key(key_name)

        async def set_(text: str) -> None:
            await handle.set_key(key_name, text)

        return ValueFile(get, set_ if key.set is not None else None)

    def instance_dir(_: str, instance: Instance) -> Node:
        return ObjectDir(
            lambda: {
                "id": instance.id,
                "name": instance.display_name,
                "callbacks": sorted(instance.overrides),
            },
            {
                "name": constant(instance.display_name),
                "callbacks": constant("\n".join(str(i) for i in sorted(instance.overrides))),
            },
        )

    def session_dir(_: str, session: Session) -> Node:
        return ObjectDir(session.status)

    async def open_events(flags: int, caller: Caller) -> QueueStream:
        session = await handle.open_session(caller.pid, caller.uid, listening=True)
        return QueueStream(session, lambda: handle.close_session(session))

    async def open_call(caller: Caller) -> CallSession:
        return CallSession(handle, await handle.open_session(caller.pid, caller.uid, listening=False))

    return ObjectDir(
        handle.status,
        {
            "name": constant(sig.name),
            "vendor": constant(sig.vendor),
            "version": constant(sig.version_text),
            "signature": constant("\n".join(cb.describe() for cb in sig.callbacks)),
            "keys": MappedDir(lambda: handle.keys, key_file, cache_names=True),  # keys are never removed
            "instances": MappedDir(lambda: {str(i): v for i, v in handle.instances.items()}, instance_dir),
            "sessions": MappedDir(lambda: {str(i): s for i, s in handle.sessions.items()}, session_dir),
            "events": StreamFile(open_events),
            "call": TxFile(open_call),
        },
    )


def mgmt_dir(registry: Registry) -> Node:
    """`mgmt/`: one directory per registered handle. Modules register handles; mkdir cannot.
    The registry announces every removal, so the kernel may keep the names meanwhile."""
    handles = Collection(lambda: registry.handles, handle_dir, cache_names=True)
    registry.on_removed.append(handles.drop)
    return handles
