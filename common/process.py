"""Honest exit statuses for processes that may execute an FHE circuit in-process.

Why this exists: importing ``concrete.compiler`` registers
``atexit.register(_terminate_df_parallelization)``. Once a circuit has *executed* in the process
(``FHEModelServer.run``, ``predict(..., fhe="execute")``, ``encrypt_run_decrypt``; compiling,
key generation, encryption and decryption do not count), that handler shuts concrete's dataflow
runtime down in a way that ends the process at once with status 0: whatever ``sys.exit`` asked
for, and before the exit handlers registered earlier (temporary folders, log flushing) run. A
failing test suite, a benchmark whose FHE output disagreed with the clear model or a training job
with bad input would all report success.

The cure is to unregister that handler before the interpreter exits; the process then ends with
the status its entry point chose, and every other exit handler still runs. Skipping the runtime's
shutdown was measured safe with concrete-python 2.10 (the threads end with the process; no crash,
no hang): ``tests/common/test_process.py`` checks it for every entry point of the kit, and for
pytest through :mod:`common.pytest_plugin`.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Callable
from typing import NoReturn

CONCRETE_COMPILER_MODULE = "concrete.compiler"
CONCRETE_EXIT_HANDLER = "_terminate_df_parallelization"


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


def run_main(main: Callable[[], int | str | None]) -> NoReturn:
    """Run an entry point and exit with the status it chose.

    ``main`` may return a status or raise ``SystemExit``/any exception, exactly as under
    ``sys.exit(main())``; concrete's exit handler is disarmed on every path, so that status
    survives an FHE run inside ``main``.

    Args:
        main: The entry point, called without arguments.
    """
    try:
        status = main()
    finally:
        disarm_concrete_exit_handler()
    sys.exit(status)
