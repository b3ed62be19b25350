"""Modules shipped with vfs, loaded like third-party ones (entry points `vfs.modules`, or
`--module`): `example` shows the whole management API in one file (docs/modules.md)."""
