"""v2v (Xen VM-to-VM, NC2 rings): channels with a listener and a connector end.

`ring` is the NC2 codec (sans-IO, byte-exact with vring.h), `layout` the shared area's bytes
and the state words with their named sets, `transport` where the area lives (this process, or
shared memory between two daemons), `channel` the ends' rules: attach, stream, msg, records.

core = V2v(nursery)
ch = core.create("c")
ch.ends["listener"].attach("stream"); ch.ends["connector"].attach("stream")
"""

from backends.v2v.channel import Channel, V2v
from backends.v2v.end import End
from backends.v2v.layout import State
from backends.v2v.ring import RingError

__all__ = ["Channel", "End", "RingError", "State", "V2v"]
