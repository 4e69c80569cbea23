"""``python -m reproductions fit -c CONFIG``: the same as ``repro``."""

from .cli import console_main

console_main()
