"""Parent-death signals (common.process): armed, and a parent already gone means exit at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux prctl")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_signal_is_armed_in_the_child() -> None:
    done = _run("""
        import ctypes, signal, subprocess, sys
        from common.process import die_with_parent
        child = subprocess.run(
            [sys.executable, "-c", "import ctypes; v = ctypes.c_int();"
             " ctypes.CDLL(None).prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)"],
            preexec_fn=die_with_parent(signal.SIGKILL), capture_output=True, text=True)
        print(child.stdout.strip())
    """)
    assert done.stdout.strip() == str(int(signal.SIGKILL)), done.stderr


def test_a_child_whose_parent_already_died_exits_at_once() -> None:
    """The preexec function runs in a process that is not the parent it was made for."""
    done = _run("""
        import signal
        from common.process import die_with_parent
        die_with_parent(signal.SIGTERM)()
        print("still running")
    """)
    assert done.returncode == 128 + signal.SIGTERM and "still running" not in done.stdout


def test_a_gunicorn_worker_whose_master_already_died_exits() -> None:
    done = _run("""
        from types import SimpleNamespace
        from inference.gunicorn_conf import post_fork
        post_fork(None, SimpleNamespace(ppid=-1))
        print("still running")
    """)
    assert done.returncode == 1 and "still running" not in done.stdout, done.stderr
