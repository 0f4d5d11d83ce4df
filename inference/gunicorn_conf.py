"""gunicorn server hooks, loaded by ``serve`` with ``--config python:inference.gunicorn_conf``."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from common.process import exit_process, set_parent_death_signal


def post_fork(server: Any, worker: Any) -> None:
    """Make the worker die with its master (SIGKILL), even when the master is killed -9.

    gunicorn's own check (the parent pid) runs between requests only, and a sync worker with a
    600 s timeout sleeps up to 300 s between checks; an FHE run blocks it for its whole length.
    """
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != worker.ppid:  # the master died before the signal was armed
        os._exit(1)


def worker_exit(server: Any, worker: Any) -> None:
    """Keep a worker's exit status honest after it ran a circuit (see :mod:`common.process`).

    gunicorn calls this in the worker while its ``SystemExit`` propagates (for example status 1
    after its request timed out mid-FHE); without it the arbiter would be told 0.
    """
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit):
        exit_process(exc.code)
