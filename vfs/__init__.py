"""vfs: kernel-style systems (vmkapi mgmt, world storage, TCMU, v2v) as a FUSE filesystem."""

__version__ = "0.1.0"
