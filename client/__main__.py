"""``python -m client``: see :mod:`client.cli`."""

from client.cli import main
from common.process import run_main

if __name__ == "__main__":
    run_main(main)
