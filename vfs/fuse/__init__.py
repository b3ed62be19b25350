"""The FUSE face: `operations` translates pyfuse3 requests into node calls, `inodes` numbers
the nodes the kernel holds, `invalidate` tells the kernel what changed behind it, and
`mountpoint` finds, clears and unmounts mounts."""
