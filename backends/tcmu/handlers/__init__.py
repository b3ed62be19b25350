"""Built-in TCMU handlers: `ram` (memory) and `file` (an image file)."""
