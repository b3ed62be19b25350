"""Helper processes for the channel workloads: writers, readers and echoers over files, pipes
and SOCK_SEQPACKET, each printing only when it started and finished its transfers.

    python -m bench.ipc write FILE SIZE COUNT        write COUNT chunks of SIZE bytes
    python -m bench.ipc read FILE SIZE COUNT         read COUNT messages (or SIZE*COUNT stream bytes)
    python -m bench.ipc pingpong FILE SIZE COUNT     write, then read, COUNT times (the client)
    python -m bench.ipc echo FILE SIZE COUNT         read, then write back (the server)
    python -m bench.ipc local pipe|seqpacket MODE SIZE COUNT   both sides over a pipe or socketpair
"""

from __future__ import annotations

import os
import socket
import sys
import time


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def writer(fd: int, size: int, count: int, stream: bool) -> None:
    data = os.urandom(size)
    for _ in range(count):
        if stream:
            write_all(fd, data)
        else:
            os.write(fd, data)


def reader(fd: int, size: int, count: int, stream: bool) -> None:
    if stream:
        left = size * count
        while left > 0:
            n = len(os.read(fd, min(left, 1 << 20)))
            if n == 0:
                raise SystemExit("early EOF")
            left -= n
    else:
        for _ in range(count):
            os.read(fd, max(size, 65536))


def pingpong(out_fd: int, in_fd: int, size: int, count: int) -> None:
    data = b"p" * size
    for _ in range(count):
        os.write(out_fd, data)
        os.read(in_fd, 65536)


def echo(in_fd: int, out_fd: int, size: int, count: int) -> None:
    for _ in range(count):
        os.write(out_fd, os.read(in_fd, 65536))


def local(kind: str, mode: str, size: int, count: int) -> float:
    """Both sides in two processes (fork) over a pipe pair or a SOCK_SEQPACKET pair."""
    if kind == "pipe":
        a_r, a_w = os.pipe()
        b_r, b_w = os.pipe()
        ends = (a_w, a_r, b_w, b_r)  # parent writes a_w, child reads a_r; child writes b_w, parent reads b_r
    else:
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (s1, s2):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        ends = (s1.fileno(), s2.fileno(), s2.fileno(), s1.fileno())
    stream = mode == "stream"
    reader_stream = stream or kind == "pipe"  # a pipe keeps no message boundaries: count bytes
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        if mode == "pingpong":
            echo(ends[1], ends[2], size, count)
        else:
            reader(ends[1], size, count, reader_stream)
        os._exit(0)
    if mode == "pingpong":
        pingpong(ends[0], ends[3], size, count)
    else:
        writer(ends[0], size, count, stream)
    os.waitpid(pid, 0)
    return time.perf_counter() - start


def main() -> None:
    """Prints "start end" (wall clock, after the files are open) so the caller can time both
    sides without counting interpreter start-up."""
    cmd = sys.argv[1]
    if cmd == "local":
        print(local(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        return
    if cmd in ("write", "read"):
        path, size, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        stream = path.endswith("stream")
        fd = os.open(path, os.O_WRONLY if cmd == "write" else os.O_RDONLY)
        start = time.time()
        (writer if cmd == "write" else reader)(fd, size, count, stream)
    else:
        path, size, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        fd = os.open(path, os.O_RDWR)  # one attachment per channel end
        start = time.time()
        if cmd == "pingpong":
            pingpong(fd, fd, size, count)
        else:
            echo(fd, fd, size, count)
    print(start, time.time())


if __name__ == "__main__":
    main()
