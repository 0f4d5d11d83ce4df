"""``python -m bench``: see :mod:`bench.cli`."""

from bench.cli import main
from common.process import run_main

run_main(main)
