"""gunicorn server hooks, loaded by ``serve`` with ``--config python:inference.gunicorn_conf``."""

from __future__ import annotations

import sys
from typing import Any

from common.process import exit_process


def worker_exit(server: Any, worker: Any) -> None:
    """Keep a worker's exit status honest after it ran a circuit (see :mod:`common.process`).

    gunicorn calls this in the worker while its ``SystemExit`` propagates (for example status 1
    after its request timed out mid-FHE); without it the arbiter would be told 0.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit):
        exit_process(exc.code)
