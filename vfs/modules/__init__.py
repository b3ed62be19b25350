"""Built-in modules, loaded before any found through the `vfs.modules` entry points."""
