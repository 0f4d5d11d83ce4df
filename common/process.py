"""Honest exit statuses for processes that may execute an FHE circuit in-process.

Why this exists: importing ``concrete.compiler`` registers
``atexit.register(_terminate_df_parallelization)``. Once a circuit has *executed* in the process
(``FHEModelServer.run``, ``predict(..., fhe="execute")``, ``encrypt_run_decrypt``; compiling,
key generation, encryption and decryption do not count), that handler shuts concrete's dataflow
runtime down in a way that ends the process at once with status 0: whatever ``sys.exit`` asked
for, and before the exit handlers registered earlier (temporary folders, log flushing) run. A
failing test suite, a benchmark whose FHE output disagreed with the clear model or a training job
with bad input would all report success.

Unregistering the handler is not enough: the runtime's threads then outlive the interpreter and
the C-level teardown that follows can crash (a gunicorn worker exiting that way was measured to
die of SIGSEGV). So :func:`exit_process` ends such a process the way the interpreter would, minus
that teardown: it waits for non-daemon threads, runs every other exit handler, flushes the
standard streams and leaves with ``os._exit(status)``. A process that never imported concrete
exits normally.

Every entry point of the kit exits through :func:`run_main`; pytest through
:mod:`common.pytest_plugin`; gunicorn workers through :mod:`inference.gunicorn_conf`.
``tests/common/test_process.py`` proves each of them.

Exit codes mean the same for every entry point (the training script, the launch scripts, the
CLIs, ``serve``, the demo and the benchmark): :data:`EXIT_OK`, :data:`EXIT_FAILED`,
:data:`EXIT_BAD_INPUT` (argparse's own usage status) and :data:`EXIT_INTERRUPTED`.

Children that cannot outlive their parent: every process the kit starts (``serve``, gunicorn and
its workers, nginx, the embedded S3, the training script, the launchers under the local stack)
is started with :func:`die_with_parent`, Linux's parent-death signal (``PR_SET_PDEATHSIG``): if
the parent dies, even by ``kill -9``, the child gets a signal at once and stops. The kernel
sends it when the *thread* that started the child ends, so the kit starts children from the
main thread of long-lived processes only. Jobs that run a child to completion (the demo,
``start_training.py``) turn SIGTERM into ``KeyboardInterrupt`` (:func:`interrupt_on_sigterm`)
so their cleanup runs, and exit :data:`EXIT_INTERRUPTED`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import NoReturn

CONCRETE_COMPILER_MODULE = "concrete.compiler"
CONCRETE_EXIT_HANDLER = "_terminate_df_parallelization"

ExitStatus = int | str | None

EXIT_OK = 0
EXIT_FAILED = 1
"""The work failed: a failed job or check, an AWS/S3 error, an unexpected error (traceback)."""
EXIT_BAD_INPUT = 2
"""Bad arguments, settings or input data; nothing was done, and the message says the fix."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT), as a shell reports it; also a job stopped by SIGTERM before it finished."""

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` (None off Linux), resolved before any fork."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]


def set_parent_death_signal(signum: int) -> None:
    """Have Linux send ``signum`` to this process when its parent dies (no-op off Linux).

    Raises:
        OSError: prctl refused.
    """
    prctl = _prctl()
    if prctl is not None and prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``signum`` if we die.

    Also covers a parent that died between the fork and the ``prctl`` (the child then exits
    at once). Start such children from a thread that lives as long as they should (the main
    thread): Linux signals them when that thread ends.

    Args:
        signum: SIGTERM for children that stop their own children cleanly (``serve``, the
            launchers), SIGKILL for those that need not.

    Returns:
        The function, or None off Linux (nothing to set).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(128 + int(signum))

    return preexec


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise ``KeyboardInterrupt`` (in the main thread), like Ctrl-C.

    A job's ``finally`` blocks and context managers then stop what it started (a child run by
    :func:`subprocess.run` is killed), and :func:`run_main` exits :data:`EXIT_INTERRUPTED`.
    """
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def disarm_concrete_exit_handler() -> bool:
    """Unregister concrete's exit handler, if concrete has been imported.

    Returns:
        True if the handler was found (and is now unregistered), False if concrete was never
        imported in this process, so there was nothing to disarm.
    """
    module = sys.modules.get(CONCRETE_COMPILER_MODULE)
    handler = getattr(module, CONCRETE_EXIT_HANDLER, None)
    if handler is None:
        return False
    atexit.unregister(handler)
    return True


def exit_code(status: ExitStatus) -> int:
    """The process exit code ``sys.exit(status)`` would produce (a text status is printed)."""
    if status is None:
        return 0
    if isinstance(status, int):
        return status & 0xFF
    print(status, file=sys.stderr)
    return 1


def exit_process(status: ExitStatus) -> NoReturn:
    """Exit with ``status``, even after an FHE run in this process.

    Args:
        status: What ``sys.exit`` would take: None (0), an int, or a message (printed; 1).
    """
    if not disarm_concrete_exit_handler():
        sys.exit(status)
    code = exit_code(status)
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    os._exit(code)


def run_main(main: Callable[[], ExitStatus]) -> NoReturn:
    """Run an entry point and exit with the status it chose.

    ``main`` may return a status or raise, exactly as under ``sys.exit(main())``: a
    ``SystemExit`` keeps its code, ``KeyboardInterrupt`` gives :data:`EXIT_INTERRUPTED`, and any
    other exception is printed with its traceback and gives :data:`EXIT_FAILED`.

    Args:
        main: The entry point, called without arguments.
    """
    try:
        status: ExitStatus = main()
    except SystemExit as exc:
        status = exc.code
    except KeyboardInterrupt:
        status = EXIT_INTERRUPTED
    except BaseException:
        import traceback

        traceback.print_exc()
        status = EXIT_FAILED
    exit_process(status)
