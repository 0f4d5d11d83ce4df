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
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable
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
"""Ctrl-C (SIGINT), as a shell reports it."""


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
