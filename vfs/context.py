"""What a subsystem's or a module's `setup(ctx)` receives (docs/modules.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from backends.events import Hub
from backends.mgmt import Registry
from vfs.metrics import Metrics
from vfs.persist import Store
from vfs.tree.root import Root

if TYPE_CHECKING:
    from vfs.daemon import Options


@dataclass
class Context:
    """The tree's root (add top-level directories to it), the state dir's store, a nursery for
    background tasks, the management registry, the metrics (add a source to them), the
    tree-wide event stream, and hooks run at shutdown."""

    options: Options
    root: Root
    store: Store
    nursery: trio.Nursery
    mgmt: Registry
    metrics: Metrics = field(default_factory=Metrics)
    events: Hub = field(default_factory=Hub)  # the root `events`: publish {"event", "object", ...}
    on_shutdown: list[Callable[[], Awaitable[None] | None]] = field(default_factory=list)
