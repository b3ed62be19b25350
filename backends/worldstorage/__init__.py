"""Per-world storage (vmkapi_worldstorage.h): a block per world in each slot.

storage = WorldStorage(spawn)
slot = storage.create_slot("progress")          # staged: size, align, init, on_exit ...
storage.enable(slot)                            # vmk_WorldStorageCreate: constructs for every world
block = storage.lookup_local(pid, "progress")   # LookUpLocal: the caller's block, no reference
block = storage.lookup(wid, "progress")         # LookUp: a reference ...
storage.release(block)                          # ... that Release gives back
await storage.destroy_slot("progress")          # vmk_WorldStorageDestroy
"""

from backends.worldstorage.block import Block
from backends.worldstorage.core import Slot, World, WorldStorage

__all__ = ["Block", "Slot", "World", "WorldStorage"]
