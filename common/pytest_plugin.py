"""A pytest plugin that keeps pytest's exit status honest after in-process FHE runs.

Registered for every pytest run in an environment where the kit is installed (the ``pytest11``
entry point in pyproject.toml) and by ``tests/conftest.py``. See :mod:`common.process` for why a
test that executes a circuit would otherwise turn a failing run's status into 0.
"""

from __future__ import annotations

import sys

import pytest

from common.process import CONCRETE_COMPILER_MODULE, exit_process

_SESSION = pytest.StashKey[pytest.Session]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remember the session, whose ``exitstatus`` is final once every plugin has seen it."""
    session.config.stash[_SESSION] = session


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After the last report: exit with pytest's own status if concrete was imported."""
    session = config.stash.get(_SESSION, None)
    if session is not None and CONCRETE_COMPILER_MODULE in sys.modules:
        exit_process(int(session.exitstatus))
