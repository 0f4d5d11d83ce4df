"""The caller's connection: has it gone, and can writing to it never kill the worker.

A caller that stops waiting (SageMaker's or the local runtime's invocation timeout, a client
that closes its socket) makes nginx close its connection to gunicorn. Two things follow:

* The worker finds out by peeking at the request socket (the test nginx itself uses on the
  client side): end-of-file while the request is being served means nobody reads the answer.
  :func:`caller_gone` is that test; the server checks it between rows and drops the result.
* Whatever reply is still written then fails with ``EPIPE``. CPython ignores ``SIGPIPE`` so
  that the write raises ``BrokenPipeError`` (gunicorn catches it), but concrete's runtime (HPX,
  started by the first FHE run) replaces that with its ``hpx::termination_handler``, which prints
  its configuration and a stack trace ending in "Broken pipe" and kills the process. ``serve``
  starts workers with ``HPX_HANDLE_SIGNALS=0`` (HPX then installs no handler), and
  :func:`keep_sigpipe_ignored` checks after each FHE run that ``SIGPIPE`` is still ignored and
  restores it (with a warning) when a runtime replaced it anyway.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Read by HPX (concrete's parallel runtime) when it starts: 0 = install no signal handlers.
ENV_HPX_HANDLE_SIGNALS = "HPX_HANDLE_SIGNALS"
GUNICORN_SOCKET_KEY = "gunicorn.socket"
_PROC_STATUS = Path("/proc/self/status")


class CallerGone(Exception):
    """The caller closed its connection: nobody reads the answer, the result is dropped.

    Not a row of the contract's error table: no caller ever sees it. The server answers with
    an empty body and nginx's status for it (499), which only its own logs show.
    """

    status = 499


def caller_gone(environ: Mapping[str, Any]) -> bool:
    """True when the peer of this request's connection has closed it (nobody reads a reply).

    Only gunicorn gives the app its socket (``environ["gunicorn.socket"]``); elsewhere (a test
    client) the caller is never gone. The peek neither blocks nor consumes bytes: a pipelined
    next request stays unread, and a reset connection counts as gone.
    """
    sock = environ.get(GUNICORN_SOCKET_KEY)
    if not isinstance(sock, socket.socket):
        return False
    try:
        poller = select.poll()  # first: a socket with a timeout would wait in recv
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # ECONNRESET, ENOTCONN, EBADF: the connection is unusable
        return True


def sigpipe_ignored() -> bool | None:
    """Whether this process ignores ``SIGPIPE`` (read from the kernel), None if unknown.

    Python's own ``signal.getsignal`` only reports what Python last set, not a handler a
    native library installed since, so the kernel's view is read instead.
    """
    try:
        lines = _PROC_STATUS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGPIPE - 1) & 1)
    return None


def keep_sigpipe_ignored() -> None:
    """Make sure a write to a closed connection raises ``BrokenPipeError`` instead of killing.

    Restores ``SIG_IGN`` (and logs a warning) if a native runtime replaced it; a no-op when it
    is still ignored. Only the main thread may set signal handlers (gunicorn's sync workers
    serve requests there); elsewhere the problem is logged.
    """
    if sigpipe_ignored() is not False:
        return
    if threading.current_thread() is not threading.main_thread():
        logger.error("SIGPIPE is no longer ignored in this worker (a native runtime replaced it):"
                     " a reply to a closed connection may kill it; set %s=0",
                     ENV_HPX_HANDLE_SIGNALS)
        return
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    logger.warning("a native runtime had replaced this worker's SIGPIPE handling (a reply to a"
                   " closed connection would have killed it); restored SIG_IGN (set %s=0 in the"
                   " worker environment to stop HPX installing it)", ENV_HPX_HANDLE_SIGNALS)
