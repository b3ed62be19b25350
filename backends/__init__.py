"""Protocol cores, one package per seed. Nothing here imports pyfuse3 or knows of inodes."""
