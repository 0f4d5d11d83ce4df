"""The one set of process helpers local mode, the demo, bench and the tests share."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from local_mode.processes import (
    ProcessError,
    free_port,
    stop_process,
    wait_for_http,
    wait_for_ready_file,
)


def test_waits_for_a_real_server_then_stops_it(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/", timeout=30, process=server,
                             healthy=True) >= 0
    finally:
        assert stop_process(server, timeout=10) == -signal.SIGTERM


def test_a_child_that_dies_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", "print('bad flag'); raise SystemExit(2)"],
                                 stdout=out, stderr=subprocess.STDOUT)
    child.wait()
    with pytest.raises(ProcessError, match=r"exited with code 2; see .*child\.log:\nbad flag"):
        wait_for_ready_file(tmp_path / "ready.json", timeout=30, process=child, log=log)


def test_a_server_that_never_answers_times_out() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ProcessError, match=r"did not answer 200 within 1 s"):
            wait_for_http(f"http://127.0.0.1:{free_port()}/ping", timeout=1, process=sleeper,
                          healthy=True)
    finally:
        stop_process(sleeper, timeout=5)
