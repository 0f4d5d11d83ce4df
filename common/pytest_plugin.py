"""A pytest plugin that keeps pytest's exit status honest after in-process FHE runs.

Registered for every pytest run in an environment where the kit is installed (the ``pytest11``
entry point in pyproject.toml) and by ``tests/conftest.py``. See :mod:`common.process` for why a
test that executes a circuit would otherwise turn a failing run's status into 0.
"""

from __future__ import annotations

import pytest

from common.process import disarm_concrete_exit_handler


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last test and report: let the interpreter exit with pytest's own status."""
    disarm_concrete_exit_handler()
