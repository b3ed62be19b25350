"""The data file's byte-addressed I/O over whole-block engine commands: any offset and length."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.tcmu import HandlerContext, Tcmu
from backends.tcmu.handlers.ram import RamHandler
from vfs.subsystems.tcmu.tree import DeviceData

BS = 512
SIZE = 64 * BS


async def ram_device(write_cache: bool) -> DeviceData:
    core = Tcmu(lambda fn, *a: None)
    core.register_handler(RamHandler(HandlerContext()))
    dev = core.create_device("d")
    await dev.set_config("ram/")
    await dev.set_size(str(SIZE))
    await dev.set_write_cache("1" if write_cache else "0")
    await core.enable(dev)
    return DeviceData(dev)


writes = st.lists(
    st.integers(0, SIZE - 1).flatmap(
        lambda off: st.tuples(st.just(off), st.binary(min_size=1, max_size=min(SIZE - off, 5 * BS)))
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(writes=writes, write_cache=st.booleans(), at_once=st.booleans())
def test_writes_at_any_offset_match_a_flat_model(
    writes: list[tuple[int, bytes]], write_cache: bool, at_once: bool
) -> None:
    """Through `write`, or `write_now` first as the FUSE face does (partial blocks copied into
    the lent memory then, none read)."""

    async def check() -> None:
        data = await ram_device(write_cache)
        model = bytearray(SIZE)
        for off, chunk in writes:
            done = data.write_now(off, chunk) if at_once else None
            assert done == (len(chunk) if at_once and write_cache else None)
            if done is None:
                assert await data.write(off, chunk) == len(chunk)
            model[off : off + len(chunk)] = chunk
        if at_once and write_cache:
            assert data.dev.stats.ops["read"] == 0
        assert bytes(await data.read(0, SIZE)) == bytes(model)
        for off, chunk in writes:  # reads at the same unaligned places
            assert bytes(await data.read(off, len(chunk))) == bytes(model[off : off + len(chunk)])
        stats = data.dev.stats
        flushes = stats.ops["flush"]
        assert flushes == (0 if write_cache else len(writes))  # one per write, however it was split

    trio.run(check)
