"""A handler's C binding (librbd, libnbd), found when the handler registers and imported when
a device first uses it: the shared libraries behind python3-rbd alone add about 20 MiB to a
daemon's resident memory, which one that serves no such device should not pay."""

from __future__ import annotations

import errno
import importlib
import importlib.util
from typing import Any

from backends.errors import VfsError


class Binding:
    """Stands for module `name`; its attributes are the module's, looked up once each."""

    def __init__(self, name: str, package: str) -> None:
        # A missing binding keeps the handler out of handlers/, as an import of it would.
        if importlib.util.find_spec(name) is None:
            raise ImportError(f"{name}, the Python binding it needs, is missing: apt install {package}")
        self._name = name
        self._package = package

    def __getattr__(self, attr: str) -> Any:
        try:
            module = importlib.import_module(self._name)
        except ImportError as e:  # found, but its shared library does not load
            reason = f"{self._name} does not load ({e}); reinstall {self._package}"
            raise VfsError(errno.ELIBACC, reason) from None
        value = getattr(module, attr)
        setattr(self, attr, value)  # the next lookup is a plain attribute, not this call
        return value
