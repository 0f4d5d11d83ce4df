"""gunicorn server hooks, loaded by ``serve`` with ``--config python:inference.gunicorn_conf``."""

from __future__ import annotations

from typing import Any

from common.process import disarm_concrete_exit_handler


def worker_exit(server: Any, worker: Any) -> None:
    """Keep a worker's exit status honest after it ran a circuit (see :mod:`common.process`).

    gunicorn calls this in the worker just before it exits, e.g. with status 1 after its request
    timed out mid-FHE; without it the arbiter would be told 0.
    """
    disarm_concrete_exit_handler()
