"""What a subsystem's or a module's `setup(ctx)` receives (docs/modules.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from backends.events import Hub
from backends.mgmt import Registry
from vfs.metrics import Metrics
from vfs.persist import Store
from vfs.tree.root import Root

if TYPE_CHECKING:
    from vfs.daemon import Options


PROGRESS_EVERY = 100  # objects between two progress reports


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
    # (what, done, of): how a restore at mount is going; `vfs mount` draws it on a terminal
    report: Callable[[str, int, int], None] = lambda what, done, total: None

    def restoring(self, kind: str) -> Iterator[tuple[str, Any]]:
        """The saved definitions of `kind`, reporting progress as they are gone through."""
        saved = self.store.load_all(kind)
        for done, item in enumerate(saved.items()):
            if done % PROGRESS_EVERY == 0:
                self.report(kind, done, len(saved))
            yield item
        self.report(kind, len(saved), len(saved))
