"""``python -m reproductions fit -c CONFIG``: the same as ``repro``."""

from .runner.cli import console_main

console_main()
