"""Which handlers the daemon has: the built-ins, the `vfs.handlers` entry points, and those
loaded while it runs (`echo package.module:Class > handlers/load`, or an entry point's name),
which are remembered in the state dir and loaded again at the next mount. `rmdir
handlers/<subtype>` unloads one, refused while a device uses it (tcmu-runner's register and
unregister)."""

from __future__ import annotations

import errno
import logging
from importlib.metadata import entry_points

from backends.errors import VfsError
from backends.tcmu import Handler, HandlerContext, Tcmu
from vfs import plugins
from vfs.persist import Store

log = logging.getLogger("vfs.tcmu")

BUILTIN = [
    "backends.tcmu.handlers.ram:RamHandler",
    "backends.tcmu.handlers.file:FileHandler",
    "backends.tcmu.handlers.nbd:NbdHandler",
    "backends.tcmu.handlers.qcow:QcowHandler",
    "backends.tcmu.handlers.rbd:RbdHandler",
]
GROUP = "vfs.handlers"
KIND = "handlers"  # the store's record of handlers loaded at run time


class Handlers:
    def __init__(self, core: Tcmu, context: HandlerContext, store: Store) -> None:
        self.core = core
        self.context = context
        self.store = store

    def start(self) -> None:
        """Built-ins, entry points, then what was loaded at run time before; a handler that
        fails is logged and left out, the daemon goes on."""
        for name, cls in plugins.discover(GROUP, BUILTIN):
            try:
                self.core.register_handler(cls(self.context))
            except (VfsError, TypeError) as e:
                log.error("handler %s not registered: %s", name, getattr(e, "reason", e))
        for subtype, saved in self.store.load_all(KIND).items():
            if subtype in self.core.handlers or not isinstance(saved, dict):
                continue
            try:
                self.load(str(saved.get("spec", "")), remember=False)
            except VfsError as e:
                log.error("handler %s loaded before is not loaded again: %s", subtype, e.reason)

    def load(self, spec: str, remember: bool = True) -> Handler:
        spec = spec.strip()
        found = entry_points(group=GROUP, name=spec)
        try:
            if found:
                cls = next(iter(found)).load()
            elif ":" in spec:
                cls = plugins.resolve(spec)
            else:
                raise VfsError(
                    errno.ENOENT, f"no {GROUP} entry point {spec!r}; or write package.module:Class"
                )
        except (ImportError, AttributeError, ValueError) as e:
            raise VfsError(errno.ENOENT, f"cannot load {spec}: {e}") from None
        if not (isinstance(cls, type) and issubclass(cls, Handler)):
            raise VfsError(errno.EINVAL, f"{spec} is not a Handler class (backends.tcmu.Handler)")
        try:
            handler = cls(self.context)
        except Exception as e:  # its own constructor: any failure is the handler's, not ours
            raise VfsError(errno.EINVAL, f"{spec} could not be made: {type(e).__name__}: {e}") from None
        self.core.register_handler(handler)
        if remember:
            self.store.save(KIND, handler.subtype, {"spec": spec})
        log.info("handler %s loaded from %s", handler.subtype, spec)
        return handler

    def unload(self, subtype: str) -> None:
        self.core.unregister_handler(subtype)
        self.store.delete(KIND, subtype)
        log.info("handler %s unloaded", subtype)
