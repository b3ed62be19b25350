"""Plugin discovery: built-ins first, then entry points (`vfs.modules`, `vfs.handlers`), then
modules named on the command line (`--module package.module:function`)."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

log = logging.getLogger("vfs.plugins")


def resolve(spec: str) -> Any:
    """`package.module:attr` (or `package.module`, meaning its `setup`) → the object."""
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "setup").split("."):
        obj = getattr(obj, part)
    return obj


def discover(group: str, builtins: list[str], extra: list[str] = []) -> list[tuple[str, Any]]:  # noqa: B006
    """(name, object) for every plugin of `group`; one that fails to load is logged and skipped."""
    found: list[tuple[str, Any]] = []
    seen: set[str] = set()
    candidates = [(spec, lambda s=spec: resolve(s)) for spec in builtins]
    candidates += [(ep.name, ep.load) for ep in entry_points(group=group)]
    candidates += [(spec, lambda s=spec: resolve(s)) for spec in extra]
    for name, load in candidates:
        if name in seen:
            continue
        try:
            found.append((name, load()))
            seen.add(name)
        except ImportError as e:  # a library it needs is not installed: the reason is the message
            log.warning("cannot load %s plugin %s (%s); going on without it", group, name, e)
        except Exception:
            log.exception("cannot load %s plugin %s; going on without it", group, name)
    return found
