"""Where handlers may reach on this host: paths inside the daemon's image directories.

The daemon usually runs as root, and `devices/` may be delegated to users, so a cfgstring
naming a path (an image, an NBD server's socket) is taken only inside an `--image-dir`, and
reached beneath it with no symlink followed (backends.beneath): what is checked is what is
opened.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from backends.beneath import components, open_beneath
from backends.errors import VfsError


def locate(raw: str, image_dirs: list[Path], cfgstring: str) -> tuple[Path, str]:
    """(image dir, path inside it) for the absolute path `raw` — read as written, no symlink
    resolved — or VfsError saying why it is not allowed."""
    if not raw.startswith("/"):
        subtype = cfgstring.split("/", 1)[0]
        raise VfsError(errno.EINVAL, f"an absolute path is needed ({subtype}//path), not {cfgstring!r}")
    dirs = ", ".join(str(d) for d in image_dirs) or "none configured"
    for d in image_dirs:
        for base in dict.fromkeys((str(d), os.path.realpath(d))):  # as given, as it really is
            prefix = base.rstrip("/") + "/"
            if raw.startswith(prefix) and len(raw) > len(prefix):
                inside = raw[len(prefix) :]
                try:
                    components(inside)
                except VfsError:
                    raise VfsError(errno.EACCES, f"{raw} is outside the image dirs ({dirs}): '..'") from None
                return Path(base), inside
    raise VfsError(errno.EACCES, f"{raw} is outside the image dirs ({dirs})")


def open_image(base: Path, inside: str, flags: int) -> tuple[int, str, int]:
    """(its directory opened O_PATH, its name, the file opened with `flags`), both reached
    beneath the image dir `base` with no symlink followed."""
    try:
        top = os.open(base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise VfsError(e.errno or errno.EIO, f"image dir {base}: {e.strerror}") from None
    try:
        parent, _, filename = inside.rpartition("/")
        dirfd = open_beneath(top, parent, os.O_PATH | os.O_DIRECTORY) if parent else os.dup(top)
    finally:
        os.close(top)
    try:
        return dirfd, filename, open_beneath(dirfd, filename, flags)
    except BaseException:
        os.close(dirfd)
        raise


def open_path(base: Path, inside: str) -> int:
    """An O_PATH fd of the file at `inside` beneath `base` (a socket, say: connect to it as
    /proc/self/fd/N, which reaches that very inode)."""
    dirfd, _, fd = open_image(base, inside, os.O_PATH)
    os.close(dirfd)
    return fd
